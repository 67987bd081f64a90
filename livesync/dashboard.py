"""rq-dashboard for livesync's RQ queue: JSON serializer, loopback by default, optional basic auth.

``livesync dashboard`` serves rq-dashboard's Flask blueprint against the Redis of the
RQ queue (``settings.queue_url``) with RQ's JSON serializer, which is how livesync
stores its jobs, so queued, running and failed runs show with their arguments and
tracebacks. Needs the ``dashboard`` extra (``pip install 'livesync[dashboard]'``).

Credentials come only from the environment, read into :class:`Settings` and picked by
:func:`credentials_from_settings`: ``LIVESYNC_DASHBOARD_USERNAME`` and
``LIVESYNC_DASHBOARD_PASSWORD``, else rq-dashboard's own ``RQ_DASHBOARD_USERNAME`` and
``RQ_DASHBOARD_PASSWORD``; never from the command line, where every user of the host
could read them.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from livesync import defaults
from livesync.config import Settings
from livesync.errors import ConfigurationError, DashboardUnavailable
from livesync.signals import stop_on_signals, wait_until
from livesync.urls import mask_url, split_password

if TYPE_CHECKING:
    from flask import Flask
    from werkzeug.serving import BaseWSGIServer

log = logging.getLogger(__name__)

REALM = "livesync RQ dashboard"

#: Environment variables holding the credentials, in order of precedence (pairs).
CREDENTIAL_VARIABLES = (
    ("LIVESYNC_DASHBOARD_USERNAME", "LIVESYNC_DASHBOARD_PASSWORD"),
    ("RQ_DASHBOARD_USERNAME", "RQ_DASHBOARD_PASSWORD"),
)


@dataclass(frozen=True)
class Credentials:
    """HTTP basic auth credentials of the dashboard (the password never shows in a repr)."""

    username: str
    password: str = field(repr=False)

    def check(self, username: str | None, password: str | None) -> bool:
        """Whether the given pair matches, in constant time."""
        if username is None or password is None:
            return False
        same_user = hmac.compare_digest(username.encode(), self.username.encode())
        same_password = hmac.compare_digest(password.encode(), self.password.encode())
        return same_user and same_password


def credentials_from_env(environ: Mapping[str, str]) -> Credentials | None:
    """Basic auth credentials from ``environ`` (variable -> value), or ``None`` when none are set.

    ``LIVESYNC_DASHBOARD_USERNAME`` / ``_PASSWORD`` win over rq-dashboard's
    ``RQ_DASHBOARD_USERNAME`` / ``_PASSWORD``; each pair is taken whole. Half a pair
    raises :class:`ConfigurationError` (an open dashboard by mistake is worse than none).
    """
    for user_var, password_var in CREDENTIAL_VARIABLES:
        username, password = environ.get(user_var) or "", environ.get(password_var) or ""
        if username and password:
            return Credentials(username, password)
        if username or password:
            missing = password_var if username else user_var
            raise ConfigurationError(
                f"dashboard credentials: {user_var if username else password_var} is set but {missing} is not"
            )
    return None


def credentials_from_settings(settings: Settings) -> Credentials | None:
    """Basic auth credentials from the settings' dashboard fields; see :func:`credentials_from_env`.

    The same rules (and messages, naming the variables) as for the environment they
    were read from.
    """
    (user_var, password_var), (rq_user_var, rq_password_var) = CREDENTIAL_VARIABLES
    values = {
        user_var: settings.dashboard_username,
        password_var: settings.dashboard_password,
        rq_user_var: settings.rq_dashboard_username,
        rq_password_var: settings.rq_dashboard_password,
    }
    return credentials_from_env(
        {
            name: value.get_secret_value() if isinstance(value, SecretStr) else value
            for name, value in values.items()
            if value is not None
        }
    )


def create_app(settings: Settings, *, credentials: Credentials | None = None) -> Flask:
    """The Flask app: rq-dashboard's blueprint on ``settings.queue_url``, JSON serializer, optional auth.

    Basic auth guards the whole app (static files included). It is added to this app,
    not to rq-dashboard's shared blueprint as rq-dashboard's own ``make_flask_app``
    does, so apps made in one process do not inherit each other's credentials.
    """
    web = _rq_dashboard_web()  # first: it explains a missing extra
    from flask import Flask, Response, request
    from rq.serializers import JSONSerializer

    # rq-dashboard's templates use both the app's and the blueprint's "static" endpoint, both at /static.
    app = Flask(__name__, static_folder=os.path.join(web.blueprint.root_path, "static"))
    # rq-dashboard shows its URL on every page and masks passwords only up to the first "@":
    # it gets the URL without the password, and the password on its own
    url, password = split_password(settings.queue_url)
    app.config["RQ_DASHBOARD_REDIS_URL"] = url
    app.config["RQ_DASHBOARD_REDIS_PASSWORD"] = password
    # Process-wide in rq-dashboard: every app of this process reads jobs with it.
    web.config.serializer = JSONSerializer
    if credentials is not None:

        @app.before_request
        def require_auth() -> Response | None:
            auth = request.authorization
            if auth is not None and auth.type == "basic" and credentials.check(auth.username, auth.password):
                return None
            return Response("authentication required\n", 401, {"WWW-Authenticate": f'Basic realm="{REALM}"'})

    app.register_blueprint(web.blueprint)
    # rq-dashboard 0.9.0 lists workers with RQ's default (pickle) serializer, so workers.json
    # fails with a 500 while any worker runs a JSON job; this app lists them with JSON instead.
    endpoint = f"{web.blueprint.name}.list_workers"
    if endpoint in app.view_functions:
        app.view_functions[endpoint] = web.jsonify(_list_workers(web))
    web.setup_rq_connection(app)
    return app


def _list_workers(web: Any) -> Callable[[int], dict[str, Any]]:
    """rq-dashboard's ``workers.json`` view, reading the workers' current jobs with the JSON serializer."""
    from flask import current_app
    from rq import Worker
    from rq.serializers import JSONSerializer

    def list_workers(instance_number: int) -> dict[str, Any]:
        connection = getattr(current_app, "redis_conn")  # noqa: B009 - set by rq-dashboard
        workers = [
            {
                "name": worker.name,
                "pid": worker.pid,
                "queues": [queue.name for queue in worker.queues],
                "state": str(worker.get_state()),
                "current_job": _current_job(web, worker),
                "last_heartbeat": worker.last_heartbeat,
                "birth_date": worker.birth_date,
                "successful_job_count": worker.successful_job_count,
                "failed_job_count": worker.failed_job_count,
                "total_working_time": worker.total_working_time,
                "version": getattr(worker, "version", ""),
                "python_version": getattr(worker, "python_version", ""),
            }
            for worker in Worker.all(connection=connection, serializer=JSONSerializer)
        ]
        workers.sort(key=lambda w: (w["state"], w["queues"], w["name"]))
        return {"workers": workers}

    return list_workers


def _current_job(web: Any, worker: Any) -> Any:
    """What rq-dashboard shows of a worker's current job; a job it cannot decode still shows its id."""
    from rq.exceptions import DeserializationError, NoSuchJobError

    try:
        return web.serialize_current_job(worker.get_current_job())
    except (DeserializationError, NoSuchJobError):  # a pickled job of another application, or just deleted
        job_id = worker.get_current_job_id()
        return {"job_id": job_id, "description": None, "created_at": None, "call_string": job_id}


