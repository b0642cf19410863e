"""The ``fleet`` command: :mod:`.main` parses and dispatches; one module per command group.

``fleet.cli:main`` (the console script) and ``python -m fleet.cli`` keep working.
"""

from __future__ import annotations

from .main import SERVICES, build_parser, main

__all__ = ["SERVICES", "build_parser", "main"]
