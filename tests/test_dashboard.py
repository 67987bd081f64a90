"""``livesync dashboard``: rq-dashboard on livesync's queue, JSON serializer, auth from the environment.

A real failed livesync run (a jsonl agent whose path is a directory) and a registered
worker are created on the test Redis, in the test's own RQ queue (``q-<namespace>``);
the dashboard is served on a free port and read through rq-dashboard's JSON endpoints:

- ``/0/data/queues.json``: every queue with its registry counts;
- ``/0/data/workers.json``: every worker, its queues and current job;
- ``/0/data/jobs/<queue>/<registry>/<per page>/<order>/<page>.json``: jobs of a registry;
- ``/0/data/job/<id>.json``: one job, with ``exc_info`` (the traceback) and status.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import redis
from click.testing import CliRunner
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.serializers import JSONSerializer
from support.servers import TEST_REDIS_URL
from test_metrics import serving, start_cli, stop_cli, url_in

from livesync import Publisher, jobs
from livesync.cli import main
from livesync.cli.serve import dashboard
from livesync.config import Settings
from livesync.dashboard import (
    Credentials,
    create_app,
    credentials_from_env,
    make_dashboard_server,
    serve,
    server_url,
)
from livesync.errors import ConfigurationError
from livesync.manager import Agent, SyncManager

UNREACHABLE_URL = "redis://:hunter2@127.0.0.1:1/0"


pytestmark = pytest.mark.jobs_settings(redis_url=TEST_REDIS_URL)


@pytest.fixture
def failed_run(real_redis: redis.Redis, namespace: str, settings: Settings, queue: Queue, tmp_path: Path) -> str:
    """The id of a livesync run job that failed: its jsonl agent writes to a directory."""
    manager = SyncManager(real_redis, namespace)
    manager.add_agent(Agent(id="archive", backend="jsonl", options={"path": str(tmp_path / "out")}, update_time=0))
    (tmp_path / "out").mkdir()  # after add, which refuses a directory
    Publisher(real_redis, namespace).emit("event", 42, "created")
    [job_id] = jobs.enqueue_due(manager, queue, settings)
    SimpleWorker(
        [queue], connection=real_redis, serializer=JSONSerializer, name=f"w-{namespace}-{uuid.uuid4().hex[:6]}"
    ).work(burst=True)
    return job_id


@pytest.fixture
def live_worker(real_redis: redis.Redis, namespace: str, queue: Queue) -> Iterator[Worker]:
    """A worker registered on the queue (as a running `livesync worker` would be)."""
    worker = Worker([queue], connection=real_redis, serializer=JSONSerializer, name=f"live-{namespace}")
    worker.register_birth()  # type: ignore[no-untyped-call]
    yield worker
    worker.register_death()  # type: ignore[no-untyped-call]


def start_dashboard(settings: Settings, credentials: Credentials | None = None) -> tuple[Any, threading.Thread, str]:
    server = make_dashboard_server(settings, "127.0.0.1", 0, credentials=credentials)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread, server_url(server)


@pytest.fixture
def dashboard_url(settings: Settings) -> Iterator[str]:
    """The base URL of a dashboard (no auth) served on a free port in a thread."""
    server, thread, url = start_dashboard(settings)
    yield url
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def get_json(url: str, path: str, **kwargs: Any) -> Any:
    response = httpx.get(url + path, timeout=10, **kwargs)
    assert response.status_code == 200, (path, response.status_code, response.text[:500])
    return response.json()


def fetch_workers(url: str) -> dict[str, Any]:
    """An RQ job: what the dashboard's workers.json says while this job runs."""
    return dict(get_json(url, "0/data/workers.json"))


# What the dashboard shows


def test_dashboard_lists_the_queue_with_its_failed_run(dashboard_url: str, failed_run: str, settings: Settings) -> None:
    # When the queues overview is read
    queues = {q["name"]: q for q in get_json(dashboard_url, "0/data/queues.json")["queues"]}

    # Then livesync's queue is there with one failed job and nothing queued or running
    assert queues[settings.queue]["failed_job_registry_count"] == 1
    assert queues[settings.queue]["count"] == 0
    assert queues[settings.queue]["started_job_registry_count"] == 0


def test_dashboard_lists_the_live_worker(dashboard_url: str, live_worker: Worker, settings: Settings) -> None:
    # When the workers overview is read
    workers = {w["name"]: w for w in get_json(dashboard_url, "0/data/workers.json")["workers"]}

    # Then the registered worker is there, on livesync's queue, idle
    worker = workers[live_worker.name]
    assert worker["queues"] == [settings.queue]
    assert worker["current_job"] == "idle"


