"""Fenced code blocks of the user docs with the marker comment that precedes each (see docs/README.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console", "zsh"})
MARKER = re.compile(r"^<!--\s*(run|not run):\s*(.*?)\s*-->$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its marker (kind and argument, if any) and its text."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    marker: tuple[str, str] | None
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def user_docs() -> list[Path]:
    """Every markdown page a user reads."""
    pages = [ROOT / "README.md", ROOT / "deploy" / "README.md", ROOT / "examples" / "README.md"]
    return pages + sorted((ROOT / "docs").glob("*.md"))


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of one markdown file (indented fences in list items included)."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening or not opening.group(2):
            i += 1
            continue
        indent, language = opening.group(1), opening.group(2)
        previous = lines[i - 1].strip() if i else ""
        marker = MARKER.match(previous)
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : end])
        found.append(Block(path, i + 1, language, (marker.group(1), marker.group(2)) if marker else None, body))
        i = end + 1
    return found


def marked(name: str) -> list[Block]:
    """Every block of the user docs marked ``<!-- run: name -->``."""
    return [b for page in user_docs() for b in blocks(page) if b.marker == ("run", name)]


def command_lines(block: Block) -> list[str]:
    """The block's commands: comments and trailing comments dropped, continuation lines joined."""
    commands: list[str] = []
    pending = ""
    for raw in block.text.splitlines():
        line = raw if raw.lstrip().startswith(("'", '"')) or pending else raw.split("  #")[0]
        line = line.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pending = f"{pending} {line.strip()}" if pending else line.strip()
        if pending.count("'") % 2 == 0:
            commands.append(pending)
            pending = ""
    assert not pending, f"{block.where}: unterminated quote"
    return commands
