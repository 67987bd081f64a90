"""``python -m livesync.bench``: the benchmark (the same as ``scripts/bench.py`` and ``livesync bench``)."""

from livesync.bench import main

raise SystemExit(main())
