"""Reading an index in tests, and expected counts worked out without the code under test."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import av

from vidbatch.index.store import IndexStore


def read(
    output: str | Path, name: str, storage_options: dict | None = None, **snapshot: Any
) -> list[dict]:
    """The rows of one table as vidbatch readers see them (one snapshot), [] without an index."""
    store = IndexStore(str(output), storage_options)
    if not store.exists():
        return []
    return store.read(name, snapshot=store.snapshot(**snapshot)).to_pylist()


def stream_seconds(path: str | Path) -> float:
    """A video's duration from its decoded frames: the last frame's time plus one frame
    (a second implementation, for expected values; PyAV only, no vidbatch code)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [
            float(frame.pts * stream.time_base)
            for frame in container.decode(stream)
            if frame.pts is not None
        ]
        rate = float(stream.average_rate or stream.guessed_rate)
    start = min(times)
    return max(times) - start + 1 / rate


def expected_clips(path: str | Path, clip_seconds: float) -> int:
    """Clips tile the video from 0 s; a video shorter than one clip still gets one."""
    return max(1, math.floor(stream_seconds(path) / clip_seconds + 1e-6))
