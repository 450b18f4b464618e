"""Labeled synthetic video archives: one moving shape per video, encoded with PyAV.

Used to train the shipped classifiers and detectors, in tests and by `vidbatch demo`.
Paired classes (left/right, growing/shrinking, cw/ccw) differ only in time order: every
single frame is drawn from the same distribution, so only temporal models separate them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CLASSES: tuple[str, ...] = (
    "moving_left",
    "moving_right",
    "growing",
    "shrinking",
    "rotating_cw",
    "rotating_ccw",
    "static",
    "blinking",
)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[tuple[int, int], ...] = ((320, 240), (256, 256), (352, 288), (426, 240), (240, 320))
FRAME_RATES: tuple[int, ...] = (24, 25, 30)
ROTATIONS: tuple[int, ...] = (0, 90, 180, 270)
LABELS_SCHEMA = pa.schema(
    {
        "uri": pa.string(),
        "label": pa.string(),
        "shape": pa.string(),
        "seconds": pa.float64(),
        "fps": pa.float64(),
        "width": pa.int32(),
        "height": pa.int32(),
    }
)
BOXES_SCHEMA = pa.schema(
    {
        "uri": pa.string(),
        "frame_time_s": pa.float64(),
        "label": pa.string(),
        **{name: pa.float32() for name in ("x1", "y1", "x2", "y2")},
    }
)


@dataclass(frozen=True)
class _Codec:
    encoder: str
    container: str  # FFmpeg muxer; mp4 keeps exact 1/fps times, webm/matroska milliseconds
    extension: str
    options: dict[str, str]
    odd_pix_fmt: str  # used when width or height is odd


_X265 = {"preset": "ultrafast", "x265-params": "log-level=error:pools=none:frame-threads=1"}
_CODECS: dict[str, _Codec] = {
    "h264": _Codec("libx264", "mp4", ".mp4", {"preset": "veryfast"}, "yuv444p"),
    "hevc": _Codec("libx265", "mp4", ".mp4", _X265, "yuv444p"),
    "vp9": _Codec(
        "libvpx-vp9", "webm", ".webm", {"deadline": "realtime", "cpu-used": "8"}, "yuv420p"
    ),
    "av1": _Codec(
        "libsvtav1", "matroska", ".mkv", {"preset": "10", "svtav1-params": "lp=1"}, "yuv420p"
    ),
    "mpeg4": _Codec("mpeg4", "mp4", ".mp4", {"b": "1000000"}, "yuv420p"),
}
CODECS: tuple[str, ...] = tuple(_CODECS)


@dataclass(frozen=True)
class SynthArchive:
    """Where `synthesize` wrote an archive; `labels_uri` is the training manifest (uri, label)."""

    root: str
    videos_dir: str
    labels_uri: str
    boxes_uri: str
    uris: list[str]
    labels: list[str]


def extension_for(codec: str) -> str:
    """File extension (with the dot) of the container `write_video` uses for `codec`."""
    return _codec(codec).extension


def _codec(codec: str) -> _Codec:
    if codec not in _CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {', '.join(CODECS)}")
    return _CODECS[codec]


_BACKWARD = {"moving_left", "shrinking", "rotating_ccw"}  # second of each pair: time reversed


@dataclass(frozen=True)
class _Scene:
    """Per-video random draws; `pose(t)` gives (cx, cy, radius, angle, visible) at t seconds.

    The second class of each pair is the first played backwards: for the same draws,
    `moving_left.pose(t) == moving_right.pose(-t)`, and likewise for the other pairs.
    """

    label: str
    width: int
    height: int
    radius: float
    cx: float
    cy: float
    angle: float
    speed: float  # px/s when moving, rad/s when rotating
    period: float  # s, of the size sawtooth or of blinking
    phase: float  # 0..1

    @classmethod
    def draw(cls, rng: np.random.Generator, label: str, width: int, height: int) -> _Scene:
        """Random scene; every label makes the same draws, so pairs share one stream."""
        radius = float(rng.uniform(0.12, 0.22)) * min(width, height)
        cx = float(rng.uniform(radius, width - radius))
        cy = float(rng.uniform(radius, height - radius))
        x_start = float(rng.uniform(-radius, width + radius))
        angle = float(rng.uniform(0.0, 2.0 * math.pi))
        move_speed = float(rng.uniform(0.2, 0.5)) * width
        turn_speed = math.radians(float(rng.uniform(60.0, 120.0)))  # <= 15 deg/frame at 8 fps
        saw_period, blink_period = float(rng.uniform(2.0, 3.0)), float(rng.uniform(0.5, 1.0))
        phase = float(rng.uniform(0.0, 1.0))
        moving = label.startswith("moving")
        period = blink_period if label == "blinking" else saw_period
        speed = move_speed if moving else turn_speed
        cx = x_start if moving else cx
        return cls(label, width, height, radius, cx, cy, angle, speed, period, phase)

    def pose(self, t: float) -> tuple[float, float, float, float, bool]:
        cx, cy, r, angle = self.cx, self.cy, self.radius, self.angle
        kind = self.label.split("_")[0]
        t = -t if self.label in _BACKWARD else t
        if kind == "moving":
            span = self.width + 2.0 * r  # leaves the frame entirely before re-entering
            cx = (cx + r + self.speed * t) % span - r
        elif kind in ("growing", "shrinking"):
            r *= 0.35 + 0.65 * ((t / self.period + self.phase) % 1.0)
        elif kind == "rotating":
            angle += self.speed * t  # y points down on screen: increasing angle is clockwise
        elif kind == "blinking":
            return cx, cy, r, angle, (t / self.period + self.phase) % 1.0 < 0.5
        return cx, cy, r, angle, True


def _background(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A solid colour with a gradient and fixed noise, plus a shape colour that stands out."""
    base = rng.integers(30, 226, size=3).astype(np.float32)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (xs * math.cos(theta) + ys * math.sin(theta)) / max(width, height)
    img = base + 40.0 * (ramp - ramp.mean())[..., None]
    img += rng.normal(0.0, 6.0, size=img.shape).astype(np.float32)
    colour = rng.integers(0, 256, size=3)
    for _ in range(100):
        if np.abs(colour - base).max() >= 110:
            break
        colour = rng.integers(0, 256, size=3)
    else:
        colour = np.where(base < 128, 255, 0)
    return np.clip(img, 0, 255).astype(np.uint8), colour.astype(np.uint8)


