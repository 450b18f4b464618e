"""A user's own models, defined outside vidbatch, loaded by name as
`tests.support.custom_model:<factory>` (one factory per task)."""

from __future__ import annotations

import time

import torch
from torch import nn

LABELS = ["dark", "bright"]
BUILDS = {"detector": 0}  # how often build_detector ran: describing a model must not build it


class Brightness(nn.Module):
    """Scores a clip by its mean brightness: tiny, deterministic, and obviously not vidbatch's."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:  # (B, T, 3, H, W), normalized
        level = clips.mean(dim=(1, 2, 3, 4))
        return torch.stack([-level, level], dim=1) * self.scale


def build() -> tuple[nn.Module, dict]:
    meta = {
        "labels": LABELS,
        "clip": {"frames": 4, "fps": 2.0, "size": 32},
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
    }
    return Brightness(), meta


class SlowBrightness(Brightness):
    """Brightness taking a quarter second per forward pass: a fault test can catch the
    inference worker at work whatever the machine's speed."""

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        time.sleep(0.25)
        return super().forward(clips)


def build_slow() -> tuple[nn.Module, dict]:
    _, meta = build()
    return SlowBrightness(), {**meta, "version": "slow-1"}


def build_detector() -> tuple[nn.Module, dict]:
    """A real detector architecture (torchvision FCOS on a small CNN + FPN), as a user would
    write one; it takes the shipped synth-detector's weights file as its own."""
    from vidbatch.models.detection import synth_detector

    BUILDS["detector"] += 1
    return synth_detector(num_classes=3), dict(build_detector.metadata)


# Declared on the factory: the driver learns task, labels and input without building it.
build_detector.metadata = {
    "task": "detect",
    "labels": ["circle", "square", "triangle"],
    "frame": {"size": 160},
    "version": "fcos-tiny-1",
}


class FrameChange(nn.Module):
    """Transition logits from the change to the next frame: high on a shot's last frame."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(40.0))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # uint8 (B, T, H, W, 3)
        x = frames.float() / 255.0
        change = (x[:, 1:] - x[:, :-1]).abs().mean(dim=(2, 3, 4))
        change = torch.cat([change, torch.zeros_like(change[:, :1])], dim=1)
        return (change - 0.1) * self.gain


def build_shots() -> tuple[nn.Module, dict]:
    meta = {"task": "shots", "shot": {"width": 16, "height": 9}, "window": 20, "context_frames": 5}
    return FrameChange(), meta
