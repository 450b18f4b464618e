"""Work units: long videos become several segments; clips and frames are assigned by start time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from vidbatch.specs import ClipSpec, FrameSpec

_EPS = 1e-9


@dataclass(frozen=True)
class Segment:
    index: int
    start_s: float
    end_s: float  # exclusive, except the last segment which ends at the video's duration


def clip_count(duration_s: float, clip: ClipSpec) -> int:
    """Clips tile the video back to back; a video shorter than one clip still gets one clip."""
    return max(1, math.floor(duration_s / clip.seconds + _EPS))


def clip_starts(duration_s: float, clip: ClipSpec) -> list[float]:
    return [k * clip.seconds for k in range(clip_count(duration_s, clip))]


def frame_times(duration_s: float, spec: FrameSpec) -> list[float]:
    """Detector sample times: 0, 1/fps, ... strictly inside the video."""
    count = max(1, math.ceil(duration_s * spec.fps - _EPS))
    return [k / spec.fps for k in range(count)]


def plan_segments(
    duration_s: float, segment_seconds: float, clips: Sequence[ClipSpec] = ()
) -> list[Segment]:
    """Split [0, duration) into units of at most `segment_seconds`, aligned to whole clips."""
    unit = max((c.seconds for c in clips), default=0.0)
    length = segment_seconds
    if unit:
        length = max(unit, math.floor(segment_seconds / unit + _EPS) * unit)
    count = max(1, math.ceil(duration_s / length - _EPS))
    return [
        Segment(i, i * length, duration_s if i == count - 1 else (i + 1) * length)
        for i in range(count)
    ]


def in_segment(times: Sequence[float], segment: Segment, last: bool) -> list[float]:
    """Times whose start falls in the segment; the last segment also takes anything later."""
    return [t for t in times if t >= segment.start_s - _EPS and (last or t < segment.end_s - _EPS)]