def make_dashboard_server(
    settings: Settings,
    host: str = defaults.DASHBOARD_HOST,
    port: int = defaults.DASHBOARD_PORT,
    *,
    credentials: Credentials | None = None,
) -> BaseWSGIServer:
    """A threaded werkzeug server of :func:`create_app`, bound but not serving yet (port 0: any free port)."""
    from werkzeug.serving import make_server

    return make_server(host, port, create_app(settings, credentials=credentials), threaded=True)


def server_url(server: BaseWSGIServer) -> str:
    """The http URL a server listens on."""
    host = str(server.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{server.port}/"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    settings: Settings,
    host: str = defaults.DASHBOARD_HOST,
    port: int = defaults.DASHBOARD_PORT,
    *,
    credentials: Credentials | None = None,
    stop: threading.Event | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the dashboard until SIGINT or SIGTERM (or until ``stop`` is set), then shut down.

    ``announce`` receives the start-up line (URL, queue, masked Redis URL, whether auth
    is on); without it the line is logged.
    """
    with stop_on_signals(stop) as stopped:
        server = make_dashboard_server(settings, host, port, credentials=credentials)
        thread = threading.Thread(target=server.serve_forever, name="livesync-dashboard", daemon=True)
        thread.start()
        try:
            auth = f"basic auth as {credentials.username!r}" if credentials else "no authentication"
            where = f"queue {settings.queue} on {mask_url(settings.queue_url)}"
            (announce or log.info)(f"rq-dashboard at {server_url(server)} ({where}, {auth})")
            if credentials is None and not is_loopback(host):
                log.warning(
                    "%s is not a loopback address and no credentials are set: anyone who can reach this port can "
                    "see job arguments and delete or requeue jobs (set LIVESYNC_DASHBOARD_USERNAME and "
                    "LIVESYNC_DASHBOARD_PASSWORD)",
                    host,
                )
            wait_until(stopped)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def check_available() -> None:
    """Raise :class:`DashboardUnavailable` when the ``dashboard`` extra is not installed."""
    _rq_dashboard_web()


def _rq_dashboard_web() -> Any:
    """``rq_dashboard.web``, or :class:`DashboardUnavailable` naming the missing extra.

    rq-dashboard 0.9.0 imports ``six`` without declaring it; the ``dashboard`` extra
    of livesync depends on six for that reason.
    """
    return _import_web()


def _import_web() -> Any:
    try:
        from rq_dashboard import web
    except ImportError as exc:
        raise DashboardUnavailable(
            f"the dashboard needs rq-dashboard and flask: pip install 'livesync[dashboard]' ({exc})"
        ) from exc
    return web
