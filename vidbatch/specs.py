"""Sampling specs shared by decoding, models and planning."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClipSpec:
    """What a clip classifier sees: `frames` frames sampled at `fps`, resized to size x size."""

    frames: int = 16
    fps: float = 8.0
    size: int = 112

    @property
    def seconds(self) -> float:
        return self.frames / self.fps


@dataclass(frozen=True)
class FrameSpec:
    """What a detector sees: single frames at `fps`, longer side resized to `size`."""

    fps: float = 1.0
    size: int = 320