def test_dashboard_shows_the_failed_run_with_its_traceback(
    dashboard_url: str, failed_run: str, settings: Settings, namespace: str
) -> None:
    # When the failed registry of livesync's queue is read
    listing = get_json(dashboard_url, f"0/data/jobs/{settings.queue}/failed/8/asc/1.json")

    # Then it holds the run, described, with the backend's error in its traceback
    [job] = listing["jobs"]
    assert job["id"] == failed_run
    assert job["description"] == f"livesync run {namespace}/archive partition 0"
    assert "IsADirectoryError" in job["exc_info"] and "Traceback" in job["exc_info"]

    # And the job's own page data (read with the JSON serializer) has its status and origin
    detail = get_json(dashboard_url, f"0/data/job/{failed_run}.json")
    assert detail["status"] == "failed"
    assert detail["origin"] == settings.queue
    assert "IsADirectoryError" in detail["exc_info"]


def test_dashboard_html_pages_render(
    dashboard_url: str, failed_run: str, live_worker: Worker, settings: Settings
) -> None:
    # When the pages an operator opens are requested
    for path in ("", "0/view/workers", f"0/view/jobs/{settings.queue}/failed/8/asc/1", f"0/view/job/{failed_run}"):
        response = httpx.get(dashboard_url + path, timeout=10)

        # Then each renders
        assert response.status_code == 200, path
        assert "text/html" in response.headers["content-type"]

    # And the stylesheets, scripts and icon the pages link to are served
    assets = set(re.findall(r'(?:href|src)="/([^"]+\.(?:css|js|ico))"', httpx.get(dashboard_url, timeout=10).text))
    assert {"static/favicon.ico", "static/css/main.css"} <= assets
    for asset in assets:
        assert httpx.get(dashboard_url + asset, timeout=10).status_code == 200, asset


def test_dashboard_shows_what_a_busy_worker_runs(
    dashboard_url: str, real_redis: redis.Redis, queue: Queue, namespace: str
) -> None:
    # Given a JSON-serialized job that reads workers.json while a worker runs it
    # (rq-dashboard 0.9.0 alone answers 500 here: it decodes current jobs with pickle)
    job = queue.enqueue(
        "test_dashboard.fetch_workers", args=(dashboard_url,), job_id=f"busy-{namespace}", result_ttl=60
    )
    worker = SimpleWorker([queue], connection=real_redis, serializer=JSONSerializer, name=f"busy-w-{namespace}")

    # When the worker runs it
    worker.work(burst=True)

    # Then the dashboard listed the busy worker with the job's call string
    job = Job.fetch(job.id, connection=real_redis, serializer=JSONSerializer)
    result = job.latest_result()
    assert result is not None and result.type == result.Type.SUCCESSFUL, result and result.exc_string
    listing: dict[str, Any] = result.return_value or {}
    workers = {w["name"]: w for w in listing["workers"]}
    current = workers[worker.name]["current_job"]
    assert current["job_id"] == job.id
    assert current["call_string"].startswith("test_dashboard.fetch_workers(")


# Authentication


def test_no_credentials_in_the_environment_means_no_auth() -> None:
    assert credentials_from_env({"LIVESYNC_NAMESPACE": "x", "LIVESYNC_DASHBOARD_USERNAME": ""}) is None


def test_rq_dashboard_credential_variables_are_honoured() -> None:
    environ = {"RQ_DASHBOARD_USERNAME": "rq", "RQ_DASHBOARD_PASSWORD": "rq-secret"}
    assert credentials_from_env(environ) == Credentials("rq", "rq-secret")


def test_livesync_credential_variables_win_as_a_pair() -> None:
    environ = {
        "RQ_DASHBOARD_USERNAME": "rq",
        "RQ_DASHBOARD_PASSWORD": "rq-secret",
        "LIVESYNC_DASHBOARD_USERNAME": "ops",
        "LIVESYNC_DASHBOARD_PASSWORD": "s3cret",
    }
    credentials = credentials_from_env(environ)
    assert credentials == Credentials("ops", "s3cret")
    assert "s3cret" not in repr(credentials)


@pytest.mark.parametrize(
    ("environ", "missing"),
    [
        ({"LIVESYNC_DASHBOARD_USERNAME": "ops"}, "LIVESYNC_DASHBOARD_PASSWORD"),
        ({"LIVESYNC_DASHBOARD_PASSWORD": "s3cret", "RQ_DASHBOARD_USERNAME": "rq"}, "LIVESYNC_DASHBOARD_USERNAME"),
        ({"RQ_DASHBOARD_PASSWORD": "rq-secret"}, "RQ_DASHBOARD_USERNAME"),
    ],
)
def test_half_a_credential_pair_is_refused(environ: dict[str, str], missing: str) -> None:
    # An open dashboard by mistake is worse than none
    with pytest.raises(ConfigurationError, match=missing):
        credentials_from_env(environ)


