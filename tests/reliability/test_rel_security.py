"""Security properties: JSON jobs, Redis passwords never printed, loopback binds, rediss://, webhook signatures.

- Jobs RQ stores for livesync (run jobs, the scheduler's tick jobs, their results after a
  real worker ran them) are JSON, never pickle: checked on the raw Redis values.
- No password of a Redis URL shows in any command's output or log lines (``-vv``), for
  a Redis that does not answer and for a real password-protected ``redis-server``; the
  long-running commands (metrics, dashboard, scheduler, worker) take the URL from the
  environment, so their command lines hold no password either, and their pages do not.
- ``livesync metrics`` and ``livesync dashboard`` listen on loopback unless ``--host``
  says otherwise.
- ``rediss://`` URLs are accepted; an unreachable one fails with one clear line.
- ``livesync.signing.verify`` refuses tampered bodies, wrong secrets and stale
  (replayed) timestamps, for generated bodies and secrets.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.processes import REPO, Proc, Processes
from support.servers import RedisServer, free_port
from support.waiting import wait_for

from livesync import Publisher, jobs
from livesync.cli import main
from livesync.config import Settings
from livesync.errors import RedisUnavailable
from livesync.manager import Agent, SyncManager
from livesync.scheduler import build_scheduler
from livesync.signing import SignatureError, sign, verify
from livesync.urls import mask_url

PASSWORD = "hunter2"
NOWHERE = f"redis://:{PASSWORD}@127.0.0.1:1/0"
DASHBOARD_USER = "operator"
DASHBOARD_PASSWORD = "dash-S3cret-pw"
AGENT = "search"


class ProtectedRedis(RedisServer):
    """A private redis-server with ``requirepass``; its URL carries the password."""

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProtectedRedis]:
    """One password-protected redis-server for the module."""
    server = ProtectedRedis(tmp_path_factory.mktemp("protected-redis"), free_port(), extra=["--requirepass", PASSWORD])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(namespace: str) -> dict[str, str]:
    """Environment of the test's livesync processes (no LIVESYNC_* of the caller)."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith(("LIVESYNC_", "RQ_DASHBOARD"))}
    environ.update({"LIVESYNC_NAMESPACE": namespace, "LIVESYNC_QUEUE": f"q-{namespace}", "PYTHONUNBUFFERED": "1"})
    return environ


