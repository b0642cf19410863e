"""Every environment variable the services read: the documented settings of `fleet config`, plus the few
read outside the settings objects (log level, the CLI's gateway URL)."""

from __future__ import annotations

import importlib

from fleet.cli import SERVICES
from schemas import describe

#: Read directly by the entry points (FLEET_LOG_LEVEL, FLEET_LOG_FORMAT: schemas.logs), the CLI (FLEET_URL) and
#: the gateway client (FLEET_API_KEY: fleet.client).
OUTSIDE_SETTINGS = {"FLEET_LOG_LEVEL", "FLEET_LOG_FORMAT", "FLEET_URL", "FLEET_API_KEY"}


def known_variables() -> set[str]:
    """Names of every FLEET_* variable some service or the CLI understands."""
    names = set(OUTSIDE_SETTINGS)
    for module_name, class_name, prefix in SERVICES.values():
        cls = getattr(importlib.import_module(module_name), class_name)
        names.update(var for var, _, _ in describe(cls, prefix))
    return names
