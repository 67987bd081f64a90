"""The ``rq`` floor in ``pyproject.toml`` is the first release with every RQ API livesync uses.

RQ added its cron API over several 2.x releases; ``rq>=2.0`` installed releases on which
``livesync.scheduler`` does not even import. The table below says which release
introduced each name livesync uses beyond rq 2.0 (read from the wheels of rq 2.0.0 to
3.0.0); the floor must be at least the newest of them, the installed rq must have them
all, and a new ``from rq... import`` in livesync must be added to the table first.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent

#: RQ names livesync uses that rq 2.0.0 lacks, with the release that introduced each.
INTRODUCED = {
    "rq.cron": "2.4.0",  # the module; `rq cron -c ... livesync.rqconfig.cron` and rq.cron.register
    "rq.cron.register": "2.4.0",
    "rq.cron.CronJob": "2.4.0",
    "rq.cron.CronScheduler": "2.4.0",
    "rq.cron.CronJob.job_history_key": "2.11.0",
    "rq.defaults.DEFAULT_CRON_JOB_HISTORY_LIMIT": "2.11.0",
    "rq.defaults.DEFAULT_CRON_JOB_HISTORY_TTL": "2.11.0",
    "rq.cron_job_registry": "2.12.0",  # JsonCronJob.enqueue records its runs like CronJob.enqueue
    "rq.cron_job_registry.add": "2.12.0",
    "rq.exceptions.StopRequested": "2.6.0",  # the scheduler's reconnecting loop ends on it
    "rq.exceptions.SchedulerNotFound": "2.6.0",  # the scheduler's unregistering after an outage
}

#: Keyword arguments livesync passes to RQ, with the release that accepts each.
KEYWORDS = {
    ("rq.cron.CronJob", "name"): "2.11.0",  # register_ticks names each tick livesync-tick-<namespace>
    ("rq.cron_job_registry.add", "enqueue_timestamp"): "2.12.0",
    # LiveSyncWorker overrides perform_job and fails refused jobs through handle_job_failure
    ("rq.worker.BaseWorker.perform_job", "execution"): "3.0.0",
    ("rq.worker.BaseWorker.handle_job_failure", "execution"): "3.0.0",
}

#: Names livesync imports from rq that rq 2.0.0 already has.
SINCE_2_0 = {
    "rq.Queue",
    "rq.Retry",
    "rq.SimpleWorker",
    "rq.Worker",
    "rq.exceptions.DeserializationError",
    "rq.exceptions.NoSuchJobError",
    "rq.job.Job",
    "rq.job.JobStatus",
    "rq.registry.FailedJobRegistry",
    "rq.registry.ScheduledJobRegistry",
    "rq.registry.StartedJobRegistry",
    "rq.serializers.JSONSerializer",
    "rq.executions.Execution",  # LiveSyncWorker.perform_job(job, queue, execution)
    "rq.utils.now",
    "rq.worker.BaseWorker",
}


def rq_requirement() -> Requirement:
    """The ``rq`` requirement of the project's dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    [requirement] = [Requirement(text) for text in project["dependencies"] if Requirement(text).name == "rq"]
    return requirement


def floor(requirement: Requirement) -> Version:
    """The lowest version a ``>=`` specifier allows."""
    [lowest] = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    return lowest


def resolve(dotted: str) -> Any:
    """The object at ``dotted``: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)
        return found
    raise ImportError(dotted)


def rq_imports() -> set[str]:
    """Every ``module.name`` livesync and the workers config import from rq."""
    found: set[str] = set()
    for path in [*(ROOT / "livesync").rglob("*.py"), *(ROOT / "workers").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rq":
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "rq")
    return found


def test_rq_floor_is_the_first_release_with_every_api_livesync_uses() -> None:
    # Given the release that introduced each RQ name and keyword livesync uses
    newest = max(Version(version) for version in [*INTRODUCED.values(), *KEYWORDS.values()])
    # When the floor is read from pyproject.toml
    lowest = floor(rq_requirement())
    # Then no release it allows lacks one of them
    assert lowest >= newest, f"pyproject.toml allows rq {lowest}, but livesync needs rq {newest}"


def test_installed_rq_satisfies_the_floor() -> None:
    requirement = rq_requirement()
    assert requirement.specifier.contains(metadata.version("rq"), prereleases=True)


@pytest.mark.parametrize("dotted", sorted(INTRODUCED) + sorted(SINCE_2_0))
def test_installed_rq_has_each_name_livesync_uses(dotted: str) -> None:
    assert resolve(dotted) is not None


@pytest.mark.parametrize(("dotted", "keyword"), sorted(KEYWORDS))
def test_installed_rq_accepts_each_keyword_livesync_passes(dotted: str, keyword: str) -> None:
    assert keyword in inspect.signature(resolve(dotted)).parameters


def test_every_rq_import_of_livesync_is_in_the_floor_table() -> None:
    # Given every name livesync imports from rq
    imported = rq_imports()
    # Then each is known: introduced at a listed release, or present since rq 2.0
    unknown = imported - set(INTRODUCED) - SINCE_2_0
    assert not unknown, f"add these to INTRODUCED (with the rq release that added them) or SINCE_2_0: {unknown}"