def run_all(commands: dict[str, list[str]], env: dict[str, str], timeout: float = 90) -> dict[str, tuple[int, str]]:
    """Run ``livesync ARGS`` commands in parallel; return (exit code, stdout + stderr) by name."""
    argv = [sys.executable, "-m", "livesync"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    started = {name: subprocess.Popen([*argv, *args], cwd=REPO, env=env, **pipes) for name, args in commands.items()}
    done: dict[str, tuple[int, str]] = {}
    deadline = time.monotonic() + timeout
    for name, process in started.items():
        try:
            out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        done[name] = (process.returncode, f"{out}\n--- stderr ---\n{err}")
    return done


def assert_no_secret(outputs: dict[str, tuple[int, str]], *secrets: str) -> None:
    for name, (_code, output) in outputs.items():
        for secret in secrets:
            assert secret not in output, f"{name} printed a secret:\n{output}"


# --- jobs are JSON, never pickle -----------------------------------------------------------------


def decoded_values(where: str, raw: bytes) -> list[bytes]:
    """``raw`` and what it decodes to: job data is zlib-compressed, results are base64 in rq:results streams."""
    values = [raw]
    with contextlib.suppress(zlib.error):
        values.append(zlib.decompress(raw))
    if where.startswith("rq:results:"):
        with contextlib.suppress(binascii.Error, ValueError):
            values.append(base64.b64decode(raw, validate=True))
    return values


def is_pickle(value: bytes) -> bool:
    """Pickle protocol 2+ starts with PROTO (0x80); protocols 0/1 end with STOP after an opcode stream."""
    return value.startswith(b"\x80") or (value.endswith(b".") and value[:1] in (b"(", b"c", b"]", b"}"))


def every_rq_value(client: redis.Redis) -> Iterator[tuple[str, bytes]]:
    """Every value RQ stored: hash fields, strings, list, set, zset members and stream fields of rq:* keys."""
    for key in client.scan_iter(match="rq:*", count=1000):
        name, kind = key.decode(), client.type(key)
        if kind == b"hash":
            for field, value in client.hgetall(key).items():
                yield f"{name}[{field.decode()}]", value
        elif kind == b"string":
            yield name, client.get(key) or b""
        elif kind == b"list":
            for value in client.lrange(key, 0, -1):
                yield name, value
        elif kind in (b"set", b"zset"):
            members = client.smembers(key) if kind == b"set" else client.zrange(key, 0, -1)
            for value in members:
                yield name, value
        elif kind == b"stream":
            for _id, fields in client.xrange(key):
                for field, value in fields.items():
                    yield f"{name}[{field.decode()}]", value


def job_payload(client: redis.Redis, job_id: str) -> list[object]:
    """The decoded ``data`` of a job hash: zlib-compressed JSON ``[func, instance, args, kwargs]``."""
    raw = client.hget(f"rq:job:{job_id}", "data")
    assert raw is not None, job_id
    payload = zlib.decompress(raw)
    assert not is_pickle(payload), payload[:40]
    data = json.loads(payload)
    assert isinstance(data, list)
    return data


def test_run_and_tick_jobs_and_their_results_are_json_never_pickle(
    protected: ProtectedRedis, env: dict[str, str], namespace: str
) -> None:
    # Given an agent with pending changes on the protected Redis
    client = protected.client()
    settings = Settings(redis_url=protected.url, namespace=namespace, queue=f"q-{namespace}", retry_max=0)
    manager = SyncManager(client, namespace)
    manager.add_agent(Agent(id=AGENT, backend="null", update_time=0), start="head")
    Publisher(client, namespace).emit_many([("event", i, ["created"]) for i in range(5)])

    # When a run job is enqueued (as a tick does) and the scheduler enqueues its tick job
    queue = jobs.make_queue(settings, client)
    [run_id] = jobs.enqueue_due(manager, queue, settings)
    enqueued = build_scheduler(settings, client).enqueue_jobs()
    assert len(enqueued) == 1
    [tick_id] = [job_id for job_id in queue.get_job_ids() if job_id != run_id]

    # Then both raw job hashes hold zlib-compressed JSON naming the function and its arguments
    assert job_payload(client, run_id)[0] == jobs.RUN
    assert job_payload(client, run_id)[2] == [namespace, AGENT, 0]
    assert job_payload(client, tick_id)[0] == jobs.TICK
    assert job_payload(client, tick_id)[2] == [namespace]

    # When a real worker runs them (with -vv: every log line is checked below)
    done = run_all({"worker": ["-vv", "worker", "--burst"]}, {**env, "LIVESYNC_REDIS_URL": protected.url})
    assert done["worker"][0] == 0, done["worker"][1]
    assert_no_secret(done, PASSWORD)

    # Then they finished, and nothing RQ stored anywhere (jobs, results, workers, registries) is pickle
    assert client.hget(f"rq:job:{run_id}", "status") == b"finished"
    assert client.hget(f"rq:job:{tick_id}", "status") == b"finished"
    assert manager.pointers(AGENT) == [5]
    checked = 0
    for where, raw in every_rq_value(client):
        for value in decoded_values(where, raw):
            assert not is_pickle(value), (where, value[:60])
        checked += 1
    assert checked > 20
    results = list(client.xrange(f"rq:results:{run_id}"))
    assert results, "the run's result was not stored"
    stored = results[-1][1][b"return_value"]
    assert json.loads(base64.b64decode(stored))["pointer_after"] == 5


# --- passwords in URLs are never printed ---------------------------------------------------------

#: Short-lived commands run in-process (CliRunner; their log records go to caplog at DEBUG).
IN_PROCESS: dict[str, list[str]] = {
    "init": ["-vv", "init"],
    "agent list": ["-vv", "agent", "list"],
    "agent show": ["-vv", "agent", "show", AGENT],
    "agent dlq": ["-vv", "agent", "dlq", AGENT],
    "list": ["-vv", "list"],
    "publish": ["-vv", "publish", "event", "77", "created"],
    "tick": ["-vv", "tick", "--force"],
    "agent run": ["-vv", "agent", "run", AGENT],
}
#: Commands run as real processes with -vv (their log lines go to stderr).
AS_PROCESSES: dict[str, list[str]] = {
    "status": ["-vv", "status"],
    "publish": ["-vv", "publish", "event", "78", "created"],
    "demo": ["-vv", "demo", "--changes", "100", "--objects", "10"],
}


def as_processes(scratch: Path) -> dict[str, list[str]]:
    """:data:`AS_PROCESSES`, the demo keeping its mirror in ``scratch`` (not in the checkout it runs in)."""
    return {**AS_PROCESSES, "demo": [*AS_PROCESSES["demo"], "--mirror", str(scratch / "demo-mirror.db")]}


def cli(env: dict[str, str | None], *args: str) -> tuple[int, str]:
    """``livesync ARGS`` in-process with ``env``: (exit code, stdout + stderr)."""
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output


def test_no_command_prints_the_password_of_an_unreachable_redis(
    env: dict[str, str], namespace: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # Given a Redis URL with a password, pointing nowhere, given with --redis-url
    caplog.set_level(logging.DEBUG)
    processes = {**as_processes(tmp_path), "worker": ["-vv", "worker", "--burst"], "scheduler": ["-vv", "scheduler"]}

    # When every command runs: some as processes (in parallel), the others in-process
    done = run_all({name: ["--redis-url", NOWHERE, *argv] for name, argv in processes.items()}, env)
    cli_env: dict[str, str | None] = {"LIVESYNC_NAMESPACE": namespace, "LIVESYNC_REDIS_URL": None}
    for name, argv in IN_PROCESS.items():
        done[f"{name} (in-process)"] = cli(cli_env, "--redis-url", NOWHERE, *argv)

    # Then none printed or logged the password; each failed with exit 1 and one line naming the masked URL
    assert_no_secret(done, PASSWORD)
    assert PASSWORD not in caplog.text
    for name, (code, output) in done.items():
        if name == "demo":  # falls back to a private redis-server and says so
            assert code == 0, output
            assert "using a private redis-server" in output
            continue
        assert code == 1, (name, output)
        last = output.rstrip().splitlines()[-1]
        assert last.startswith("Error: cannot reach Redis at redis://:***@127.0.0.1:1/0"), (name, output)
        assert "Traceback" not in output, (name, output)


def test_no_command_prints_the_password_of_a_protected_redis(
    protected: ProtectedRedis, env: dict[str, str], namespace: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # Given a password-protected Redis, named by LIVESYNC_REDIS_URL, with an agent and a change
    caplog.set_level(logging.DEBUG)
    client = protected.client()
    SyncManager(client, namespace).add_agent(Agent(id=AGENT, backend="debug", update_time=0), start="head")
    Publisher(client, namespace).emit("event", 1, "created")
    environ = {**env, "LIVESYNC_REDIS_URL": protected.url}
    cli_env: dict[str, str | None] = {key: environ[key] for key in ("LIVESYNC_REDIS_URL", "LIVESYNC_NAMESPACE")}
    cli_env["LIVESYNC_QUEUE"] = environ["LIVESYNC_QUEUE"]

    # When every command runs: in-process ones (tick enqueues a run), then processes (a worker runs it)
    done = {f"{name} (in-process)": cli(cli_env, *argv) for name, argv in IN_PROCESS.items()}
    done["destroy (in-process)"] = cli(cli_env, "-vv", "destroy", "--track-only")
    done.update(run_all({**as_processes(tmp_path), "worker": ["-vv", "worker", "--burst"]}, environ))

    # Then every one succeeded (destroy refuses without --yes), and none printed or logged the password
    assert_no_secret(done, PASSWORD)
    assert PASSWORD not in caplog.text
    for name, (code, output) in done.items():
        assert code == (2 if name.startswith("destroy") else 0), (name, output)
    assert f"using the Redis at redis://:***@127.0.0.1:{protected.port}/0" in done["demo"][1]
    assert "enqueued 1 run(s)" in done["tick (in-process)"][1]
    assert "DEBUG" in done["status"][1] and "Listening on" in done["worker"][1]  # -vv did log


def test_wrong_password_is_refused_in_one_line_without_echoing_it(protected: ProtectedRedis, namespace: str) -> None:
    # Given the protected Redis with a wrong password in the URL
    wrong = f"redis://:not-{PASSWORD}-either@127.0.0.1:{protected.port}/0"
    cli_env: dict[str, str | None] = {"LIVESYNC_REDIS_URL": wrong, "LIVESYNC_NAMESPACE": namespace}

    # When commands run against it
    done = {name: cli(cli_env, *argv) for name, argv in (("status", ["status"]), ("publish", AS_PROCESSES["publish"]))}

    # Then they fail with exit 1, saying the credentials were refused, printing neither password
    assert_no_secret(done, PASSWORD, f"not-{PASSWORD}-either")
    for name, (code, output) in done.items():
        assert code == 1, (name, output)
        assert f"Error: Redis at redis://:***@127.0.0.1:{protected.port}/0 refused the credentials" in output


# --- long-running commands: command lines, pages, loopback ---------------------------------------


def cmdlines(pid: int) -> list[str]:
    """The command lines of ``pid`` and every descendant."""
    lines: list[str] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            lines.append(Path(f"/proc/{current}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(child) for child in children)
    return lines


def listening(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp[6]) of sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].rsplit(":", 1)
                if int(hex_port, 16) == port and fields[3] == "0A":
                    found.add(address)
    return found


def other_addresses() -> list[str]:
    """The machine's non-loopback IPv4 addresses."""
    addresses = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _index, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
            except OSError:
                continue
            address = socket.inet_ntoa(packed[20:24])
            if not address.startswith("127."):
                addresses.append(address)
    return addresses


def connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def fetch(url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def test_servers_take_the_password_from_the_environment_hide_it_and_bind_loopback(
    protected: ProtectedRedis, processes: Processes, namespace: str
) -> None:
    # Given the long-running commands started with the protected Redis's URL in the environment only
    client = protected.client()
    SyncManager(client, namespace).add_agent(Agent(id=AGENT, backend="null", update_time=0), start="head")
    Publisher(client, namespace).emit("event", 1, "created")
    environ = {
        "LIVESYNC_REDIS_URL": protected.url,
        "LIVESYNC_DASHBOARD_USERNAME": DASHBOARD_USER,
        "LIVESYNC_DASHBOARD_PASSWORD": DASHBOARD_PASSWORD,
    }
    metrics_port, dashboard_port, open_port, nowhere_port = free_port(), free_port(), free_port(), free_port()
    started: dict[str, Proc] = {
        "metrics": processes.livesync("metrics", "-v", "metrics", "--port", str(metrics_port), env=environ),
        "dashboard": processes.livesync("dashboard", "-v", "dashboard", "--port", str(dashboard_port), env=environ),
        "scheduler": processes.livesync("scheduler", "-vv", "scheduler", env=environ),
        "worker": processes.livesync("worker", "-vv", "worker", env=environ),
        "metrics 0.0.0.0": processes.livesync(
            "metrics-open", "metrics", "--host", "0.0.0.0", "--port", str(open_port), env=environ
        ),
        "metrics nowhere": processes.livesync(
            "metrics-nowhere", "-v", "metrics", "--port", str(nowhere_port), env={"LIVESYNC_REDIS_URL": NOWHERE}
        ),
    }

    # When they are up
    expected_lines = {
        "metrics": f"at http://127.0.0.1:{metrics_port}/metrics",
        "dashboard": f"rq-dashboard at http://127.0.0.1:{dashboard_port}/",
        "scheduler": f"scheduler: ticking {namespace} every 10s on queue q-{namespace} at redis://:***@127.0.0.1:",
        "worker": "Listening on",
        "metrics 0.0.0.0": f"at http://0.0.0.0:{open_port}/metrics",
        "metrics nowhere": f"at http://127.0.0.1:{nowhere_port}/metrics",
    }
    for name, proc in started.items():
        wait_for(lambda proc=proc, name=name: expected_lines[name] in proc.output() or not proc.alive(), 30, name)
        assert proc.alive(), (name, proc.output())
    assert "warning: cannot reach Redis at redis://:***@127.0.0.1:1/0" in started["metrics nowhere"].output()

    # Then no command line of theirs (or their children) holds a password
    for name, proc in started.items():
        for line in cmdlines(proc.pid):
            assert PASSWORD not in line and DASHBOARD_PASSWORD not in line, (name, line)

    # and metrics and dashboard listen on loopback only, unless --host said otherwise
    loopback, everywhere = "0100007F", "00000000"
    assert listening(metrics_port) == {loopback}
    assert listening(dashboard_port) == {loopback}
    assert listening(nowhere_port) == {loopback}
    assert listening(open_port) == {everywhere}
    for address in other_addresses():
        assert not connects(address, metrics_port) and not connects(address, dashboard_port), address
        assert connects(address, open_port), address

    # and their pages do not show the password either; the dashboard asks for its credentials
    status, page = fetch(f"http://127.0.0.1:{metrics_port}/metrics")
    assert status == 200 and "livesync_up 1" in page and PASSWORD not in page
    status, _page = fetch(f"http://127.0.0.1:{dashboard_port}/")
    assert status == 401
    for path in ("", "0/view/queues", "0/data/queues.json", "0/view/workers", "0/data/workers.json"):
        status, page = fetch(f"http://127.0.0.1:{dashboard_port}/{path}", auth=(DASHBOARD_USER, DASHBOARD_PASSWORD))
        assert status == 200, (path, page[:200])
        assert PASSWORD not in page and DASHBOARD_PASSWORD not in page, path

    # When they are stopped, nothing they logged (with -v / -vv) held a password
    processes.stop_all()
    for name, proc in started.items():
        output = proc.output()
        assert PASSWORD not in output and DASHBOARD_PASSWORD not in output, (name, output)


# --- known leaks ------------------------------------------------------------------------------------


def test_dashboard_page_hides_a_password_holding_an_at_sign(protected: ProtectedRedis) -> None:
    # Given a Redis user whose password holds an '@'
    from livesync.dashboard import create_app

    secret = "hun@ter2"
    protected.client().acl_setuser(
        "probe", enabled=True, passwords=[f"+{secret}"], keys=["*"], channels=["*"], commands=["+@all"]
    )
    url = f"redis://probe:{secret}@127.0.0.1:{protected.port}/0"
    assert redis.Redis.from_url(url).ping()

    # When the dashboard's queue page is rendered
    response = create_app(Settings(redis_url=url)).test_client().get("/")

    # Then no part of the password is on it
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and "rq-instances" in page
    assert "ter2" not in page and "hun" not in page, [line for line in page.splitlines() if "***" in line]


def test_a_password_in_the_query_holding_an_at_sign_is_masked() -> None:
    # Given a URL whose query holds a password with an '@'
    url = "redis://127.0.0.1:1/0?password=hun@ter2"

    # When a command fails to reach it
    result = CliRunner().invoke(main, ["--redis-url", url, "status"])

    # Then no part of the password is printed
    assert result.exit_code == 1
    assert "ter2" not in result.output, result.output


@settings(max_examples=150, deadline=None)
@given(
    user=st.sampled_from(["", "default", "app-user"]),
    password=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#/?"), min_size=8),
    scheme=st.sampled_from(["redis", "rediss"]),
    query=st.sampled_from(["", "?db=1", "?socket_timeout=3&health_check_interval=2"]),
)
def test_mask_url_hides_any_userinfo_password(user: str, password: str, scheme: str, query: str) -> None:
    # Given a URL with a password (any printable characters, '@' and ':' included) in its userinfo
    url = f"{scheme}://{user}:{password}@cache.internal:6390/0{query}"
    assume(password not in url.replace(f":{password}@", ":@", 1))

    # When it is masked
    masked = mask_url(url)

    # Then the password is gone and the rest stays readable
    assert password not in masked
    assert masked == f"{scheme}://{user}:***@cache.internal:6390/0{query}"


# --- rediss:// ---------------------------------------------------------------------------------------


def test_rediss_urls_are_accepted_and_an_unreachable_one_fails_in_one_line() -> None:
    # Given rediss:// URLs with passwords: the track's pointing nowhere, the queue's elsewhere
    nowhere = f"rediss://:{PASSWORD}@127.0.0.1:1/0"
    queue = f"rediss://worker:{PASSWORD}@cache.internal:6380/1"

    # When settings are made from them, they are accepted, and printed masked
    settings_ = Settings(redis_url=nowhere, rq_url=queue)
    assert settings_.redis_url == nowhere and settings_.queue_url == queue
    assert PASSWORD not in json.dumps(settings_.masked())

    # When the publisher uses one, it raises RedisUnavailable naming the masked URL
    with pytest.raises(RedisUnavailable) as info:
        Publisher.from_url(nowhere, namespace="tls").emit("event", 1, "created")
    assert "rediss://:***@127.0.0.1:1/0" in str(info.value) and PASSWORD not in str(info.value)

    # When the CLI uses it, it exits 1 with one line naming the masked URL (not a validation error)
    result = CliRunner().invoke(main, ["--redis-url", nowhere, "status"])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: cannot reach Redis at rediss://:***@127.0.0.1:1/0: "), result.stderr
    assert result.stderr.count("\n") == 1 and PASSWORD not in result.output
    assert "invalid settings" not in result.output

    # while a URL of another scheme is bad input (exit 2), masked too
    result = CliRunner().invoke(main, ["--redis-url", f"http://:{PASSWORD}@127.0.0.1:1/0", "status"])
    assert result.exit_code == 2 and "invalid settings" in result.output and PASSWORD not in result.output


# --- webhook signatures -------------------------------------------------------------------------------

VERIFY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
secrets_ = st.text(min_size=1, max_size=40)
bodies = st.binary(max_size=300)
NOW = 1_800_000_000


def hmac_key(secret: str) -> bytes:
    """The key HMAC really uses: secrets differing only by trailing NULs are the same key (RFC 2104 padding)."""
    return secret.encode().rstrip(b"\0")


@VERIFY
@given(body=bodies, secret=secrets_, age=st.integers(-300, 300))
def test_verify_accepts_what_sign_made_within_max_age(body: bytes, secret: str, age: int) -> None:
    # Given a body signed with the secret `age` seconds before now (negative: a clock ahead)
    headers = {"Content-Type": "application/json", **sign(body, secret, NOW - age)}

    # When / Then verify accepts it
    verify(body, headers, secret, max_age=300, now=NOW)


@VERIFY
@given(body=bodies, other=bodies, secret=secrets_)
def test_verify_rejects_a_tampered_body(body: bytes, other: bytes, secret: str) -> None:
    # Given a signed body and another body under the same headers
    assume(other != body)
    headers = sign(body, secret, NOW)

    # When / Then verify refuses the other body
    with pytest.raises(SignatureError, match="does not match"):
        verify(other, headers, secret, now=NOW)


@VERIFY
@given(body=bodies, secret=secrets_, wrong=secrets_)
def test_verify_rejects_a_wrong_secret(body: bytes, secret: str, wrong: str) -> None:
    # Given a body signed with one secret
    assume(hmac_key(wrong) != hmac_key(secret))
    headers = sign(body, secret, NOW)

    # When / Then verify with another secret refuses it
    with pytest.raises(SignatureError, match="does not match"):
        verify(body, headers, wrong, now=NOW)


@VERIFY
@given(body=bodies, secret=secrets_, age=st.integers(301, 10**9))
def test_verify_rejects_a_replayed_old_request(body: bytes, secret: str, age: int) -> None:
    # Given a correctly signed request captured `age` seconds ago (more than max_age)
    headers = sign(body, secret, NOW - age)

    # When / Then replaying it now is refused as stale
    with pytest.raises(SignatureError, match="stale or replayed"):
        verify(body, headers, secret, max_age=300, now=NOW)


@VERIFY
@given(body=bodies, secret=secrets_, shift=st.integers(1, 10**6), digit=st.integers(0, 63))
def test_verify_rejects_a_forged_timestamp_or_signature(body: bytes, secret: str, shift: int, digit: int) -> None:
    # Given a signed request whose timestamp was moved (to look fresh) or whose signature was altered
    headers = sign(body, secret, NOW - 1000)
    moved = {**headers, "X-Livesync-Timestamp": str(NOW - 1000 + shift)}
    hexdigest = headers["X-Livesync-Signature"].removeprefix("sha256=")
    flipped = hexdigest[:digit] + format((int(hexdigest[digit], 16) + 1) % 16, "x") + hexdigest[digit + 1 :]
    altered = {**headers, "X-Livesync-Signature": "sha256=" + flipped}

    # When / Then verify refuses both
    with pytest.raises(SignatureError, match="does not match"):
        verify(body, moved, secret, max_age=10**9, now=NOW)
    with pytest.raises(SignatureError, match="does not match"):
        verify(body, altered, secret, max_age=10**9, now=NOW)
