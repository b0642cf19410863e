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
