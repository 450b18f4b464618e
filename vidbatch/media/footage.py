"""Real-looking footage for benchmarks and decode tests: a camera that pans and zooms over a
procedurally generated landscape, cuts to a new shot every few seconds, with objects crossing
and film grain. Unlike flat synthetic planes, x264 spends real bits on it (sub-pixel motion
from the zoom, fine texture, grain), so decoding it costs what real video costs.

Frames are built as yuv420p planes with numpy and scaled by swscale (one reused context), so
a 20-minute 720p file is bounded by x264, not Python. Keyframes sit exactly every `keyint`
frames (scenecut off); `bframes` and `open_gop` set x264's B-frame run and GOP kind.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter


def _noise_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) float32 fractal noise in 0..1: octaves of random grids, upscaled bicubically."""
    scaler = VideoReformatter()
    image = np.zeros((height, width), np.float32)
    amplitude, total = 1.0, 0.0
    for cells in (4, 12, 36, 108, 324):
        grid = rng.integers(0, 256, (max(2, cells * height // width), cells), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(grid, format="gray")
        up = scaler.reformat(frame, width=width, height=height, interpolation="BICUBIC")
        image += amplitude * up.to_ndarray().astype(np.float32)
        total += amplitude * 255
        amplitude *= 0.55
    return image / total


def _landscape(rng: np.random.Generator, height: int, width: int) -> list[np.ndarray]:
    """Y, U, V planes (yuv420p) of a textured scene: terrain-like luma, coloured regions,
    sharp-edged blocks ("buildings") and fine detail."""
    luma = _noise_image(rng, height, width)
    luma = (luma - luma.min()) / max(1e-6, float(np.ptp(luma)))
    detail = rng.normal(0.0, 1.0, (height, width)).astype(np.float32)
    y = 30 + 180 * luma + 10 * detail
    for _ in range(max(8, width * height // 90000)):  # blocks with hard edges
        h, w = (
            int(rng.integers(height // 40, height // 8)),
            int(rng.integers(width // 60, width // 12)),
        )
        top, left = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        shade = float(rng.uniform(20, 235))
        y[top : top + h, left : left + w] = shade + 6 * detail[top : top + h, left : left + w]
    chroma_h, chroma_w = height // 2, width // 2
    u = 128 + 40 * (_noise_image(rng, chroma_h, chroma_w) - 0.5) * 2
    v = 128 + 40 * (_noise_image(rng, chroma_h, chroma_w) - 0.5) * 2
    return [np.clip(p, 16, 240).astype(np.uint8) for p in (y, u, v)]


def write_footage(
    path: str | Path,
    *,
    seconds: float,
    fps: int = 30,
    width: int = 1280,
    height: int = 720,
    keyint: int = 60,
    bframes: int = 3,
    open_gop: bool = False,
    seed: int = 0,
    preset: str = "veryfast",
    crf: int = 23,
    codec: str = "libx264",
) -> Path:
    """Write `seconds` of footage to `path` (mp4; written whole or not at all); returns it.

    `keyint` frames between keyframes (exactly), `bframes` B-frames at most between
    references, `open_gop` for x264/x265 open GOPs (the keyframe's leading B-frames reference
    the previous GOP). Width and height must be even.
    """
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even, got {width}x{height}")
    rng = np.random.default_rng(seed)
    canvas_h, canvas_w = 2 * height, 3 * width  # the camera roams over this
    planes = _landscape(rng, canvas_h, canvas_w)
    sprites = [_sprite(rng, int(rng.integers(height // 10, height // 4))) for _ in range(3)]
    grain = [rng.integers(-5, 6, (height, width), dtype=np.int8) for _ in range(7)]
    scaler = VideoReformatter()
    frames = round(seconds * fps)
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    params = f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={bframes}"
    options = {"preset": preset, "crf": str(crf)}
    if codec == "libx264":
        options["x264-params"] = params + (":open-gop=1" if open_gop else "")
    else:  # libx265
        options["x265-params"] = params + f":open-gop={int(open_gop)}:log-level=error"
    try:
        with av.open(str(partial), "w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = Fraction(1, fps)
            stream.codec_context.gop_size = keyint
            stream.codec_context.options = options
            camera = _Camera(rng, canvas_w, canvas_h, width, height, fps)
            for i in range(frames):
                x, y, w, h = camera.step()
                crop = _crop(planes, x, y, w, h)
                frame = av.VideoFrame.from_ndarray(crop, format="yuv420p")
                frame = scaler.reformat(frame, width=width, height=height, interpolation="BILINEAR")
                yuv = frame.to_ndarray()
                for k, sprite in enumerate(sprites):
                    _paste(yuv, sprite, i, k, width, height, fps)
                luma = yuv[:height].astype(np.int16)
                luma += grain[i % len(grain)]
                yuv[:height] = np.clip(luma, 16, 235)
                out = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
                out.pts = i
                container.mux(stream.encode(out))
            container.mux(stream.encode(None))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    return path


class _Camera:
    """Crop boxes (x, y, w, h) over the canvas: a shot drifts and zooms smoothly, then cuts."""

    def __init__(
        self, rng: np.random.Generator, canvas_w: int, canvas_h: int, w: int, h: int, fps: int
    ) -> None:
        self.rng, self.canvas, self.size, self.fps = rng, (canvas_w, canvas_h), (w, h), fps
        self.left = 0
        self._new_shot()

    def _new_shot(self) -> None:
        rng = self.rng
        self.left = int(rng.uniform(3, 9) * self.fps)
        self.zoom = float(rng.uniform(1.0, 1.6))
        self.zoom_speed = float(rng.uniform(-0.004, 0.004))
        self.x = float(rng.uniform(0, self.canvas[0] - 1.6 * self.size[0]))
        self.y = float(rng.uniform(0, self.canvas[1] - 1.6 * self.size[1]))
        self.vx, self.vy = float(rng.uniform(-6, 6)), float(rng.uniform(-2.5, 2.5))

    def step(self) -> tuple[int, int, int, int]:
        if self.left <= 0:
            self._new_shot()
        self.left -= 1
        self.zoom = min(1.6, max(1.0, self.zoom + self.zoom_speed))
        w = 2 * round(self.size[0] * self.zoom / 2)
        h = 2 * round(self.size[1] * self.zoom / 2)
        self.x = min(max(self.x + self.vx, 0.0), self.canvas[0] - w)
        self.y = min(max(self.y + self.vy, 0.0), self.canvas[1] - h)
        if self.x in (0.0, self.canvas[0] - w):
            self.vx = -self.vx
        if self.y in (0.0, self.canvas[1] - h):
            self.vy = -self.vy
        return 2 * int(self.x / 2), 2 * int(self.y / 2), w, h


def _crop(planes: list[np.ndarray], x: int, y: int, w: int, h: int) -> np.ndarray:
    """A (3h/2, w) yuv420p array of the box (x, y, w, h) (all even)."""
    ys, us, vs = planes
    u = us[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2]
    v = vs[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2]
    chroma = np.concatenate([u.ravel(), v.ravel()]).reshape(h // 2, w)
    return np.concatenate([ys[y : y + h, x : x + w], chroma])


def _sprite(rng: np.random.Generator, radius: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(luma patch, mask, u, v) of a textured disc."""
    size = 2 * radius
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (yy - radius + 0.5) ** 2 + (xx - radius + 0.5) ** 2 <= radius * radius
    texture = (40 + 170 * _noise_image(rng, size, size)).astype(np.uint8)
    return texture, mask, int(rng.integers(60, 200)), int(rng.integers(60, 200))


def _paste(yuv: np.ndarray, sprite: tuple, i: int, k: int, width: int, height: int, fps: int):
    """Move sprite k across the frame (its own speed and lane) and draw it into yuv (luma)."""
    texture, mask, _u, _v = sprite
    size = texture.shape[0]
    speed = (3 + 2 * k) * (1 if k % 2 else -1)
    span = width + size
    x = int((k * 397 + speed * i) % span) - size
    y = int((height - size) * (0.2 + 0.3 * k) + 20 * np.sin(i / fps * (1 + k)))
    y = min(max(y, 0), height - size)
    x0, x1 = max(x, 0), min(x + size, width)
    if x0 >= x1:
        return
    region = yuv[y : y + size, x0:x1]
    sub_mask = mask[:, x0 - x : x1 - x]
    region[sub_mask] = texture[:, x0 - x : x1 - x][sub_mask]
