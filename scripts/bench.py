"""livesync benchmark: the one entry point of ``benchmarks/`` (see ``benchmarks/__init__.py``).

The benchmark lives in the source checkout, outside the installed package; ``livesync
bench`` runs it from a checkout too::

    .venv/bin/python scripts/bench.py                 # full run (< 5 minutes on 2 cores)
    .venv/bin/python scripts/bench.py --quick         # CI smoke (< 30 s)
    .venv/bin/python scripts/bench.py --json /tmp/bench.json
    .venv/bin/python scripts/bench.py --profile       # only the 1M agent run (then 5,000 emits) under cProfile
    .venv/bin/python scripts/bench.py --scale         # throughput with 1, 2, 4 worker processes over P = 4
    .venv/bin/python scripts/bench.py --targets opensearch   # records/s into real targets vs their bulk clients
"""

import sys
from pathlib import Path

CHECKOUT = str(Path(__file__).resolve().parents[1])
if CHECKOUT not in sys.path:  # run as a file, sys.path[0] is scripts/: the harness sits next to it
    sys.path.insert(0, CHECKOUT)

from benchmarks import main  # noqa: E402 - needs the checkout on sys.path

raise SystemExit(main())
