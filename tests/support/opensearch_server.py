"""An OpenSearch-compatible server for the ``opensearch`` backend's tests, and ways to read it back.

``LIVESYNC_TEST_OPENSEARCH_URL`` names a running OpenSearch (or Elasticsearch) to test
against; without it the tests start ``osmem-server`` (PyPI ``osmem-server``, an in-memory
OpenSearch-compatible server shipped as a binary in its wheel) on a free loopback port.
It exits when the test process does (it watches its parent pid and its stdin), and the
session fixture stops it at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opensearchpy import OpenSearch

#: A running cluster to use instead of starting osmem-server (a real OpenSearch, say).
URL_VARIABLE = "LIVESYNC_TEST_OPENSEARCH_URL"
STARTUP_TIMEOUT = 30.0


@contextmanager
def opensearch_url() -> Iterator[str]:
    """The URL of a cluster for this session: ``LIVESYNC_TEST_OPENSEARCH_URL``, or osmem-server started here."""
    given = os.environ.get(URL_VARIABLE)
    if given:
        yield given
        return
    from osmem_server import OsmemServer

    # 127.0.0.1, port 0: the server picks a free loopback port and prints it when ready
    server = OsmemServer.start(japanese=False, addr="127.0.0.1:0", startup_timeout=STARTUP_TIMEOUT)
    try:
        yield server.url
    finally:
        server.close()  # closes its stdin: it exits, or is killed after a grace period
        if server.process.stdout is not None:
            server.process.stdout.close()


@dataclass
class Cluster:
    """A cluster the tests create indices on (each test its own, so no state leaks between tests)."""

    url: str

    def client(self) -> OpenSearch:
        return OpenSearch(hosts=[self.url], max_retries=0, timeout=10)

    def new_index(
        self,
        *,
        alias: bool = True,
        mappings: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> str:
        """Create an index with a unique name; return the name to write to (its alias unless ``alias=False``)."""
        name = f"livesync-test-{uuid.uuid4().hex[:12]}"
        body: dict[str, Any] = {}
        if mappings is not None:
            body["mappings"] = mappings
        if settings is not None:
            body["settings"] = settings
        if alias:
            body["aliases"] = {f"{name}-alias": {}}
        self.client().indices.create(index=f"{name}-1", body=body)
        return f"{name}-alias" if alias else f"{name}-1"

    def documents(self, index: str) -> dict[str, tuple[int, dict[str, Any]]]:
        """``{_id: (_version, _source)}`` of every document of ``index`` (refreshed first)."""
        client = self.client()
        client.indices.refresh(index=index)
        answer = client.search(
            index=index, body={"query": {"match_all": {}}, "size": 10_000, "version": True, "sort": ["_doc"]}
        )
        return {hit["_id"]: (int(hit["_version"]), hit["_source"]) for hit in answer["hits"]["hits"]}

    def get(self, index: str, doc_id: str) -> dict[str, Any] | None:
        """The document ``doc_id`` (``_version``, ``_source``...) as a realtime get returns it; ``None`` if absent."""
        answer = self.client().get(index=index, id=doc_id, ignore=404)
        return answer if answer.get("found") else None

    @contextmanager
    def read_only(self, index: str) -> Iterator[None]:
        """While inside, ``index`` refuses writes (``index.blocks.write``, as at the disk flood stage)."""
        client = self.client()
        client.indices.put_settings(index=index, body={"index": {"blocks": {"write": True}}})
        try:
            yield
        finally:
            client.indices.put_settings(index=index, body={"index": {"blocks": {"write": False}}})
