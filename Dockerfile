# livesync: one image for workers, the scheduler, the dashboard and the CLI.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY livesync ./livesync
COPY workers ./workers
RUN pip install --no-cache-dir '.[dashboard]'
ENV LIVESYNC_REDIS_URL=redis://redis:6379/0
ENTRYPOINT ["livesync"]
CMD ["--help"]
