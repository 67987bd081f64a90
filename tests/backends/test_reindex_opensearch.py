"""``agent reindex`` on the ``opensearch`` backend, for real (osmem-server): a new index behind the alias."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.opensearch_server import Cluster
from support.reindex_scenarios import AGENT, Objects, ReindexScenarios, Source

from livesync.errors import ConfigurationError
from livesync.manager import Agent, SyncManager
from livesync.reindex import reindex_agent
from livesync.reindex_state import load_state


@pytest.fixture
def alias(opensearch_cluster: Cluster) -> Iterator[str]:
    """An alias of one new index, with a mapping; every index of it is deleted afterwards."""
    name = opensearch_cluster.new_index(
        mappings={"properties": {"title": {"type": "text"}, "shape": {"type": "integer"}}}
    )
    yield name
    client = opensearch_cluster.client()
    for index in client.indices.get(index=f"{name.removesuffix('-alias')}*"):
        client.indices.delete(index=index)


def objects(opensearch_cluster: Cluster, index: str) -> Objects:
    found = opensearch_cluster.documents(index)
    return {doc_id: {k: v for k, v in body.items() if k != "_livesync"} for doc_id, (_version, body) in found.items()}


class TestOpenSearchReindex(ReindexScenarios):
    @pytest.fixture
    def agent_backend(self, opensearch_cluster: Cluster, alias: str) -> tuple[str, dict[str, str]]:
        return "opensearch", {"url": opensearch_cluster.url, "index": alias, "refresh": "true"}

    @pytest.fixture
    def read_objects(self, opensearch_cluster: Cluster, alias: str) -> Callable[[str | None], Objects]:
        return lambda name: objects(opensearch_cluster, name or alias)

    @pytest.fixture
    def generation_exists(self, opensearch_cluster: Cluster) -> Callable[[str], bool]:
        return lambda name: bool(opensearch_cluster.client().indices.exists(index=name))

    # -- what is particular to indices: the alias moves, the mapping comes along

    def test_the_alias_moves_to_the_new_index_which_has_the_old_ones_mapping(
        self, manager: SyncManager, live: Any, opensearch_cluster: Cluster, alias: str
    ) -> None:
        old = alias.removesuffix("-alias") + "-1"

        result = reindex_agent(manager, AGENT, Source(), source_name="scenario")

        client = opensearch_cluster.client()
        assert (result.generation, result.retired) == (f"{alias}-r{result.generation.rpartition('-r')[2]}", old)
        assert set(client.indices.get_alias(name=alias)) == {result.generation}
        mapping = client.indices.get_mapping(index=result.generation)[result.generation]["mappings"]
        assert mapping["properties"]["shape"] == {"type": "integer"}


def test_an_agent_writing_to_an_index_rather_than_an_alias_is_refused_naming_it(
    opensearch_cluster: Cluster, manager: SyncManager
) -> None:
    index = opensearch_cluster.new_index(alias=False)
    manager.add_agent(Agent(id=AGENT, backend="opensearch", options={"url": opensearch_cluster.url, "index": index}))

    with pytest.raises(ConfigurationError, match=f"{index}.*is no alias"):
        reindex_agent(manager, AGENT, Source(), source_name="scenario")

    # nothing was begun: no state, no pointer holding the track
    assert load_state(manager, AGENT) is None
    assert manager.track(0).pointers() == {AGENT: 0}
    opensearch_cluster.client().indices.delete(index=index)
