"""The minimal Django settings of the Django integration's tests: ``django.conf.settings.configure(**settings(...))``.

Two databases: ``default``, SQLite in a file of the test session, and ``postgresql``,
the machine's server with a schema of the session's own (its ``search_path``), so
parallel sessions do not share the fixed ``livesync_outbox`` table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import make_url


def settings(directory: Path, postgres_url: str, schema: str) -> dict[str, Any]:
    """The settings of a session whose SQLite file lives in ``directory`` and PostgreSQL tables in ``schema``."""
    postgres = make_url(postgres_url)
    return {
        "SECRET_KEY": "livesync tests",
        "INSTALLED_APPS": ["livesync.integrations.django", "integrations.djangoapp"],
        "DATABASES": {
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(directory / "app.db")},
            "postgresql": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": postgres.database,
                "USER": postgres.username or "",
                "PASSWORD": postgres.password or "",
                "HOST": postgres.host or "",
                "PORT": str(postgres.port or ""),
                "OPTIONS": {"options": f"-c search_path={schema}"},
            },
        },
        "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
        "USE_TZ": True,
        "LIVESYNC": {},
    }
