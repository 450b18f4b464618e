"""User models (`module:factory`) made for hostile tests.

`tests.support.hostile_models:counter` reads the frame index a `tests.support.media.counter_video` frame shows,
so a clip's top-1 label says exactly which frame the job put at `clip_start_s`.
`tests.support.hostile_models:../../../../escape` is a model whose *name* and labels try to climb out of the
output prefix (an attribute name may hold any characters; getattr finds it).
"""

from __future__ import annotations

import torch
from torch import nn

from tests.support.media import BITS

COUNTER_LABELS = [str(i) for i in range(1 << BITS)]
# Resolved as a path below <out>/clips/model=..., four ".." climb out of the output prefix.
ESCAPE_NAME = "tests.support.hostile_models:" + "../" * 4 + "escape"
ESCAPE_LABELS = [
    "../../escape",
    "..",
    "/etc/passwd",
    "a/b\\c",
    "%2e%2e%2f",
    "model=x/date=y",
    "ü n",
]


class CounterReader(nn.Module):
    """Logits one-hot on the index shown by the first frame of each clip (stripes -> bits)."""

    def forward(self, clips: torch.Tensor) -> torch.Tensor:  # (B, T, 3, H, W) in [0, 1]
        profile = clips[:, 0].mean(dim=(1, 2))  # (B, W): column brightness
        width = profile.shape[1]
        edges = torch.linspace(0, width, BITS + 1).long().tolist()
        value = torch.zeros(profile.shape[0], dtype=torch.long)
        for bit in range(BITS):
            lo, hi = edges[bit] + 1, max(edges[bit] + 2, edges[bit + 1] - 1)
            value |= (profile[:, lo:hi].mean(dim=1) > 0.5).long() << bit
        return nn.functional.one_hot(value, len(COUNTER_LABELS)).float() * 50


def counter() -> tuple[nn.Module, dict]:
    meta = {
        "labels": COUNTER_LABELS,
        "clip": {"frames": 2, "fps": 2.0, "size": 96},
        "mean": [0.0] * 3,
        "std": [1.0] * 3,
        "version": "counter-1",
    }
    return CounterReader(), meta


class _Constant(nn.Module):
    """Always the first label, whatever the clip."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.arange(classes, 0, -1).float())

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(clips.shape[0], -1)


def _escape() -> tuple[nn.Module, dict]:
    meta = {"labels": ESCAPE_LABELS, "clip": {"frames": 2, "fps": 1.0, "size": 16}}
    return _Constant(len(ESCAPE_LABELS)), meta


globals()[ESCAPE_NAME.partition(":")[2]] = _escape
