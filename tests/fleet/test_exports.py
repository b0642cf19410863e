"""The public surface of the ``fleet`` package is deliberate."""

from __future__ import annotations

import subprocess
import sys

import fleet


def test_all_is_pinned_and_resolves() -> None:
    assert fleet.__all__ == [
        "ClientError",
        "FleetClient",
        "FleetHTTPError",
        "FleetProducer",
        "InferResult",
        "Job",
        "LocalStack",
        "ProducerResult",
        "StackConfig",
        "StackError",
        "infer_sync",
    ]
    for name in fleet.__all__:
        assert getattr(fleet, name).__name__ == name


def test_importing_modelgen_does_not_load_the_client() -> None:
    code = "import sys, fleet.demo.modelgen; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