def test_credentials_cannot_be_given_on_the_command_line() -> None:
    assert {param.name for param in dashboard.params} == {"host", "port"}


def test_dashboard_with_credentials_from_the_environment_requires_basic_auth(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given credentials in the environment and a dashboard made with them
    monkeypatch.setenv("LIVESYNC_DASHBOARD_USERNAME", "ops")
    monkeypatch.setenv("LIVESYNC_DASHBOARD_PASSWORD", "s3cret")
    server, thread, url = start_dashboard(settings, credentials_from_env(os.environ))
    try:
        for path in ("", "0/data/queues.json", "0/data/workers.json", "static/css/main.css"):
            # When requested without or with wrong credentials, then 401 asking for basic auth
            anonymous = httpx.get(url + path, timeout=10)
            assert anonymous.status_code == 401, path
            assert anonymous.headers["www-authenticate"].startswith("Basic ")
            assert httpx.get(url + path, auth=("ops", "wrong"), timeout=10).status_code == 401
            assert httpx.get(url + path, auth=("other", "s3cret"), timeout=10).status_code == 401
            # and with them, 200
            assert httpx.get(url + path, auth=("ops", "s3cret"), timeout=10).status_code == 200, path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_auth_of_one_app_does_not_leak_into_another(settings: Settings) -> None:
    # Given an app with credentials made first in this process (rq-dashboard's own make_flask_app
    # would have put them on its shared blueprint)
    create_app(settings, credentials=Credentials("ops", "s3cret"))

    # When an app without credentials is made afterwards
    client = create_app(settings).test_client()

    # Then it is open
    assert client.get("/0/data/queues.json").status_code == 200


# The CLI command


def test_dashboard_command_binds_loopback_by_default_and_documents_credentials() -> None:
    options = {param.name: param for param in dashboard.params}
    assert options["host"].default == "127.0.0.1"
    assert options["port"].default == 9181
    help_text = dashboard.get_help(click.Context(dashboard, info_name="dashboard"))
    for needle in (
        "LIVESYNC_DASHBOARD_USERNAME",
        "LIVESYNC_DASHBOARD_PASSWORD",
        "RQ_DASHBOARD_USERNAME",
        "non-loopback",
    ):
        assert needle in help_text


def test_dashboard_command_refuses_half_credentials(redis_url: str, namespace: str) -> None:
    # When only a username is set
    result = CliRunner().invoke(
        main,
        ["dashboard", "--port", "0"],
        env={
            "LIVESYNC_REDIS_URL": redis_url,
            "LIVESYNC_NAMESPACE": namespace,
            "LIVESYNC_DASHBOARD_USERNAME": "ops",
            "LIVESYNC_DASHBOARD_PASSWORD": None,
        },
    )

    # Then it refuses to start (bad input: exit 2) and says what is missing
    assert result.exit_code == 2, result.output
    assert "LIVESYNC_DASHBOARD_PASSWORD" in result.output


def test_serve_announces_the_url_with_the_redis_password_masked(namespace: str) -> None:
    # Given a queue Redis URL with a password
    settings = Settings(namespace=namespace, rq_url=UNREACHABLE_URL)

    # When the dashboard starts
    with serving(serve, settings) as server:
        line = server.first_line()

    # Then it announced its loopback URL and the queue's Redis with the password masked
    assert url_in(line).startswith("http://127.0.0.1:")
    assert "redis://:***@127.0.0.1:1/0" in line and "hunter2" not in line
    assert "no authentication" in line


def test_dashboard_command_serves_with_env_credentials_until_sigterm(
    redis_url: str, namespace: str, failed_run: str, settings: Settings
) -> None:
    # Given credentials in the environment of `livesync dashboard`
    env = {
        "LIVESYNC_REDIS_URL": redis_url,
        "LIVESYNC_NAMESPACE": namespace,
        "LIVESYNC_QUEUE": settings.queue,
        "LIVESYNC_DASHBOARD_USERNAME": "ops",
        "LIVESYNC_DASHBOARD_PASSWORD": "s3cret",
    }

    # When it runs as a real process on a free port
    proc, line = start_cli(["dashboard", "--port", "0"], env)
    try:
        # Then it announces a loopback URL, with auth on and without the password
        url = url_in(line)
        assert url.startswith("http://127.0.0.1:")
        assert "basic auth as 'ops'" in line and "s3cret" not in line
        # anonymous requests get 401, authenticated ones see the failed run
        assert httpx.get(url + "0/data/queues.json", timeout=10).status_code == 401
        queues = {q["name"]: q for q in get_json(url, "0/data/queues.json", auth=("ops", "s3cret"))["queues"]}
        assert queues[settings.queue]["failed_job_registry_count"] == 1
    finally:
        # and SIGTERM stops it cleanly
        code, err = stop_cli(proc)
    assert code == 0, err
