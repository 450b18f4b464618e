"""Shot boundaries: a loaded shot model (`ShotDetector`) and the rule that turns its per-frame
transition probabilities into shots (`shots_from_probabilities`).

A shot model sees every frame at its `ShotSpec` size and scores each frame with the
probability that a transition (cut, dissolve, fade) happens at it. It runs in overlapping
windows: each window of `window` frames scores only its middle `window - 2 * context_frames`
frames, so every scored frame has at least `context_frames` frames of real context on each
side (the video's first and last frames are repeated where the video has none). A caller that
scores a range of frames therefore gives the model `context_frames` extra frames on each side
of the range and keeps the probabilities of the range only: the range is then scored as well
as the middle of a video is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from vidbatch.models.common import to_device
from vidbatch.models.loaded import LoadedModel
from vidbatch.specs import ShotSpec

DEFAULT_THRESHOLD = 0.5  # TransNetV2's own


class ShotDetector(LoadedModel):
    """Every frame in, per-frame transition probabilities out; windowing and batching inside.

    The module takes uint8 (B, window, height, width, 3) RGB windows and returns logits
    (B, window) (or (B, window, 1)); a sigmoid makes them probabilities.
    """

    task = "shots"
    batch_sizes = (32, 4)  # windows (of `window` frames) per forward pass: CUDA, CPU

    def __init__(
        self,
        *,
        module: nn.Module,
        spec: ShotSpec,
        window: int,
        context_frames: int,
        **identity: Any,
    ) -> None:
        super().__init__(**identity)
        if window - 2 * context_frames < 1:
            raise ValueError(
                f"model {self.name!r}: a window of {window} frames leaves nothing to score "
                f"with {context_frames} frames of context on each side"
            )
        self.spec = spec
        self.window = window
        self.context_frames = context_frames
        self.module = module.to(self.device).eval()

    @property
    def step(self) -> int:
        """Frames scored per window (and the stride between windows)."""
        return self.window - 2 * self.context_frames

    def __repr__(self) -> str:
        return (
            f"ShotDetector({self.name!r}, family={self.family!r}, version={self.version!r}, "
            f"spec={self.spec}, window={self.window}, context_frames={self.context_frames}, "
            f"device={str(self.device)!r})"
        )

    def predict(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (N, height, width, 3) RGB, every frame in order -> float32 (N,) probabilities
        that a transition happens at each frame."""
        frames = np.asarray(frames)
        expected = (self.spec.height, self.spec.width, 3)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != expected:
            raise ValueError(
                f"model {self.name!r} expects uint8 frames (N, {', '.join(map(str, expected))}), "
                f"got {frames.dtype} {frames.shape}"
            )
        n = len(frames)
        if n == 0:
            return np.empty(0, np.float32)
        if not frames.flags.writeable:
            frames = np.array(frames)  # read-only buffers (np.frombuffer, Ray objects): torch warns
        # As TransNetV2's reference inference: pad with copies of the first and last frame so
        # the windows tile the frames exactly, `step` scored frames per window.
        ctx, step = self.context_frames, self.step
        tail = ctx + step - (n % step or step)
        padded = to_device(frames, self.device)
        padded = torch.cat(
            [padded[:1].expand(ctx, *expected), padded, padded[-1:].expand(tail, *expected)]
        )
        starts = range(0, len(padded) - self.window + 1, step)
        out = []
        with torch.inference_mode():
            for i in range(0, len(starts), self.batch_size):
                batch = torch.stack(
                    [padded[s : s + self.window] for s in starts[i : i + self.batch_size]]
                )
                logits = self.module(batch).float().reshape(len(batch), self.window)
                out.append(logits[:, ctx : ctx + step].sigmoid().reshape(-1).cpu())
        return torch.cat(out)[:n].numpy().astype(np.float32)


class Shot(NamedTuple):
    """One shot: [start_s, end_s) in seconds, and the score of the transition it starts with."""

    shot_index: int
    start_s: float
    end_s: float
    transition_score: float


def shots_from_probabilities(
    times: Sequence[float] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    *,
    duration_s: float,
    threshold: float = DEFAULT_THRESHOLD,
) -> list[Shot]:
    """Shots of one video, in time order, from every frame's time and transition probability.

    - A transition is a run of consecutive frames whose probability exceeds `threshold`; its
      score is the run's highest probability.
    - Its boundary is the time of the frame after the run's peak frame. TransNetV2 marks the
      last frame of the outgoing shot, so a hard cut's boundary is exactly when the first frame
      of the new shot is shown; a dissolve peaks at its middle, so the boundary falls there and
      each half of the blend goes to the shot it mostly shows.
    - Shots tile the video: the first starts at the first frame's time, each ends where the
      next starts, the last ends at `duration_s`. `transition_score` is the score of the
      transition that starts the shot; 0.0 for the first (nothing precedes it).
    - A boundary that would leave an empty shot (at the first frame, or at or after the end)
      is dropped.
    """
    t = np.asarray(times, np.float64)
    p = np.asarray(probabilities, np.float64)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"times {t.shape} and probabilities {p.shape} must be equal 1-D arrays")
    if len(t) == 0:
        return []
    if np.any(np.diff(t) <= 0):
        raise ValueError("frame times must be strictly increasing")
    above = np.concatenate([[False], p > threshold, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    boundaries: list[tuple[float, float]] = []  # (time, score)
    for first, end in zip(edges[::2], edges[1::2], strict=True):
        peak = first + int(np.argmax(p[first:end]))
        at = float(t[peak + 1]) if peak + 1 < len(t) else duration_s
        if t[0] < at < duration_s:
            boundaries.append((at, float(p[peak])))
    starts = [(float(t[0]), 0.0), *boundaries]
    ends = [at for at, _ in boundaries] + [max(duration_s, float(t[-1]))]
    return [
        Shot(index, start, end, score)
        for index, ((start, score), end) in enumerate(zip(starts, ends, strict=True))
    ]
