"""Logic written once: each small helper has one home, and its callers keep their exact output."""

from __future__ import annotations

from typing import Any

import pytest

from livesync.errors import describe_validation


def _errors() -> list[dict[str, Any]]:
    return [
        {"type": "value_error", "loc": ("retry_intervals", 1), "msg": "Value error,  Not  a number", "input": "x"},
        {"type": "extra_forbidden", "loc": ("tokn",), "msg": "Extra inputs are not permitted", "input": "secret"},
    ]


def test_one_validation_formatter_names_locations_as_its_caller_asks_and_never_the_input() -> None:
    line = describe_validation(_errors(), lambda location: "/".join(location) or "agent")

    assert line == "retry_intervals/1: Not a number; tokn: Extra inputs are not permitted"
    assert "secret" not in line


def test_validation_formatter_keeps_the_raw_message_lowercases_and_lets_the_caller_word_one_error() -> None:
    raw = describe_validation(_errors()[:1], ".".join, tidy=False)
    lowered = describe_validation(
        _errors(),
        ".".join,
        lower=lambda location: len(location) > 1,
        special=lambda error: "unknown option" if error["type"] == "extra_forbidden" else None,
    )

    assert raw == "retry_intervals.1: Value error,  Not  a number"
    assert lowered == "retry_intervals.1: not a number; tokn: unknown option"


def test_settings_and_the_namespace_module_share_one_namespace_check_with_their_own_messages() -> None:
    from livesync import keys
    from livesync.config import load_settings
    from livesync.errors import ConfigurationError
    from livesync.namespace import check_namespace

    with pytest.raises(ConfigurationError) as shared:
        keys.check_namespace_name("no spaces")
    with pytest.raises(ConfigurationError) as module:
        check_namespace("no spaces")
    with pytest.raises(ConfigurationError) as settings:
        load_settings(namespace="no spaces")

    assert str(shared.value) == str(module.value)
    assert str(shared.value) == f"namespace: 'no spaces' is not valid ({keys.NAMESPACE_RULE})"
    assert str(settings.value) == f"LIVESYNC_NAMESPACE: {keys.NAMESPACE_RULE}"
    assert keys.check_namespace_name("a.b-c_1") == "a.b-c_1"


def test_publisher_from_url_builds_its_client_with_connects_timeouts_and_health_check() -> None:
    from livesync.client import Publisher
    from livesync.defaults import CONNECT_TIMEOUT

    publisher = Publisher.from_url("redis://127.0.0.1:1/0", namespace="demo")
    try:
        options = publisher.redis.connection_pool.connection_kwargs
        assert options["socket_connect_timeout"] == CONNECT_TIMEOUT
        assert options["health_check_interval"] == 30
    finally:
        publisher.close()


def test_dashboard_credentials_are_settings_read_by_config_and_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    from pathlib import Path

    import livesync.cli.serve
    from livesync.config import load_settings
    from livesync.dashboard import Credentials, credentials_from_settings

    monkeypatch.setenv("RQ_DASHBOARD_USERNAME", "rq")
    monkeypatch.setenv("RQ_DASHBOARD_PASSWORD", "rq-secret")
    assert credentials_from_settings(load_settings()) == Credentials("rq", "rq-secret")

    monkeypatch.setenv("LIVESYNC_DASHBOARD_USERNAME", "ops")
    monkeypatch.setenv("LIVESYNC_DASHBOARD_PASSWORD", "s3cret")
    settings = load_settings()
    assert credentials_from_settings(settings) == Credentials("ops", "s3cret")
    shown = json.dumps(settings.masked()) + repr(settings) + str(settings)
    assert "s3cret" not in shown and "rq-secret" not in shown
    assert "os.environ" not in Path(livesync.cli.serve.__file__).read_text()


def test_half_a_pair_of_dashboard_settings_is_refused_naming_the_missing_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from livesync.config import load_settings
    from livesync.dashboard import credentials_from_settings
    from livesync.errors import ConfigurationError

    monkeypatch.setenv("LIVESYNC_DASHBOARD_USERNAME", "ops")
    monkeypatch.setenv("RQ_DASHBOARD_USERNAME", "rq")
    monkeypatch.setenv("RQ_DASHBOARD_PASSWORD", "rq-secret")
    with pytest.raises(ConfigurationError, match="LIVESYNC_DASHBOARD_USERNAME is set but LIVESYNC_DASHBOARD_PASSWORD"):
        credentials_from_settings(load_settings())


def test_reduce_defines_no_module_constant_it_never_reads() -> None:
    import ast
    from pathlib import Path

    import livesync.reduce

    tree = ast.parse(Path(livesync.reduce.__file__).read_text())
    defined = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id != "__all__"
    }
    read = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    assert defined - read == set()


def test_validation_formatter_quotes_the_input_only_when_asked_as_the_managers_stored_fields() -> None:
    errors = [
        {"type": "int_parsing", "loc": ("partitions",), "msg": "Input should be a valid integer", "input": "x" * 70}
    ]

    line = describe_validation(errors, lambda location: ".".join(location) or "agent", tidy=False, show_input=60)

    assert line == f"partitions {'x' * 60!r}: Input should be a valid integer"
