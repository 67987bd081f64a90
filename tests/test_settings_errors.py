"""Settings: list variables take comma-separated values; every error is one line naming the variable.

``LIVESYNC_NAMESPACES=a,b`` used to make pydantic-settings raise a traceback on every
command; a bad value of any variable now gives one line ``LIVESYNC_<NAME>: why`` (exit 2
from the CLI, :class:`ConfigurationError` from ``livesync.rqconfig.settings`` and jobs), and
never the value itself: a Redis URL holds the password.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from livesync.cli import main
from livesync.config import Settings, load_settings
from livesync.errors import ConfigurationError

PASSWORD = "hunter2"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment without any LIVESYNC_* variable of the caller's."""
    import os

    for name in list(os.environ):
        if name.startswith("LIVESYNC_"):
            monkeypatch.delenv(name)
    return monkeypatch


# Lists


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("LIVESYNC_NAMESPACES", "a,b", "namespaces", ["a", "b"]),
        ("LIVESYNC_NAMESPACES", " a , b ,", "namespaces", ["a", "b"]),
        ("LIVESYNC_NAMESPACES", '["a", "b"]', "namespaces", ["a", "b"]),
        ("LIVESYNC_NAMESPACES", "", "namespaces", []),
        ("LIVESYNC_RETRY_INTERVALS", "10,30", "retry_intervals", [10, 30]),
        ("LIVESYNC_RETRY_INTERVALS", "[10, 30]", "retry_intervals", [10, 30]),
        ("LIVESYNC_RETRY_INTERVALS", "5", "retry_intervals", [5]),
        ("LIVESYNC_ALLOWED_IMPORTS", "a,b", "allowed_imports", ["a", "b"]),
        ("LIVESYNC_ALLOWED_IMPORTS", "myapp.sync", "allowed_imports", ["myapp.sync"]),
    ],
)
def test_list_variables_accept_comma_separated_values_and_json_lists(
    clean_env: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: list[object]
) -> None:
    clean_env.setenv(variable, value)

    assert getattr(load_settings(), field) == expected


def test_comma_separated_namespaces_are_each_checked(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("LIVESYNC_NAMESPACES", "good,bad ns")

    with pytest.raises(ConfigurationError) as info:
        load_settings()

    assert str(info.value).startswith("LIVESYNC_NAMESPACES")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LIVESYNC_RETRY_INTERVALS", "10,soon"),
        ("LIVESYNC_RETRY_INTERVALS", "[10,"),
        ("LIVESYNC_BATCH_SIZE", "lots"),
        ("LIVESYNC_PARTITIONS", "0"),
        ("LIVESYNC_NAMESPACE", "bad ns"),
        ("LIVESYNC_ALLOW_EVICTION", "perhaps"),
    ],
)
def test_a_bad_variable_is_one_line_naming_it(clean_env: pytest.MonkeyPatch, variable: str, value: str) -> None:
    clean_env.setenv(variable, value)

    with pytest.raises(ConfigurationError) as info:
        load_settings()

    message = str(info.value)
    assert message.startswith(f"{variable}: "), message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LIVESYNC_NAMESPACES", "a,b"),
        ("LIVESYNC_RETRY_INTERVALS", "10,30"),
        ("LIVESYNC_ALLOWED_IMPORTS", "a,b"),
    ],
)
def test_cli_accepts_comma_separated_list_variables(redis_url: str, namespace: str, variable: str, value: str) -> None:
    env = {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace, variable: value}

    result = CliRunner().invoke(main, ["agent", "list"], env=env)

    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert "error parsing value" not in result.output


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LIVESYNC_RETRY_INTERVALS", "10,soon"),
        ("LIVESYNC_NAMESPACES", "a,bad ns"),
        ("LIVESYNC_BATCH_SIZE", "lots"),
        ("LIVESYNC_ALLOWED_IMPORTS", '["a",'),
    ],
)
def test_cli_with_a_bad_variable_exits_2_with_one_line_naming_it(
    redis_url: str, namespace: str, variable: str, value: str
) -> None:
    env = {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace, variable: value}

    result = CliRunner().invoke(main, ["agent", "list"], env=env)

    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert variable in lines[0]


