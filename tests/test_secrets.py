"""Secrets: never printed, and never needed on the command line or in Redis in clear.

- Target URLs are shown through one redactor (``livesync.urls.redact_url``), the one the
  webhook backend uses: credentials, query values (``?code=``, ``?sig=``) and path
  tokens hidden, in ``agent show``, ``agent list`` and ``repr(Agent)``.
- Option values ``@env:NAME`` and ``@file:PATH`` are references: stored as written,
  shown as written, resolved only where the backend is created (on the worker).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result
from pydantic import ValidationError
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from livesync import Publisher, jobs
from livesync.backends import create_backend, redact_options
from livesync.backends.webhook import WebhookBackend
from livesync.cli import main
from livesync.config import Settings
from livesync.errors import ConfigurationError, RecordRejected
from livesync.manager import Agent, SyncManager
from livesync.records import Record
from livesync.signing import WebhookError
from livesync.urls import redact_url

QUERY_SECRET = "c0de-Qu3ry-s3cret"
SIG_SECRET = "s1g-V4lue"
PATH_TOKEN = "T0123ABCD4567efgh8901ijkl"
HMAC_SECRET = "hm4c-s3cret-value"
URL = f"https://hooks.example.org/services/{PATH_TOKEN}/in?code={QUERY_SECRET}&sig={SIG_SECRET}"
HIDDEN = (QUERY_SECRET, SIG_SECRET, PATH_TOKEN, HMAC_SECRET)


@pytest.fixture
def cli_runner(redis_url: str, namespace: str, real_redis: redis.Redis) -> Iterator[CliRunner]:
    yield CliRunner(env={"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace})


def invoke(cli: CliRunner, *args: str, env: dict[str, str] | None = None) -> Result:
    return cli.invoke(main, list(args), env=env)


def assert_hidden(text: str) -> None:
    for secret in HIDDEN:
        assert secret not in text, text


# (b) One redactor, used by the backend and by every display


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.org/hook?code=abc&sig=def", "https://example.org/hook?***"),
        ("https://user:pw@example.org/hook", "https://***@example.org/hook"),
        (
            f"https://hooks.slack.com/services/T0AB12/B0CD34/{PATH_TOKEN}",
            "https://hooks.slack.com/services/T0AB12/B0CD34/***",
        ),
        (
            "https://discord.com/api/webhooks/123456789012345678/abcDEF-ghi_jkl0mno",
            "https://discord.com/api/webhooks/***/***",
        ),
        ("http://127.0.0.1:8000/hook#frag", "http://127.0.0.1:8000/hook"),
        ("http://127.0.0.1:8000/v1/livesync-events-receiver", "http://127.0.0.1:8000/v1/livesync-events-receiver"),
    ],
)
def test_redact_url_hides_credentials_query_values_and_path_tokens(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_webhook_backend_shows_its_url_through_the_same_redactor() -> None:
    backend = create_backend("webhook", "hook", {"url": URL, "secret": HMAC_SECRET})

    assert isinstance(backend, WebhookBackend)
    assert backend.url == redact_url(URL)
    assert_hidden(backend.url)
    assert_hidden(repr(backend.options))


def test_redacted_options_hide_the_url_secrets_and_the_secret_field() -> None:
    shown = redact_options("webhook", {"url": URL, "secret": HMAC_SECRET})

    assert shown == {"url": redact_url(URL), "secret": "***"}


def test_agent_repr_and_str_redact_its_options() -> None:
    agent = Agent(id="hook", backend="webhook", options={"url": URL, "secret": HMAC_SECRET})

    assert_hidden(repr(agent))
    assert_hidden(str(agent))
    assert "hooks.example.org" in repr(agent)


def test_agent_validation_errors_do_not_repeat_the_options() -> None:
    # options stored as a list (a damaged hash): pydantic would quote them whole
    with pytest.raises(ValidationError) as info:
        Agent.model_validate({"id": "hook", "backend": "webhook", "options": [["secret", HMAC_SECRET]]})

    assert_hidden(str(info.value))


def test_agent_show_and_list_hide_url_query_path_token_and_secret(cli_runner: CliRunner) -> None:
    # Given a webhook agent whose URL carries a path token and query credentials
    added = invoke(cli_runner, "agent", "add", "hook", "--backend", "webhook", "--option", f"url={URL}",
                   "--option", f"secret={HMAC_SECRET}")  # fmt: skip
    assert added.exit_code == 0, added.output

    # When it is shown and listed, as text and JSON
    outputs = [
        invoke(cli_runner, "agent", "show", "hook"),
        invoke(cli_runner, "agent", "show", "hook", "--json"),
        invoke(cli_runner, "agent", "list"),
        invoke(cli_runner, "agent", "list", "--json"),
    ]

    # Then no credential shows, while the host still does
    for result in outputs:
        assert result.exit_code == 0, result.output
        assert_hidden(result.output)
    assert "hooks.example.org" in outputs[0].output
    assert json.loads(outputs[1].output)["options"]["url"] == redact_url(URL)


def test_settings_repr_masks_the_redis_passwords() -> None:
    settings = Settings(redis_url="redis://:hunter2@track:6379/0", rq_url="redis://:hunter3@queue:6379/0")

    assert "hunter2" not in repr(settings) and "hunter3" not in repr(settings)
    assert "hunter2" not in str(settings)


# (c) References: @env:NAME and @file:PATH


def test_env_reference_is_stored_as_written_and_resolved_for_the_backend(
    cli_runner: CliRunner, real_redis: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the secret in the environment and an agent added with a reference to it
    monkeypatch.setenv("WEBHOOK_SECRET", HMAC_SECRET)
    result = invoke(cli_runner, "agent", "add", "hook", "--backend", "webhook", "--option", "url=https://example.org/h",
                    "--option", "secret=@env:WEBHOOK_SECRET")  # fmt: skip
    assert result.exit_code == 0, result.output

    # Then Redis holds the reference, not the secret
    manager = SyncManager(real_redis, namespace)
    raw = real_redis.hget(manager.keys.agent("hook"), "options")
    assert raw is not None and HMAC_SECRET.encode() not in raw
    assert json.loads(raw)["secret"] == "@env:WEBHOOK_SECRET"

    # and the backend created from the agent gets the secret itself
    agent = manager.get_agent("hook")
    backend = create_backend(agent.backend, agent.id, agent.options)
    assert isinstance(backend, WebhookBackend)
    assert backend.options.secret.get_secret_value() == HMAC_SECRET

    # and agent show shows the reference
    shown = invoke(cli_runner, "agent", "show", "hook", "--json")
    assert json.loads(shown.output)["options"]["secret"] == "@env:WEBHOOK_SECRET"


def test_file_reference_is_resolved_without_its_trailing_newline(tmp_path: Path) -> None:
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_text(HMAC_SECRET + "\n")

    backend = create_backend("webhook", "hook", {"url": "https://example.org/h", "secret": f"@file:{secret_file}"})

    assert isinstance(backend, WebhookBackend)
    assert backend.options.secret.get_secret_value() == HMAC_SECRET


def test_missing_environment_variable_fails_the_run_with_a_clear_error(
    real_redis: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an agent referring to a variable the worker does not have, with a change pending
    monkeypatch.delenv("WEBHOOK_SECRET_MISSING", raising=False)
    manager = SyncManager(real_redis, namespace)
    manager.add_agent(
        Agent(id="hook", backend="webhook", update_time=0,
              options={"url": "http://127.0.0.1:9/h", "max_retries": "0", "secret": "@env:WEBHOOK_SECRET_MISSING"})
    )  # fmt: skip
    Publisher(real_redis, namespace).emit("event", 1, "created")
    for name in ("_settings", "_redis", "_rq_redis"):
        monkeypatch.setattr(jobs, name, None)
    jobs.configure(Settings(namespace=namespace, retry_max=0), redis=real_redis)
    try:
        # When a worker runs it
        with pytest.raises(ConfigurationError) as info:
            jobs.run(namespace, "hook", 0)
    finally:
        jobs.clear_configuration()

    # Then the error names the option and the variable, and the pointer stayed
    assert "option 'secret'" in str(info.value)
    assert "WEBHOOK_SECRET_MISSING" in str(info.value)
    assert manager.pointers("hook") == [0]
    assert "WEBHOOK_SECRET_MISSING" in (manager.get_agent("hook").last_error or "")


def test_missing_file_fails_the_backend_creation_naming_the_option(tmp_path: Path) -> None:
    missing = tmp_path / "nope.secret"

    with pytest.raises(ConfigurationError, match=r"option 'secret'.*nope\.secret"):
        create_backend("webhook", "hook", {"url": "https://example.org/h", "secret": f"@file:{missing}"})


def test_add_validates_a_resolvable_reference(cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a referenced variable that is set here, but empty
    monkeypatch.setenv("WEBHOOK_SECRET", "")

    result = invoke(cli_runner, "agent", "add", "hook", "--backend", "webhook", "--option", "url=https://example.org/h",
                    "--option", "secret=@env:WEBHOOK_SECRET")  # fmt: skip

    # Then the add is refused for what the worker would refuse
    assert result.exit_code == 2, result.output
    assert "option 'secret': must not be empty" in result.output


def test_add_accepts_a_reference_not_resolvable_here_with_a_warning(
    cli_runner: CliRunner, real_redis: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a variable only the workers have
    monkeypatch.delenv("WORKER_ONLY_SECRET", raising=False)

    result = invoke(cli_runner, "agent", "add", "hook", "--backend", "webhook", "--option", "url=https://example.org/h",
                    "--option", "secret=@env:WORKER_ONLY_SECRET")  # fmt: skip

    # Then the agent is added, with a one-line warning that the workers need it
    assert result.exit_code == 0, result.output
    assert "WORKER_ONLY_SECRET" in result.stderr
    assert SyncManager(real_redis, namespace).get_agent("hook").options["secret"] == "@env:WORKER_ONLY_SECRET"


def test_add_still_checks_the_other_options_when_a_reference_is_not_resolvable(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WORKER_ONLY_SECRET", raising=False)

    result = invoke(cli_runner, "agent", "add", "hook", "--backend", "webhook", "--option", "url=ftp://example.org/h",
                    "--option", "secret=@env:WORKER_ONLY_SECRET")  # fmt: skip

    assert result.exit_code == 2, result.output
    assert "option 'url'" in result.output


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("@env:", "variable name"), ("@env:NOT-A-NAME", "variable name"), ("@file:relative/path", "absolute")],
)
def test_add_refuses_a_malformed_reference(cli_runner: CliRunner, value: str, fragment: str) -> None:
    result = invoke(cli_runner, "agent", "add", "hook", "--backend", "webhook", "--option", "url=https://example.org/h",
                    "--option", f"secret={value}")  # fmt: skip

    assert result.exit_code == 2, result.output
    assert "option 'secret'" in result.output
    assert fragment in result.output


def test_a_secret_given_in_clear_is_accepted_with_a_warning_suggesting_a_reference(cli_runner: CliRunner) -> None:
    result = invoke(cli_runner, "agent", "add", "hook", "--backend", "webhook", "--option", "url=https://example.org/h",
                    "--option", f"secret={HMAC_SECRET}")  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "@env:" in result.stderr
    assert "secret" in result.stderr
    assert_hidden(result.output)


# References only where a secret belongs: SecretStr fields, secret-looking names, URLs

TOKEN = "t0ken-fr0m-the-env"


@pytest.mark.parametrize("set_here", [True, False], ids=["resolvable-here", "worker-only"])
def test_add_refuses_a_reference_on_an_option_that_is_not_secret(
    cli_runner: CliRunner, real_redis: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch, set_here: bool
) -> None:
    # Given a variable that holds a token (or is not set here)
    if set_here:
        monkeypatch.setenv("MY_TOKEN", f"/nowhere/{TOKEN}")
    else:
        monkeypatch.delenv("MY_TOKEN", raising=False)

    # When a jsonl agent is added whose path refers to it
    result = invoke(cli_runner, "agent", "add", "j", "--backend", "jsonl", "--option", "path=@env:MY_TOKEN")

    # Then the add is refused, naming the option, and the token is never shown
    assert result.exit_code == 2, result.output
    assert "option 'path'" in result.output
    assert "secret" in result.output
    assert TOKEN not in result.output
    assert SyncManager(real_redis, namespace).list_agents() == []


def test_backend_creation_refuses_a_reference_on_an_option_that_is_not_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MY_TOKEN", f"/nowhere/{TOKEN}")

    with pytest.raises(ConfigurationError, match="option 'path'") as info:
        create_backend("jsonl", "j", {"path": "@env:MY_TOKEN"})

    assert TOKEN not in str(info.value)


def test_worker_never_resolves_a_stranger_written_reference_into_the_last_error(
    real_redis: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker holding a token in its environment, and an agent hash a stranger
    # rewrote so that the jsonl path refers to it, with a change pending
    monkeypatch.setenv("MY_TOKEN", f"/nowhere/{TOKEN}")
    manager = SyncManager(real_redis, namespace)
    manager.add_agent(Agent(id="j", backend="null", update_time=0))
    real_redis.hset(manager.keys.agent("j"), mapping={"backend": "jsonl", "options": '{"path": "@env:MY_TOKEN"}'})
    Publisher(real_redis, namespace).emit("event", 1, "created")
    for name in ("_settings", "_redis", "_rq_redis"):
        monkeypatch.setattr(jobs, name, None)
    jobs.configure(Settings(namespace=namespace, retry_max=0), redis=real_redis)
    try:
        # When the worker runs it
        with pytest.raises(ConfigurationError):
            jobs.run(namespace, "j", 0)
    finally:
        jobs.clear_configuration()

    # Then the run failed naming the option, and Redis holds no piece of the token
    last_error = manager.get_agent("j").last_error or ""
    assert "option 'path'" in last_error
    assert TOKEN not in last_error
    assert manager.pointers("j") == [0]


def test_url_and_secret_may_both_be_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_URL", URL)
    secret_file = tmp_path / "secret"
    secret_file.write_text(HMAC_SECRET)

    backend = create_backend("webhook", "hook", {"url": "@env:HOOK_URL", "secret": f"@file:{secret_file}"})

    assert isinstance(backend, WebhookBackend)
    assert backend.options.url == URL
    assert backend.url == redact_url(URL)


def test_add_accepts_a_url_reference(
    cli_runner: CliRunner, real_redis: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_URL", URL)
    monkeypatch.setenv("WEBHOOK_SECRET", HMAC_SECRET)

    result = invoke(cli_runner, "agent", "add", "hook", "--backend", "webhook", "--option", "url=@env:HOOK_URL",
                    "--option", "secret=@env:WEBHOOK_SECRET")  # fmt: skip

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert SyncManager(real_redis, namespace).get_agent("hook").options["url"] == "@env:HOOK_URL"


# Credentials in URLs given in clear: a warning suggesting a reference


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pw0rd-in-url@example.com/hook",
        "https://example.com/hook?code=SECRETCODE",
        "https://user:pw0rd-in-url@example.com/hook?code=SECRETCODE",
        f"https://hooks.example.org/services/{PATH_TOKEN}/in",
    ],
)
def test_add_warns_about_credentials_in_a_url_given_in_clear(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", HMAC_SECRET)

    result = invoke(cli_runner, "agent", "add", "w", "--backend", "webhook", "--option", f"url={url}",
                    "--option", "secret=@env:WEBHOOK_SECRET")  # fmt: skip

    assert result.exit_code == 0, result.output
    [warning] = result.stderr.strip().splitlines()
    assert "option 'url'" in warning
    assert "url=@env:NAME" in warning
    for secret in ("pw0rd-in-url", "SECRETCODE", PATH_TOKEN):
        assert secret not in result.output


def test_add_does_not_warn_about_a_url_without_credentials(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", HMAC_SECRET)

    result = invoke(cli_runner, "agent", "add", "w", "--backend", "webhook", "--option", "url=https://example.com/hook",
                    "--option", "secret=@env:WEBHOOK_SECRET")  # fmt: skip

    assert result.exit_code == 0, result.output
    assert result.stderr == ""


# Webhook errors built from a resolved URL and secret carry neither


def echoing(status: int) -> Callable[[Request], Response]:
    """A target that answers ``status`` quoting the request line and the secret, as some error pages do."""

    def answer(request: Request) -> Response:
        return Response(f"Cannot POST {request.full_path} (secret {HMAC_SECRET})", status)

    return answer


@pytest.mark.parametrize("status", [404, 500])
def test_webhook_error_quoting_the_request_holds_no_url_credential(
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    # Given a webhook URL with a path token and query credentials, from the environment,
    # and a target whose error page quotes the request path and query
    path = f"/services/{PATH_TOKEN}/in"
    httpserver.expect_request(path, method="POST").respond_with_handler(echoing(status))
    monkeypatch.setenv("HOOK_URL", httpserver.url_for(path) + f"?code={QUERY_SECRET}&sig={SIG_SECRET}")
    monkeypatch.setenv("WEBHOOK_SECRET", HMAC_SECRET)
    backend = create_backend(
        "webhook", "hook", {"url": "@env:HOOK_URL", "secret": "@env:WEBHOOK_SECRET", "max_retries": 1, "backoff": 0}
    )
    record = Record(type="event", id=1, action="updated", changes=("title_changed",), seq=1, version=1)

    # When a batch fails
    with caplog.at_level(logging.DEBUG), backend, pytest.raises(WebhookError) as info:
        backend.upload(
            [record, Record(type="event", id=2, action="updated", changes=("title_changed",), seq=2, version=2)]
        )

    # Then neither the error nor any log line of the client side holds a credential
    assert_hidden(str(info.value))
    for record in caplog.records:
        if not record.name.startswith("werkzeug"):  # the test server's access log
            assert_hidden(record.getMessage())
    assert "Cannot POST" in str(info.value)


def test_webhook_rejection_reasons_hold_no_url_credential(
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a target refusing a record with a page quoting the request
    path = f"/services/{PATH_TOKEN}/in"
    httpserver.expect_request(path, method="POST").respond_with_handler(echoing(422))
    monkeypatch.setenv("HOOK_URL", httpserver.url_for(path) + f"?code={QUERY_SECRET}&sig={SIG_SECRET}")
    backend = create_backend("webhook", "hook", {"url": "@env:HOOK_URL", "secret": HMAC_SECRET})
    record = Record(type="event", id=1, action="updated", changes=("title_changed",), seq=1, version=1)

    # When the record is rejected (its reason goes to the dead-letter list in Redis)
    with backend, pytest.raises(RecordRejected) as info:
        backend.upload([record])

    # Then the reason holds no credential
    [(_record, reason)] = info.value.rejections
    assert reason.startswith("HTTP 422: Cannot POST")
    assert_hidden(reason)