def _draw(
    frame: np.ndarray, shape: str, pose: tuple[float, float, float, float, bool], colour: np.ndarray
) -> tuple[float, float, float, float] | None:
    """Fill the shape into `frame` in place; return its tight box normalized to 0..1, or None."""
    cx, cy, r, angle, visible = pose
    height, width = frame.shape[:2]
    x0, x1 = max(0, math.floor(cx - r)), min(width, math.ceil(cx + r) + 1)
    y0, y1 = max(0, math.floor(cy - r)), min(height, math.ceil(cy + r) + 1)
    if not visible or x0 >= x1 or y0 >= y1:
        return None
    px = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    py = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    if shape == "circle":
        mask = px * px + py * py <= r * r
    else:
        n = 4 if shape == "square" else 3
        angles = angle + 2.0 * math.pi * np.arange(n + 1) / n
        vx, vy = r * np.cos(angles), r * np.sin(angles)
        mask = np.ones((y1 - y0, x1 - x0), dtype=bool)
        for k in range(n):  # convex polygon: inside every edge's half-plane
            mask &= (vx[k + 1] - vx[k]) * (py - vy[k]) - (vy[k + 1] - vy[k]) * (px - vx[k]) >= 0
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        return None
    frame[y0:y1, x0:x1][mask] = colour
    left, right = x0 + int(cols[0]), x0 + int(cols[-1]) + 1
    top, bottom = y0 + int(rows[0]), y0 + int(rows[-1]) + 1
    return left / width, top / height, right / width, bottom / height


