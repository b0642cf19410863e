"""``python -m fleet.cli``: the ``fleet`` command."""

import sys

from .main import main

sys.exit(main())
