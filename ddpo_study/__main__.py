"""``python -m ddpo_study``: see :mod:`ddpo_study.cli`."""

import sys

from .cli import main

sys.exit(main())
