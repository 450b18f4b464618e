"""A user's own model, defined outside vidbatch, loaded by name as `tests.support.custom_model:build`."""

from __future__ import annotations

import torch
from torch import nn

LABELS = ["dark", "bright"]


class Brightness(nn.Module):
    """Scores a clip by its mean brightness: tiny, deterministic, and obviously not vidbatch's."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:  # (B, T, 3, H, W), normalized
        level = clips.mean(dim=(1, 2, 3, 4))
        return torch.stack([-level, level], dim=1) * self.scale


def build() -> tuple[nn.Module, dict]:
    meta = {"labels": LABELS, "clip": {"frames": 4, "fps": 2.0, "size": 32}, "mean": [0.5] * 3, "std": [0.25] * 3}
    return Brightness(), meta
