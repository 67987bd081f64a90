"""``python -m examples.events_app``: see :mod:`examples.events_app.run`."""

import sys

from examples.events_app.run import main

sys.exit(main())