# Secrets in errors


@pytest.mark.parametrize(
    "overrides",
    [
        {"redis_url": f"redis://:{PASSWORD}@host:notaport/0"},
        {"redis_url": f"http://:{PASSWORD}@x"},
        {"redis_url": f"redis://:{PASSWORD}@host:6379/notadb"},
        {"rq_url": f"http://:{PASSWORD}@x"},
        {"rq_url": f"redis://:{PASSWORD}@host:99999/0"},
        {"redis_url": f"redis://:{PASSWORD}@host/0", "batch_size": "x"},
    ],
    ids=["port", "scheme", "db", "rq-scheme", "rq-port", "other-field"],
)
def test_settings_errors_never_show_the_password(clean_env: pytest.MonkeyPatch, overrides: dict[str, str]) -> None:
    with pytest.raises(Exception) as info:
        Settings(**overrides)  # type: ignore[arg-type]
    assert PASSWORD not in str(info.value)
    assert PASSWORD not in repr(info.value)

    with pytest.raises(ConfigurationError) as one_line:
        load_settings(**overrides)
    assert PASSWORD not in str(one_line.value)
    assert "\n" not in str(one_line.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LIVESYNC_REDIS_URL", f"redis://:{PASSWORD}@host:notaport/0"),
        ("LIVESYNC_REDIS_URL", f"http://:{PASSWORD}@x"),
        ("LIVESYNC_RQ_URL", f"http://:{PASSWORD}@x"),
    ],
)
def test_cli_with_a_bad_url_exits_2_without_the_password(namespace: str, variable: str, value: str) -> None:
    env = {"LIVESYNC_NAMESPACE": namespace, variable: value}

    result = CliRunner().invoke(main, ["agent", "list"], env=env)

    assert result.exit_code == 2, result.output
    assert PASSWORD not in result.output
    assert variable in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.fixture
def forget_workers_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``livesync.rqconfig.settings`` imported afresh."""
    sys.modules.pop("livesync.rqconfig.settings", None)
    yield
    sys.modules.pop("livesync.rqconfig.settings", None)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LIVESYNC_RQ_URL", f"http://:{PASSWORD}@x"),
        ("LIVESYNC_REDIS_URL", f"redis://:{PASSWORD}@host:notaport/0"),
        ("LIVESYNC_RETRY_INTERVALS", "10,soon"),
    ],
)
def test_workers_settings_with_a_bad_variable_raise_one_clean_configuration_error(
    clean_env: pytest.MonkeyPatch, forget_workers_settings: None, variable: str, value: str
) -> None:
    clean_env.setenv(variable, value)

    with pytest.raises(ConfigurationError) as info:
        importlib.import_module("livesync.rqconfig.settings")

    message = str(info.value)
    assert variable in message
    assert PASSWORD not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_workers_settings_take_comma_separated_lists(
    clean_env: pytest.MonkeyPatch, forget_workers_settings: None
) -> None:
    clean_env.setenv("LIVESYNC_QUEUE", "livesync-q")
    clean_env.setenv("LIVESYNC_NAMESPACES", "a,b")

    module = importlib.import_module("livesync.rqconfig.settings")

    assert module.QUEUES == ["livesync-q"]


# Passwords holding "@" and "/", "?" or "#" unencoded: no piece of them is echoed

TORN_PASSWORDS = ["Qx7@Zk9/Wm4", "Pq3/Rt5@Vb6", "Hj2@Kl8?Nn1@Mm0", "Ab1#Cd2@Ef3/Gh4", "Yy5@Uu6#Ii7"]


@pytest.mark.parametrize("password", TORN_PASSWORDS)
@pytest.mark.parametrize("tail", ["host:99999/0", "host:6379/x", "host:notaport/0"])
def test_cli_with_a_bad_url_whose_password_holds_at_and_slash_shows_no_piece_of_it(
    namespace: str, password: str, tail: str
) -> None:
    env = {"LIVESYNC_NAMESPACE": namespace, "LIVESYNC_REDIS_URL": f"redis://u:{password}@{tail}"}

    result = CliRunner().invoke(main, ["status"], env=env)

    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    for piece in re.split(r"[@/?#:]", password):
        assert piece not in result.output, result.output
