"""``fleet models ...`` against the session's real broker and Redis, driven through ``main``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from fleet.demo.modelgen import tiny_mlp
from fleet.local.servers import free_port
from schemas import FleetSettings, ModelRegistry, Names
from tests.fileserver import serve_folder

from .cli_util import connection_args
from .cli_util import run_fleet as fleet

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet_args(fleet_settings: FleetSettings, tmp_path: Path, redis_client: Any) -> list[str]:
    """Connection flags for the test's namespace (redis_client cleans its keys afterwards)."""
    return connection_args(fleet_settings, tmp_path / "home")


async def test_register_list_show_set_default_remove(
    fleet_args: list[str], fleet_settings: FleetSettings, names: Names, tmp_path: Path, redis_client: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    a, b = tiny_mlp(tmp_path / "a.onnx", seed=1), tiny_mlp(tmp_path / "b.onnx", seed=2)
    np.savez(tmp_path / "ex.npz", x=np.ones((2, 16), np.float32))

    code, out, _ = await fleet(
        capsys, "models", "register", "tiny", "--artifact", str(a), "--label", "team=ml", "--partitions", "2",
        "--example", str(tmp_path / "ex.npz"), *fleet_args,
    )  # fmt: skip
    assert code == 0, out
    assert "registered: tiny version 1 (onnx, default 1)" in out
    assert "x:FP32[-1, 16]" in out and "y:FP32[-1, 4]" in out

    code, out, _ = await fleet(
        capsys, "models", "register", "tiny", "--artifact", str(b), "--max-batch-size", "8", *fleet_args
    )
    assert code == 0 and "version 2 (onnx, default 1)" in out

    code, out, _ = await fleet(capsys, "models", "list", *fleet_args)
    assert code == 0
    assert out.splitlines()[0].split() == ["MODEL", "DEFAULT", "VERSIONS", "FRAMEWORK", "INPUTS", "OUTPUTS"]
    assert out.splitlines()[1].split()[:4] == ["tiny", "1", "1,2", "onnx"]

    code, out, _ = await fleet(capsys, "models", "show", "tiny", "--version", "2", *fleet_args)
    shown = json.loads(out)
    assert shown["version"] == "2" and shown["default"] is False
    assert shown["batching"]["max_batch_size"] == 8
    assert shown["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    code, out, _ = await fleet(capsys, "models", "show", "tiny", *fleet_args)
    shown = json.loads(out)
    assert shown["labels"] == {"team": "ml"} and shown["example"] == [
        {"name": "x", "datatype": "FP32", "shape": [2, 16]}
    ]

    assert (await fleet(capsys, "models", "set-default", "tiny", "2", *fleet_args))[0] == 0
    registry = ModelRegistry(redis_client, names)
    assert await registry.default_version("tiny") == "2"

    code, _, err = await fleet(capsys, "models", "remove", "tiny", "--version", "2", *fleet_args)
    assert code == 1 and "is the default" in err and "Traceback" not in err
    code, out, _ = await fleet(capsys, "models", "remove", "tiny", "--version", "1", *fleet_args)
    assert code == 0 and "removed tiny version(s) 1" in out
    assert await registry.versions("tiny") == ["2"]

    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    try:
        (topic,) = await admin.describe_topics([names.request_topic("tiny")])
        assert len(topic["partitions"]) == 2
    finally:
        await admin.close()

    code, out, _ = await fleet(capsys, "models", "remove", "tiny", *fleet_args)
    assert code == 0
    code, out, _ = await fleet(capsys, "models", "list", *fleet_args)
    assert "no models registered" in out


async def test_versions_are_immutable(
    fleet_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tiny_mlp(tmp_path / "a.onnx", seed=1), tiny_mlp(tmp_path / "b.onnx", seed=2)
    assert (await fleet(capsys, "models", "register", "m", "--artifact", str(a), "--version", "7", *fleet_args))[0] == 0
    code, out, _ = await fleet(capsys, "models", "register", "m", "--artifact", str(a), "--version", "7", *fleet_args)
    assert code == 0 and "already registered (identical)" in out
    code, _, err = await fleet(capsys, "models", "register", "m", "--artifact", str(b), "--version", "7", *fleet_args)
    assert code == 1
    assert err.startswith("fleet: error:") and "immutable" in err and len(err.strip().splitlines()) == 1


async def test_errors_are_one_line(fleet_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await fleet(capsys, "models", "show", "nope", *fleet_args)
    assert (code, err.strip()) == (1, "fleet: error: unknown model 'nope'")
    code, _, err = await fleet(
        capsys, "models", "register", "m", "--artifact", str(tmp_path / "missing.onnx"), *fleet_args
    )
    assert code == 1 and "does not exist" in err
    artifact = str(tiny_mlp(tmp_path / "capped.onnx"))
    code, _, err = await fleet(
        capsys, "models", "register", "m", "--artifact", artifact, "--label", "gpus=x", *fleet_args
    )
    assert (code, err.strip()) == (1, "fleet: error: label gpus='x' must be a comma list of GPU indices (0,1)")
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    code, _, err = await fleet(capsys, "models", "list", "--redis", dead_redis, "--home", str(tmp_path))
    assert code == 1 and err.startswith("fleet: error:") and len(err.strip().splitlines()) == 1


async def test_verify_reports_fail_when_the_gateway_is_unreachable(
    fleet_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = tiny_mlp(tmp_path / "a.onnx")
    assert (await fleet(capsys, "models", "register", "m", "--artifact", str(a), *fleet_args))[0] == 0
    url = f"http://127.0.0.1:{free_port()}"
    code, out, _ = await fleet(capsys, "models", "verify", "m", "--url", url, *fleet_args)
    assert code == 1
    assert out.startswith("FAIL m v1") and "cannot reach the gateway" in out


async def test_register_by_url_keeps_the_url_and_a_bad_url_is_a_clear_error(
    fleet_args: list[str], names: Names, redis_client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    tiny_mlp(served / "m.onnx")
    with serve_folder(served) as base:
        code, out, err = await fleet(capsys, "models", "register", "web", "--artifact", f"{base}/m.onnx", *fleet_args)
        assert code == 0, out + err
        assert (await ModelRegistry(redis_client, names).get("web")).artifact == f"{base}/m.onnx"
        code, out, err = await fleet(
            capsys, "models", "register", "web", "--artifact", f"{base}/missing.onnx", *fleet_args
        )
    assert code != 0 and "missing.onnx: HTTP 404" in err
    assert await ModelRegistry(redis_client, names).versions("web") == ["1"]


async def test_register_refuses_what_cannot_serve_in_one_line(
    fleet_args: list[str], names: Names, redis_client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    code, _, err = await fleet(capsys, "models", "register", "m", "--artifact", str(junk), *fleet_args)
    assert code == 1 and err.startswith("fleet: error: junk.onnx is not an ONNX model")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    tiny = str(tiny_mlp(tmp_path / "tiny.onnx"))
    code, _, err = await fleet(
        capsys, "models", "register", "m", "--artifact", tiny, "--input", "x:FP32:-1,15", *fleet_args
    )
    assert (code, err.strip()) == (
        1, "fleet: error: --input x:FP32[-1, 15]: the ONNX file fixes dimension 1 at 16 (x:FP32[-1, 16])"
    )  # fmt: skip
    torch = pytest.importorskip("torch")
    state = tmp_path / "weights.pth"
    torch.save(torch.nn.Linear(4, 2).state_dict(), str(state))
    code, _, err = await fleet(
        capsys, "models", "register", "m", "--artifact", str(state), "--input", "x:FP32:-1,4",
        "--output", "y:FP32:-1,2", *fleet_args,
    )  # fmt: skip
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "weights.pth is a torch checkpoint" in err and "--framework torch --factory" in err
    assert await ModelRegistry(redis_client, names).versions("m") == []
