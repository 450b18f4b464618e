"""Sampling specs shared by decoding, models and planning."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClipSpec:
    """What a clip classifier sees: `frames` frames sampled at `fps`, size x size pixels.

    Without `resize` each frame is scaled to size x size (vidbatch's own models were trained
    so). With `resize` = (height, width) each frame is scaled to that, then the centre
    size x size is cut out: torchvision's video weights were trained with Resize((128, 171))
    then CenterCrop(112), and squashing instead changes what they see.
    """

    frames: int = 16
    fps: float = 8.0
    size: int = 112
    resize: tuple[int, int] | None = None

    @property
    def seconds(self) -> float:
        return self.frames / self.fps


@dataclass(frozen=True)
class FrameSpec:
    """What a detector sees: single frames at `fps`, longer side resized to `size`.

    `max_offset_s` (keyframes mode only): a sample may be the latest keyframe when that
    keyframe is at most this far before the requested time; otherwise the decoder goes on to
    the exact frame. 0 means always exact; None means always the keyframe.
    """

    fps: float = 1.0
    size: int = 320
    max_offset_s: float | None = None


@dataclass(frozen=True)
class ShotSpec:
    """What a shot-boundary model sees: every frame, scaled to width x height (aspect not kept;
    TransNetV2 takes 48 x 27)."""

    width: int = 48
    height: int = 27
