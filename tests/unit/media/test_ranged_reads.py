"""Remote files are read with 8 MiB ranged reads, so decoding a segment reads about its share of
the file (README, "Decoding"). Counted on the wire: every request a decode sends to a real S3
endpoint (moto) goes through tests/support/flaky_proxy.py with no faults, which logs its Range."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest

from tests.conftest import make_bucket
from tests.support.flaky_proxy import FlakyProxy
from vidbatch.media.decode import decode_samples
from vidbatch.specs import ClipSpec

BLOCK = 8 * 2**20  # the README's 8 MiB
SECONDS, FPS = 20, 25
SEGMENT = (10.0, 11.0)  # one second in the middle of twenty
CLIP = ClipSpec(frames=8, fps=8.0, size=64)  # 8 frames over [10, 11)


class RecordingProxy(FlakyProxy):
    """A fault-free proxy that keeps (method, path, Range header) of every request."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, fail_rate=0.0)
        self.requests: list[tuple[str, str, str | None]] = []

    def decide(self, method: str, path: str, headers: dict) -> str | None:
        self.requests.append((method, path.split("?", 1)[0], headers.get("range")))
        return super().decide(method, path, headers)


def noise_video(path: Path) -> Path:
    """20 s of lossless noise at 320x240 (about 68 MiB), a keyframe every second, the index
    (moov) at the end as FFmpeg's mp4 muxer writes it by default."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.gop_size = FPS
        stream.codec_context.options = {"preset": "ultrafast", "qp": "0"}
        for i in range(SECONDS * FPS):
            image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def segment_bytes(path: Path, start: float, end: float) -> list[tuple[int, int]]:
    """(offset, size) of the video packets a decoder needs for [start, end): from the last
    keyframe at or before `start` to the last packet shown before `end`. Read from the local
    file's own index, independently of vidbatch."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [
            (float(p.pts * stream.time_base), p.is_keyframe, p.pos, p.size)
            for p in container.demux(stream)
            if p.pts is not None and p.size
        ]
    first_key = max(t for t, key, _, _ in packets if key and t <= start)
    return [(pos, size) for t, _, pos, size in packets if first_key <= t < end]


def requested_ranges(requests, key: str, size: int) -> list[tuple[int, int]]:
    """[first, last] byte of every GET of `key`; a GET without a Range is the whole object."""
    ranges = []
    for method, path, header in requests:
        if method != "GET" or not path.endswith(key):
            continue
        if header is None:
            ranges.append((0, size - 1))
            continue
        first, last = header.removeprefix("bytes=").split("-")
        ranges.append((int(first), min(int(last) if last else size - 1, size - 1)))
    return ranges


@pytest.fixture(scope="module")
def big_video(tmp_path_factory) -> Path:
    return noise_video(tmp_path_factory.mktemp("ranged") / "noise.mp4")


def test_a_segment_reads_about_its_share_of_a_remote_file(big_video, s3, s3_server):
    fs, options = s3
    make_bucket(s3_server, "ranged-reads")
    fs.put(str(big_video), "ranged-reads/archive/noise.mp4")  # straight to moto, not logged
    size = big_video.stat().st_size
    assert size > 6 * BLOCK
    needed = segment_bytes(big_video, *SEGMENT)
    share = max(p + n for p, n in needed) - min(p for p, _ in needed)
    assert share < size / 10  # one second (plus the GOP before it) of twenty

    with RecordingProxy(s3_server) as proxy:
        through_proxy = {
            **options,
            "client_kwargs": {**options["client_kwargs"], "endpoint_url": proxy.url},
            "skip_instance_cache": True,
        }
        out = decode_samples(
            "s3://ranged-reads/archive/noise.mp4",
            clips={CLIP: [SEGMENT[0]]},
            storage_options=through_proxy,
        )
    assert out.clips[CLIP].shape == (1, 8, 64, 64, 3)
    assert proxy.faults_injected == 0
    ranges = requested_ranges(proxy.requests, "/archive/noise.mp4", size)
    assert ranges, proxy.requests

    # Every read is a ranged read of one block (plus the few KiB FFmpeg asked for at once).
    assert all(last - first + 1 <= BLOCK + 2**20 for first, last in ranges), ranges
    # The counting is right: the segment's packets all came over the wire.
    for pos, n in needed:
        assert any(first <= pos and pos + n - 1 <= last for first, last in ranges), (pos, ranges)
    # About its share: the segment's blocks, plus at most three for the container (the header
    # block at the start, the index at the end, the return to the start of the data).
    requested = sum(last - first + 1 for first, last in ranges)
    bound = (math.ceil(share / BLOCK) + 1 + 3) * BLOCK
    assert requested <= bound, f"requested {requested / 2**20:.1f} MiB of {size / 2**20:.1f} MiB"
    assert requested < size / 2
