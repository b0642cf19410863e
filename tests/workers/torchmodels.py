"""A tiny torch module for the Framework.TORCH checkpoint test (imported by ``module:function``)."""

from __future__ import annotations

from typing import Any

import torch


class TwoHeads(torch.nn.Module):
    """x[-1,4] -> (x @ W, sum of x) : a tuple of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: Any) -> Any:
        return self.linear(x), x.sum(dim=1, keepdim=True)


def two_heads() -> TwoHeads:
    """The factory named in the record."""
    return TwoHeads()


class Flaky(torch.nn.Module):
    """x[-1,4] -> y[-1,3] that raises on its first ``fails`` batches (a buffer: the checkpoint sets it).

    ``permanent`` = 1 raises ValueError (an input-shaped error, never retried) instead of RuntimeError.
    """

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.register_buffer("fails", torch.zeros((), dtype=torch.int64))
        self.register_buffer("permanent", torch.zeros((), dtype=torch.int64))
        self.calls = 0

    def forward(self, x: Any) -> Any:
        self.calls += 1
        if self.calls <= int(self.fails):
            kind = ValueError if int(self.permanent) else RuntimeError
            raise kind(f"failure {self.calls} of {int(self.fails)}")
        return self.linear(x)


def flaky() -> Flaky:
    """The factory named in the record."""
    return Flaky()


class Poison(torch.nn.Module):
    """x[-1,4] -> y[-1,3] that raises ValueError (permanent) for a whole batch when any row starts negative."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: Any) -> Any:
        if bool((x[:, 0] < 0).any()):
            raise ValueError("a row starts with a negative number")
        return self.linear(x)


def poison() -> Poison:
    """The factory named in the record."""
    return Poison()
