"""Plugins: entry points always load; ``module:attribute`` only inside LIVESYNC_ALLOWED_IMPORTS.

Backend, expander and export-source names come from agent hashes and the command line;
importing a module runs its code. The test modules written here touch a marker file when
imported, so "refused" means "never imported", not only "not called".
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from livesync import Publisher, jobs, plugins
from livesync.backends import ENTRY_POINT_GROUP, available_backends, create_backend, load_backend
from livesync.backends.null import NullBackend
from livesync.cli import main
from livesync.config import Settings
from livesync.errors import ConfigurationError, ImportNotAllowed
from livesync.expanders import load_expander
from livesync.export import load_source
from livesync.manager import Agent, SyncManager

MODULE = "plugin_mod_for_tests"
LOOKALIKE = "plugin_mod_for_tests_evil"

MODULE_CODE = """
import os
from pathlib import Path

from livesync.backends import Backend

Path(os.environ["LIVESYNC_TEST_MARKER"]).touch()


class MarkerBackend(Backend):
    name = "marker"

    def upload(self, records):
        pass


def expand_nothing(change):
    return []


def objects():
    return [("event", 1)]


from os import system  # a foreign function under a local name
from livesync import worker  # a module, holding os and more


class Holder:
    class Nested(MarkerBackend):
        name = "nested"

    @staticmethod
    def expand(change):
        return []


class Expanding:
    def __call__(self, change):
        return []


expand_instance = Expanding()
holder = Holder()
"""


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Modules ``plugin_mod_for_tests`` (+ ``.sub``) and a lookalike, each touching the marker when imported."""
    path = tmp_path / "imported"
    monkeypatch.setenv("LIVESYNC_TEST_MARKER", str(path))
    root = tmp_path / "modules"
    package = root / MODULE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(MODULE_CODE)
    (package / "sub.py").write_text(MODULE_CODE)
    (root / f"{LOOKALIKE}.py").write_text(MODULE_CODE)
    monkeypatch.syspath_prepend(str(root))
    doomed = (MODULE, f"{MODULE}.sub", LOOKALIKE)
    for name in doomed:
        sys.modules.pop(name, None)
    yield path
    for name in doomed:
        sys.modules.pop(name, None)


# The allow-list


@pytest.mark.parametrize(
    ("module", "allowed", "expected"),
    [
        ("myapp", ["myapp"], True),
        ("myapp.sync", ["myapp"], True),
        ("myapp.sync.deep", ["myapp.sync"], True),
        ("myapp_evil", ["myapp"], False),
        ("myappx.sync", ["myapp"], False),
        ("myapp", ["myapp.sync"], False),
        ("os", [], False),
        ("os", [""], False),
        ("myapp.sync", [" other ", "myapp."], True),
    ],
)
def test_import_allowed_matches_prefixes_on_dotted_module_boundaries(
    module: str, allowed: list[str], expected: bool
) -> None:
    assert plugins.import_allowed(module, allowed) is expected


def test_backend_import_path_inside_an_allowed_prefix_loads(marker: Path) -> None:
    backend_cls = load_backend(f"{MODULE}.sub:MarkerBackend", [MODULE])

    assert backend_cls.__name__ == "MarkerBackend"
    assert marker.exists()


@pytest.mark.parametrize(
    "allowed", [[], ["myapp"], [MODULE + "_"], [MODULE]], ids=["empty", "other", "partial", "lookalike"]
)
def test_backend_import_path_outside_the_allowed_prefixes_is_refused_without_importing(
    marker: Path, allowed: list[str]
) -> None:
    spec = f"{LOOKALIKE}:MarkerBackend" if allowed == [MODULE] else f"{MODULE}:MarkerBackend"

    with pytest.raises(ImportNotAllowed) as info:
        load_backend(spec, allowed)

    message = str(info.value)
    assert "LIVESYNC_ALLOWED_IMPORTS" in message
    assert repr(spec) in message
    assert isinstance(info.value, ConfigurationError)
    assert not marker.exists()
    assert MODULE not in sys.modules and LOOKALIKE not in sys.modules


# The attribute path: it never leaves the allowed modules


