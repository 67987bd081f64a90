# livesync: one image for the workers, the scheduler, the relay, the dashboard, the metrics and the CLI.
#
#   docker build -t livesync .
#   docker run --rm -e LIVESYNC_REDIS_URL=redis://host:6379/0 livesync livesync status
#
# There is no ENTRYPOINT: a container's command is a whole `livesync ...` (or `rq ...`)
# command line, exactly as docker-compose.yml writes it. Run it with an init process
# (`docker run --init`, `init: true` in compose) so SIGTERM reaches the worker, which
# then shuts down warm: the run in progress ends after its current window is acknowledged.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Metadata first, so the dependency layer is rebuilt only when pyproject.toml changes.
# Extras: dashboard (rq-dashboard) and sql (SQLAlchemy, psycopg, PyMySQL: the relay of the
# outbox and the sql backend).
COPY pyproject.toml README.md ./
COPY livesync ./livesync
RUN pip install '.[dashboard,sql]' \
    && useradd --system --uid 10001 --home-dir /var/lib/livesync --create-home livesync

USER livesync
# Targets of file backends (jsonl) go here; docker-compose.yml mounts a volume on it.
VOLUME ["/var/lib/livesync"]
# rq-dashboard (livesync dashboard) and Prometheus metrics (livesync metrics).
EXPOSE 9181 9468

ENV LIVESYNC_REDIS_URL=redis://redis:6379/0
CMD ["livesync", "--help"]
