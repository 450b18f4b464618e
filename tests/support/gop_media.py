"""Counter videos with an exact GOP structure: keyframes every `gop` frames (scenecut off),
a fixed B-frame run, closed or open GOPs (x264/x265 `open-gop`), CFR or VFR. Frame i shows i
(tests.support.media.read_counter), so a decode can be checked to the frame."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.support.media import counter_image


def gop_counter(
    path: Path,
    *,
    seconds: float,
    fps: int = 25,
    gop: int = 50,
    bframes: int = 3,
    open_gop: bool = False,
    codec: str = "libx264",
    format: str | None = None,
    times: Sequence[float] | None = None,
    width: int = 192,
    height: int = 108,
) -> Path:
    """Write the counter video; with `times` frame i is presented at times[i] seconds (time base
    1/1000), else at i / fps. Returns `path`."""
    if times is None:
        time_base, pts = Fraction(1, fps), list(range(round(seconds * fps)))
    else:
        time_base, pts = Fraction(1, 1000), [round(t * 1000) for t in times]
    params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:b-adapt=0"
    if codec == "libx264":
        options = {"x264-params": params + (":open-gop=1" if open_gop else "")}
    else:
        options = {"x265-params": params + f":open-gop={int(open_gop)}:log-level=error"}
    with av.open(str(path), "w", format=format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = time_base
        stream.codec_context.gop_size = gop
        stream.codec_context.options = options
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(counter_image(i, width, height), format="rgb24")
            frame.pts, frame.time_base = p, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def presentation_times(path: Path) -> list[float]:
    """Every frame's presentation time in seconds from the first, in display order (demuxed)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)
        return [float((p - start) * stream.time_base) for p in pts]


def keyframe_times(path: Path) -> list[float]:
    """Presentation times (seconds from the first frame) of the keyframes, sorted."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        keys = [p.pts for p in container.demux(stream) if p.is_keyframe and p.pts is not None]
        return sorted(float((p - start) * stream.time_base) for p in keys)


def vfr_times(seconds: float, fps: int, seed: int = 0) -> list[float]:
    """Irregular frame times: gaps of 1 to 3 frame periods, in milliseconds."""
    rng = np.random.default_rng(seed)
    gaps = rng.choice([1, 1, 2, 3], size=round(seconds * fps)) / fps
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    return [round(float(t), 3) for t in times if t < seconds]
