"""Tiny MP4 files whose headers lie about their duration, made by editing real encodes."""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np


def tiny_mp4(path: Path, seconds: int = 1, fps: int = 10) -> Path:
    """A real 32x32 H.264 MP4 of `seconds` (under 2 KB)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(
                np.full((32, 32, 3), i * 20 % 255, np.uint8), format="rgb24"
            )
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _box(data: bytes, kind: bytes) -> int:
    at = data.find(kind)
    assert at > 0, f"no {kind!r} box"
    return at


def with_mdhd_timescale(source: Path, target: Path, timescale: int = 1) -> Path:
    """The media header's timescale set to `timescale` ticks per second: the same ticks now
    span thousands of times longer."""
    data = bytearray(source.read_bytes())
    at = _box(data, b"mdhd")
    version = data[at + 4]
    offset = at + 8 + (8 if version == 0 else 16)  # after creation and modification times
    struct.pack_into(">I", data, offset, timescale)
    target.write_bytes(bytes(data))
    return target


def with_stts_delta(source: Path, target: Path, delta: int = 0x7FFFFFFF) -> Path:
    """Every sample of the first time-to-sample entry lasting `delta` ticks."""
    data = bytearray(source.read_bytes())
    at = _box(data, b"stts")
    count = struct.unpack_from(">I", data, at + 12)[0]
    struct.pack_into(">II", data, at + 12, count, delta)
    target.write_bytes(bytes(data))
    return target


def cut_short(path: Path, seconds: int = 60, keep: float = 0.15, fps: int = 10) -> Path:
    """A faststart MP4 (index first) of `seconds`, cut after `keep` of its bytes: the header
    still claims the whole duration, the packets stop early."""
    full = path.with_name(f"full-{path.name}")
    with av.open(str(full), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        noise = np.random.default_rng(0)
        for _ in range(seconds * fps):
            picture = noise.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = full.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    full.unlink()
    return path