@pytest.mark.parametrize(
    ("group", "spec", "allowed"),
    [
        ("livesync.expanders", "livesync.worker:os.system", ["livesync"]),  # a module on the way
        ("livesync.expanders", "json:codecs.open", ["json"]),
        ("livesync.backends", "livesync.worker:os", ["livesync"]),  # a module at the end
        ("livesync.expanders", f"{MODULE}:worker.os.system", [MODULE]),
        ("livesync.expanders", f"{MODULE}:system", [MODULE]),  # a foreign function imported by name
        ("livesync.backends", f"{MODULE}:Path", [MODULE]),  # a foreign class imported by name
        ("livesync.expanders", f"{MODULE}:expand_nothing.__globals__", [MODULE]),  # no __module__, two steps
        ("livesync.expanders", f"{MODULE}:holder.expand.__globals__.get", [MODULE]),
        ("livesync.expanders", f"{MODULE}:Holder.mro", [MODULE]),  # a builtin method of type
        ("livesync.expanders", f"{MODULE}:Holder.__base__", [MODULE]),  # object
    ],
)
def test_attribute_path_that_leaves_the_allowed_modules_is_refused(
    marker: Path, group: str, spec: str, allowed: list[str]
) -> None:
    with pytest.raises(ImportNotAllowed) as info:
        plugins.load_plugin(group, spec, allowed, kind="plugin")

    assert repr(spec) in str(info.value)
    assert "LIVESYNC_ALLOWED_IMPORTS" in str(info.value)


def test_expander_import_path_through_a_module_attribute_is_refused() -> None:
    with pytest.raises(ImportNotAllowed, match="module"):
        load_expander("json:codecs.open", ["json"])


def test_stranger_written_backend_reaching_os_through_an_allowed_module_is_refused() -> None:
    with pytest.raises(ImportNotAllowed):
        create_backend("livesync.worker:os.system", "evil", {}, ["livesync"])


@pytest.mark.parametrize(
    ("group", "spec", "expected"),
    [
        ("livesync.backends", f"{MODULE}:MarkerBackend", "MarkerBackend"),  # module:Class
        ("livesync.backends", f"{MODULE}.sub:MarkerBackend", "MarkerBackend"),
        ("livesync.backends", f"{MODULE}:Holder.Nested", "Nested"),  # a class inside a class
        ("livesync.expanders", f"{MODULE}:expand_nothing", "expand_nothing"),  # module:function
        ("livesync.expanders", f"{MODULE}:Holder.expand", "expand"),  # a static method
        ("livesync.expanders", f"{MODULE}:expand_instance", "Expanding"),  # an object the module defines
        ("livesync.expanders", "json:loads", "loads"),  # a function of the allowed package
        ("livesync.expanders", "json:JSONDecoder.decode", "decode"),  # defined in json.decoder, inside json
    ],
)
def test_attribute_path_inside_an_allowed_prefix_loads(marker: Path, group: str, spec: str, expected: str) -> None:
    allowed = [MODULE, "json"]

    loaded = plugins.load_plugin(group, spec, allowed)

    assert getattr(loaded, "__name__", type(loaded).__name__) == expected


def test_stdlib_import_path_is_refused_by_default() -> None:
    with pytest.raises(ImportNotAllowed, match="LIVESYNC_ALLOWED_IMPORTS"):
        create_backend("os:system", "evil", {})


def test_entry_points_always_load_whatever_the_allow_list() -> None:
    assert load_backend("null", []) is NullBackend
    assert load_backend("null", ["somewhere.else"]) is NullBackend


def test_expander_import_path_needs_an_allowed_prefix(marker: Path) -> None:
    with pytest.raises(ImportNotAllowed, match="LIVESYNC_ALLOWED_IMPORTS"):
        load_expander(f"{MODULE}:expand_nothing", [])
    assert not marker.exists()

    expander = load_expander(f"{MODULE}:expand_nothing", [MODULE])

    assert callable(expander)
    assert marker.exists()


def test_expander_registered_by_entry_point_loads_without_any_allowed_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = metadata.entry_points
    extra = metadata.EntryPoint(name="cascade", value="builtins:list", group="livesync.expanders")
    monkeypatch.setattr(
        metadata,
        "entry_points",
        lambda *, group: (
            metadata.EntryPoints([*real(group=group), extra]) if group == "livesync.expanders" else real(group=group)
        ),
    )
    plugins.forget_entry_points()
    try:
        assert load_expander("cascade", []) is list
    finally:
        plugins.forget_entry_points()


def test_export_source_import_path_needs_an_allowed_prefix(marker: Path) -> None:
    with pytest.raises(ImportNotAllowed, match="LIVESYNC_ALLOWED_IMPORTS"):
        load_source(f"{MODULE}:objects", [])
    assert not marker.exists()

    assert load_source(f"{MODULE}:objects", [MODULE])() == [("event", 1)]


def test_export_source_registered_by_entry_point_loads_without_any_allowed_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = metadata.entry_points
    extra = metadata.EntryPoint(name="everything", value="builtins:list", group="livesync.sources")
    monkeypatch.setattr(
        metadata,
        "entry_points",
        lambda *, group: (
            metadata.EntryPoints([*real(group=group), extra]) if group == "livesync.sources" else real(group=group)
        ),
    )
    plugins.forget_entry_points()
    try:
        assert load_source("everything", []) is list
    finally:
        plugins.forget_entry_points()


