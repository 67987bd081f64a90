"""livesync benchmark: see ``livesync/bench/__init__.py`` for what every figure measures.

The same as ``python -m livesync.bench`` and ``livesync bench``::

    .venv/bin/python scripts/bench.py                 # full run (< 5 minutes on 2 cores)
    .venv/bin/python scripts/bench.py --quick         # CI smoke (< 30 s)
    .venv/bin/python scripts/bench.py --json /tmp/bench.json
    .venv/bin/python scripts/bench.py --profile       # only the 1M agent run (then 5,000 emits) under cProfile
    .venv/bin/python scripts/bench.py --scale         # throughput with 1, 2, 4 worker processes over P = 4
"""

from livesync.bench import main

raise SystemExit(main())
