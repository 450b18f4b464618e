"""Hostile inputs for tests, made for real: files that look like videos and are not."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def zero_bytes(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def text_as_video(path: Path) -> Path:
    path.write_text("this is not a video, just text with a video extension\n" * 20)
    return path


def truncated(source: Path, path: Path, fraction: float = 0.5) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def audio_only(path: Path, seconds: float = 2.0) -> Path:
    """An mp4 with one AAC audio stream and no video."""
    rate = 16000
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        samples = np.sin(np.linspace(0, 440 * 2 * np.pi * seconds, int(rate * seconds)))
        samples = (samples * 0.3).astype(np.float32)[None, :]
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


BITS = 12


def counter_video(
    path: Path,
    *,
    seconds: float,
    fps: int = 25,
    width: int = 320,
    height: int = 240,
    codec: str = "libx264",
    gop: int | None = None,
    start_pts: int = 0,
    faststart: bool = False,
) -> Path:
    """A video whose frame i shows i in binary as BITS wide black/white stripes (survives scaling)."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop or fps
        edges = np.linspace(0, width, BITS + 1).astype(int)
        for i in range(int(seconds * fps)):
            image = np.zeros((height, width, 3), np.uint8)
            for bit in range(BITS):
                if (i >> bit) & 1:
                    image[:, edges[bit] : edges[bit + 1]] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = start_pts + i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_counter(image: np.ndarray) -> int:
    """Frame index shown by a (H, W, 3) RGB picture of counter_video."""
    width = image.shape[1]
    edges = np.linspace(0, width, BITS + 1).astype(int)
    value = 0
    for bit in range(BITS):
        stripe = image[:, edges[bit] + 1 : max(edges[bit] + 2, edges[bit + 1] - 1)]
        if stripe.mean() > 127:
            value |= 1 << bit
    return value
