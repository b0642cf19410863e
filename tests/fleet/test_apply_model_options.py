"""`fleet models apply` entries carry what the register flags --trust, --task and --option carry."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.models.apply import parse_entry
from schemas import SchemaError

BASE = Path("/models")


def test_trust_task_and_options_are_read_as_the_flags_are() -> None:
    raw = {"name": "m", "version": 1, "artifact": "m.skops", "trust": ["pkg.mod.double"], "task": "feature-extraction",
           "options": {"pooling": "cls", "normalize": True, "max_length": 128}}  # fmt: skip
    entry = parse_entry(raw, index=1, source="a", base=BASE)
    assert entry.trust == ("pkg.mod.double",) and entry.task == "feature-extraction"
    assert entry.options == {"pooling": "cls", "normalize": "true", "max_length": "128"}
    single = {"name": "m", "version": 1, "artifact": "m.skops", "trust": "a.B"}
    one = parse_entry(single, index=1, source="a", base=BASE)
    assert one.trust == ("a.B",) and one.options == {} and one.task is None


@pytest.mark.parametrize(
    ("extra", "why"),
    [({"trust": [1]}, "'trust' must be a type name or a list"), ({"options": ["x"]}, "'options' must be a mapping")],
)
def test_bad_trust_or_options_are_refused(extra: dict[str, object], why: str) -> None:
    with pytest.raises(SchemaError, match=why):
        parse_entry({"name": "m", "version": 1, "artifact": "m.onnx", **extra}, index=1, source="a", base=BASE)
