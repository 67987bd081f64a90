"""``python -m livesync``: the same as the ``livesync`` command."""

from livesync.cli import run

run()