def test_entry_points_are_scanned_once_per_group(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a process whose entry points have not been scanned yet
    real = metadata.entry_points
    scans: list[str] = []

    def counting(*, group: str) -> metadata.EntryPoints:
        scans.append(group)
        return real(group=group)

    monkeypatch.setattr(metadata, "entry_points", counting)
    plugins.forget_entry_points()
    try:
        # When backends are looked up many times
        for _ in range(5):
            load_backend("null")
            create_backend("null", "a", {})
            available_backends()

        # Then their group was scanned once
        assert scans.count(ENTRY_POINT_GROUP) == 1
    finally:
        plugins.forget_entry_points()


# The worker side: what a stranger writes into Redis


@pytest.fixture
def jobs_configured(real_redis: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("_settings", "_redis", "_rq_redis"):
        monkeypatch.setattr(jobs, name, None)
    jobs.configure(Settings(namespace=namespace, retry_max=0), redis=real_redis)
    yield
    jobs.clear_configuration()


def stranger_agent(real_redis: redis.Redis, namespace: str, backend: str) -> SyncManager:
    """An agent whose hash a stranger rewrote to name ``backend``, with a change pending."""
    manager = SyncManager(real_redis, namespace)
    manager.add_agent(Agent(id="search", backend="null", update_time=0))
    real_redis.hset(manager.keys.agent("search"), "backend", backend)
    Publisher(real_redis, namespace).emit("event", 1, "created")
    return manager


@pytest.mark.parametrize("backend", ["os:system", f"{MODULE}:MarkerBackend"])
def test_worker_refuses_a_stranger_written_import_path_at_run_time(
    jobs_configured: None, real_redis: redis.Redis, namespace: str, marker: Path, backend: str
) -> None:
    # Given an agent hash a stranger rewrote to name an import path
    manager = stranger_agent(real_redis, namespace, backend)

    # When a worker runs the agent's job (settings: no allowed imports)
    with pytest.raises(ImportNotAllowed):
        jobs.run(namespace, "search", 0)

    # Then nothing was imported, the pointer stayed, and the agent's last error says why
    assert not marker.exists()
    assert MODULE not in sys.modules
    assert manager.pointers("search") == [0]
    assert "ImportNotAllowed" in (manager.get_agent("search").last_error or "")


def test_worker_runs_an_import_path_backend_its_settings_allow(
    real_redis: redis.Redis, namespace: str, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an import-path backend and a worker whose settings allow its package
    for name in ("_settings", "_redis", "_rq_redis"):
        monkeypatch.setattr(jobs, name, None)
    jobs.configure(Settings(namespace=namespace, retry_max=0, allowed_imports=[MODULE]), redis=real_redis)
    manager = stranger_agent(real_redis, namespace, f"{MODULE}:MarkerBackend")
    try:
        # When the worker runs the agent
        result = jobs.run(namespace, "search", 0)
    finally:
        jobs.clear_configuration()

    # Then it ran with that backend
    assert result["pointer_after"] == 1
    assert manager.pointers("search") == [1]


def test_manager_refuses_to_add_an_agent_with_a_disallowed_backend(
    real_redis: redis.Redis, namespace: str, marker: Path
) -> None:
    manager = SyncManager(real_redis, namespace)

    with pytest.raises(ImportNotAllowed):
        manager.add_agent(Agent(id="search", backend=f"{MODULE}:MarkerBackend"))

    assert not marker.exists()
    assert manager.list_agents() == []


def cli_env(redis_url: str, namespace: str, **extra: str) -> dict[str, str]:
    return {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace, **extra}


def test_cli_agent_add_with_a_disallowed_import_path_exits_2_naming_the_setting(
    redis_url: str, real_redis: redis.Redis, namespace: str, marker: Path
) -> None:
    result = CliRunner().invoke(
        main, ["agent", "add", "search", "--backend", f"{MODULE}:MarkerBackend"], env=cli_env(redis_url, namespace)
    )

    assert result.exit_code == 2, result.output
    assert "LIVESYNC_ALLOWED_IMPORTS" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not marker.exists()


def test_cli_agent_add_with_an_allowed_import_path_adds_the_agent(
    redis_url: str, real_redis: redis.Redis, namespace: str, marker: Path
) -> None:
    env = cli_env(redis_url, namespace, LIVESYNC_ALLOWED_IMPORTS=f"other,{MODULE}")

    result = CliRunner().invoke(main, ["agent", "add", "search", "--backend", f"{MODULE}:MarkerBackend"], env=env)

    assert result.exit_code == 0, result.output
    assert SyncManager(real_redis, namespace).get_agent("search").backend == f"{MODULE}:MarkerBackend"
