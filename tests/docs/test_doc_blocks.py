"""Every shell block of the user docs runs in a test or says why not; the docs hold no project history."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .markdown_blocks import ROOT, SHELL_LANGUAGES, Block, blocks, marked, user_docs

#: `<!-- run: NAME -->` names and the test module that runs those blocks.
RUNNERS = {
    "tour-up": "test_tour.py",
    "tour": "test_tour.py",
    "tour-python": "test_tour.py",
    "tour-down": "test_tour.py",
    "examples": "test_examples.py",
}

HISTORY = [
    (re.compile(r"\bissues?\s*#?\d+", re.I), "an issue number"),
    (re.compile(r"\bat commit\b|\bcommit `?[0-9a-f]{7,40}\b", re.I), "a commit"),
    (re.compile(r"`(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}`"), "a commit hash"),
    (re.compile(r"late evening|other agents|this session|lab notebook", re.I), "session talk"),
    (re.compile(r"\bre-?measur|\bre-?run at\b", re.I), "a re-measurement story"),
    (re.compile(r"^#+\s*Status\b", re.M), "a Status section"),
]


def all_blocks() -> list[Block]:
    return [block for page in user_docs() for block in blocks(page)]


def test_the_docs_have_blocks_of_each_kind() -> None:
    found = all_blocks()
    assert len(user_docs()) >= 10
    assert {b.marker[0] for b in found if b.marker} == {"run", "not run"}


@pytest.mark.parametrize("page", user_docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shell_block_runs_or_says_why_not(page: Path) -> None:
    for block in blocks(page):
        if block.language not in SHELL_LANGUAGES and block.marker is None:
            continue
        assert block.marker is not None, (
            f"{block.where}: mark the block `<!-- run: NAME -->` (a test runs it) or `<!-- not run: REASON -->`"
        )
        kind, argument = block.marker
        assert argument, f"{block.where}: `{kind}:` needs a {'name' if kind == 'run' else 'reason'}"
        if kind == "run":
            assert argument in RUNNERS, f"{block.where}: no test runs blocks named {argument!r}"


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_each_run_name_is_used_and_its_runner_reads_it(name: str) -> None:
    assert marked(name), f"no block is marked `run: {name}`"
    runner = (Path(__file__).parent / RUNNERS[name]).read_text()
    assert "marked(" in runner and (f'"{name}"' in runner or name == "examples" and 'marked("examples")' in runner)


@pytest.mark.parametrize("page", user_docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_project_history_in_user_docs(page: Path) -> None:
    text = page.read_text()
    for pattern, what in HISTORY:
        found = pattern.search(text)
        assert found is None, f"{page.relative_to(ROOT)}: {what}: {found.group(0)!r} (history goes to CHANGELOG.md)"


def test_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_local_links_point_at_files() -> None:
    link = re.compile(r"\]\(((?!https?://|#)[^)#\s]+)(?:#[^)]*)?\)")
    for page in user_docs():
        for target in link.findall(page.read_text()):
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: broken link {target}"
