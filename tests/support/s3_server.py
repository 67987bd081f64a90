"""An S3 API for the s3 backend's tests: moto's server mode on a loopback port, or one given.

``LIVESYNC_TEST_S3_URL`` names an S3-compatible endpoint to use instead (with
``LIVESYNC_TEST_S3_KEY_ID`` / ``LIVESYNC_TEST_S3_SECRET``; tests create and delete their
own buckets there). Otherwise a ``ThreadedMotoServer`` is started in this process on
127.0.0.1 (a real HTTP server speaking S3, conditional puts included) and stopped at
the end of the session. Its buckets live in moto's in-process state, so the server can
be stopped and started again on its port with its data kept: that is how the tests make
the target unreachable.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from support.waiting import wait_for

REGION = "us-east-1"


@dataclass
class S3Server:
    """An S3 endpoint for the tests; ``server`` is the moto server when this process runs it."""

    url: str
    key_id: str
    secret: str
    server: Any = None
    buckets: list[str] = field(default_factory=list)
    _client: Any = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self) -> Any:
        """The tests' own client (one: creating a boto3 client takes a while)."""
        if self._client is None:
            self._client = boto3.session.Session(
                aws_access_key_id=self.key_id, aws_secret_access_key=self.secret, region_name=REGION
            ).client("s3", endpoint_url=self.url, config=Config(retries={"total_max_attempts": 1}))
        return self._client

    def new_bucket(self) -> str:
        """A new, empty bucket, deleted with everything in it by :meth:`drop_buckets`."""
        name = f"livesync-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def drop_buckets(self) -> None:
        client = self.client()
        while self.buckets:
            name = self.buckets.pop()
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                for item in page.get("Contents", []):
                    client.delete_object(Bucket=name, Key=item["Key"])
            client.delete_bucket(Bucket=name)

    @property
    def can_stop(self) -> bool:
        return self.server is not None

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """Nothing listens on the endpoint's port inside the block; the same data is served after it."""
        assert self.server is not None, "only a server this process runs can be stopped"
        self.server.stop()
        try:
            yield
        finally:
            self.server = _start(self.port)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        if self.server is not None:
            self.server.stop()
            self.server = None


def s3_server() -> S3Server:
    """The configured endpoint, or a moto server started here on a free loopback port."""
    url = os.environ.get("LIVESYNC_TEST_S3_URL")
    if url:
        return S3Server(url.rstrip("/"), os.environ.get("LIVESYNC_TEST_S3_KEY_ID", ""),
                        os.environ.get("LIVESYNC_TEST_S3_SECRET", ""))  # fmt: skip
    server = _start(0)
    host, port = server.get_host_and_port()
    return S3Server(f"http://{host}:{port}", "testing", "testing", server=server)


def _start(port: int) -> Any:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    wait_for(lambda: _answers(host, bound), 15, f"moto server on {host}:{bound}")
    return server


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