def _frame_slots(rng: np.random.Generator, total: float, variable: bool) -> np.ndarray:
    """Frame positions in units of 1/fps below `total`: 0..n-1, or gaps of 1 or 2 when variable."""
    n = max(2, round(total))
    if not variable:
        return np.arange(n)
    slots = np.concatenate([[0], np.cumsum(rng.choice([1, 2], size=n))])
    return slots[(slots < total) | (np.arange(slots.size) < 2)]


def write_video(
    path: str | Path,
    *,
    label: str,
    shape: str,
    seconds: float,
    fps: float,
    width: int,
    height: int,
    codec: str = "h264",
    seed: int = 0,
    rotation: int = 0,
    variable_frame_rate: bool = False,
    start_seconds: float = 0.0,
) -> list[dict]:
    """Write one synthetic video to `path` and return its ground-truth box rows.

    `width`/`height` are the stored frame size. `rotation` (counter-clockwise degrees, as
    `VideoFrame.rotation` reads it back; 270 reads back as -90) goes into the display matrix;
    the scene is drawn in display orientation and stored turned back, so labels and boxes
    describe what a player shows. Odd sizes use yuv444p for h264/hevc (their 4:2:0 needs
    even sizes) and yuv420p otherwise. Row times are seconds from the first frame and equal
    decoded pts minus the first pts; `start_seconds` is snapped to the stream's time base.
    """
    spec = _codec(codec)
    if label not in CLASSES:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(CLASSES)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    if label.startswith("rotating") and shape == "circle":
        raise ValueError("a rotating circle looks static; use 'square' or 'triangle'")
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation!r}")
    if seconds <= 0 or fps <= 0 or start_seconds < 0:
        raise ValueError("seconds and fps must be > 0 and start_seconds >= 0")
    if min(width, height) < 16:
        raise ValueError(f"frame size {width}x{height} is below 16 pixels")

    rng = np.random.default_rng(seed)
    disp_w, disp_h = (height, width) if rotation in (90, 270) else (width, height)
    scene = _Scene.draw(rng, label, disp_w, disp_h)
    background, colour = _background(rng, disp_w, disp_h)
    rate = Fraction(fps).limit_denominator(1001)
    slots = _frame_slots(rng, seconds * float(rate), variable_frame_rate)
    time_base = 1 / rate if spec.container == "mp4" else Fraction(1, 1000)
    start = round(Fraction(start_seconds) / time_base)
    pts = [start + round(Fraction(int(k)) / rate / time_base) for k in slots]

    if spec.encoder == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # else SVT-AV1 prints a banner per video
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")  # complete or absent, never half-written
    rows: list[dict] = []
    try:
        with av.open(str(partial), "w", format=spec.container, options=_BITEXACT) as out:
            stream = _add_stream(out, spec, rate, time_base, width, height, rotation)
            for p in pts:
                t = float((p - pts[0]) * time_base)
                frame = background.copy()
                box = _draw(frame, shape, scene.pose(t), colour)
                if box is not None:
                    x1, y1, x2, y2 = box
                    rows.append(dict(frame_time_s=t, label=shape, x1=x1, y1=y1, x2=x2, y2=y2))
                # np.rot90 turns counter-clockwise; storing turns the display frame back.
                stored = np.ascontiguousarray(np.rot90(frame, k=-rotation // 90))
                video_frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
                video_frame.pts, video_frame.time_base = p, time_base
                out.mux(stream.encode(video_frame))
            out.mux(stream.encode(None))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    return rows


def write_keyframed(
    path: str | Path,
    *,
    seconds: float,
    fps: int,
    keys: tuple[float, ...],
    width: int = 64,
    height: int = 48,
) -> Path:
    """An H.264 grey ramp whose only keyframes are at `keys` seconds (forced I frames,
    scenecut off): frame i is grey level i mod 256. For irregular-GOP seeking checks."""
    forced = {round(k * fps) for k in keys}
    frames = round(seconds * fps)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = frames + 1
        stream.codec_context.options = {
            "x264-params": f"keyint={frames + 1}:min-keyint={frames + 1}:scenecut=0"
        }
        for i in range(frames):
            image = np.full((height, width, 3), i % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            if i in forced:
                frame.pict_type = av.video.frame.PictureType.I
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return Path(path)


_BITEXACT = {"fflags": "+bitexact"}  # no random matroska segment id, no version strings


def _add_stream(
    out: av.container.OutputContainer,
    spec: _Codec,
    rate: Fraction,
    time_base: Fraction,
    width: int,
    height: int,
    rotation: int,
) -> av.video.stream.VideoStream:
    stream = out.add_stream(spec.encoder, rate=rate)
    stream.width, stream.height = width, height
    stream.pix_fmt = spec.odd_pix_fmt if width % 2 or height % 2 else "yuv420p"
    stream.codec_context.time_base = time_base
    stream.codec_context.thread_count = 1  # deterministic bytes
    stream.codec_context.gop_size = max(1, round(float(rate)))  # a keyframe every second
    stream.codec_context.options = dict(spec.options)
    if rotation:
        stream.set_display_rotation(rotation)
    return stream


def synthesize(
    out: str | Path,
    videos: int,
    *,
    seed: int = 0,
    codec: str = "h264",
    min_seconds: float = 2.0,
    max_seconds: float = 20.0,
    long_fraction: float = 0.0,
) -> SynthArchive:
    """Write `videos` labeled videos plus labels.parquet and boxes.parquet under `out`.

    Labels are balanced round-robin over CLASSES, then shuffled; every other choice comes
    from `numpy.random.default_rng(seed)`, so one seed gives the same tables every time.
    A `long_fraction` of the videos last 2-4 minutes instead of min..max seconds.
    """
    ext = extension_for(codec)
    if videos < 1:
        raise ValueError(f"videos must be >= 1, got {videos}")
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need 0 < min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    if not 0.0 <= long_fraction <= 1.0:
        raise ValueError(f"long_fraction must be within 0..1, got {long_fraction}")
    root = Path(out).resolve()
    videos_dir = root / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    labels = [CLASSES[i % len(CLASSES)] for i in rng.permutation(videos)]
    long_ids = set(rng.choice(videos, size=round(long_fraction * videos), replace=False).tolist())
    manifest: list[dict] = []
    boxes: list[dict] = []
    for i, label in enumerate(labels):
        shapes = SHAPES[1:] if label.startswith("rotating") else SHAPES  # a turning disc is static
        width, height = SIZES[int(rng.integers(len(SIZES)))]
        low, high = (120.0, 240.0) if i in long_ids else (min_seconds, max_seconds)
        uri = str(videos_dir / f"vid-{i:05d}{ext}")
        video = {
            "label": label,
            "shape": shapes[int(rng.integers(len(shapes)))],
            "seconds": round(float(rng.uniform(low, high)), 2),
            "fps": float(FRAME_RATES[int(rng.integers(len(FRAME_RATES)))]),
            "width": width,
            "height": height,
        }
        rows = write_video(uri, codec=codec, seed=int(rng.integers(2**31)), **video)
        manifest.append({"uri": uri, **video})
        boxes.extend({"uri": uri, **row} for row in rows)

    labels_uri, boxes_uri = root / "labels.parquet", root / "boxes.parquet"
    _write_parquet(pa.Table.from_pylist(manifest, schema=LABELS_SCHEMA), labels_uri)
    _write_parquet(pa.Table.from_pylist(boxes, schema=BOXES_SCHEMA), boxes_uri)
    uris = [video["uri"] for video in manifest]
    return SynthArchive(str(root), str(videos_dir), str(labels_uri), str(boxes_uri), uris, labels)


def _write_parquet(table: pa.Table, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table, partial)
    os.replace(partial, path)
