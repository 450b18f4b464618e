"""Probing: what a video container says about its main video stream (duration, rate, size,
codec, start), checked against where its packets really end. No decoding beyond what FFmpeg's
own stream probing does when the file is opened."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import av

from vidbatch.errors import StageError, describe
from vidbatch.storage import is_local, local_path, open_input


@dataclass(frozen=True)
class VideoInfo:
    """What probing a container tells: enough to plan work without decoding."""

    duration_s: float
    fps: float
    width: int
    height: int
    codec: str
    start_s: float = 0.0
    # Where the video's packets end, when that is well before `duration_s` (truncated, or a
    # header that lies): planning does not cut work units out of what is not there.
    packets_end_s: float | None = None


# Ranged reads of this size on object stores: a segment reads about its own share of the file
# (s3fs's 50 MiB default fetched 3.3x a 120 s 720p segment's bytes in the benchmark).
READ_BLOCK = 8 * 2**20


@contextmanager
def open_video(
    uri: str, storage_options: Mapping[str, Any] | None = None, *, stage: str = "decode"
):
    """(container, video stream) with errors turned into one-line StageErrors."""
    handle = None
    try:
        if is_local(uri):
            source: Any = local_path(uri)
        else:
            handle = source = open_input(uri, storage_options, block_size=READ_BLOCK)
        try:
            container = av.open(source, mode="r", metadata_errors="ignore")
        except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
            raise StageError(stage, f"cannot open as a video container ({describe(exc)})") from exc
        try:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise StageError(stage, f"no video stream (streams: {', '.join(kinds)})")
            stream = _main_video_stream(container)
            if stream.codec_context is None:  # else an AttributeError further on
                raise StageError(stage, "video stream has no decodable codec (unknown or cut off)")
            stream.thread_type = "AUTO"
            yield container, stream
        finally:
            container.close()
    finally:
        if handle is not None:
            handle.close()


def _main_video_stream(container: Any) -> Any:
    """The video FFmpeg itself would pick (default-flagged, then real motion over a one-frame
    still, then bitrate), never cover art. streams.video[0] took a preview stream or a still
    when it came first, and mixed its frames with the container's duration."""
    streams = [
        s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
    ] or list(container.streams.video)
    best = container.streams.best("video")
    return best if best in streams else streams[0]


def probe(uri: str, storage_options: Mapping[str, Any] | None = None) -> VideoInfo:
    """Read duration, rate, size and codec from the container header (end checked on packets)."""
    with open_video(uri, storage_options, stage="probe") as (container, stream):
        return video_info(container, stream, measure=True, rewind=False)


def video_info(
    container: Any, stream: Any, *, measure: bool = False, rewind: bool = True
) -> VideoInfo:
    """`measure` checks the header's end against the last packets; without it, only headers
    without a per-stream duration (Matroska, WebM, FLV ...) are checked. `rewind`: go back to
    the start after that check (decoding goes on from there; probing does not)."""
    if container.format.name.endswith("_pipe") or container.format.name == "image2":
        # FFmpeg opens a lone JPEG/PNG (whatever its extension) as a one-frame stream.
        raise StageError("probe", f"a still image ({container.format.name}), not a video")
    tb = stream.time_base
    start_s = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
    if stream.duration and tb:
        duration = float(stream.duration * tb)
    elif container.duration:
        duration = container.duration / av.time_base - max(
            0.0, start_s - _container_start(container)
        )
    else:
        duration = 0.0
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    ctx = stream.codec_context
    if duration <= 0 and stream.frames and fps:
        duration = stream.frames / fps
    packets_end = None
    if tb and (measure or not stream.duration):
        duration, packets_end = _checked_duration(container, stream, start_s, duration, fps, rewind)
    if duration <= 0:
        raise StageError("probe", "video stream has no duration (no frames or broken index)")
    if not ctx.width or not ctx.height:
        raise StageError("probe", "video stream has no frame size")
    return VideoInfo(
        duration_s=duration,
        fps=fps,
        width=ctx.width,
        height=ctx.height,
        codec=ctx.name,
        start_s=start_s,
        packets_end_s=packets_end,
    )


def _container_start(container: Any) -> float:
    return container.start_time / av.time_base if container.start_time else 0.0


def _checked_duration(
    container: Any, stream: Any, start_s: float, header: float, fps: float, rewind: bool
) -> tuple[float, float | None]:
    """The video's duration from where its packets end, when the header is not to be trusted.

    Headers disagree on what "duration" means: Matroska/WebM and FLV store the end time (so a
    stream starting at 5 s looked 5 s longer, and the tail was padded with the last frame), the
    MP4 muxer counts B-frame VFR tracks short (the tail was never indexed), and live WebM has
    none. The packets after the last keyframe settle it. A file whose packets (of every stream)
    end well before the header says is truncated: the header is kept so decoding reports it,
    and where the packets end comes back with it (else None).
    """
    tol = 0.02 + (1.5 / fps if fps else 0.0)
    header_end = start_s + header if header > 0 else None
    video_end, any_end = _packet_ends(container, stream, header_end, fps, rewind)
    if video_end is None:
        if header_end is None:
            return header, None
        # No packet near the end at all (an index pointing past the end of a cut file): find
        # roughly where the packets stop, for planning; decoding still reports the truncation.
        last = _last_packet_time(container, stream, start_s, header_end, rewind)
        return header, (last - start_s if last is not None else None)
    measured = video_end - start_s
    absolute_end = container.duration / av.time_base if container.duration else None
    if (
        header_end is None
        or video_end >= header_end - tol  # agrees, or the header counts short
        or (any_end is not None and any_end >= header_end - tol)  # audio runs on past the video
        or (absolute_end is not None and abs(video_end - absolute_end) <= tol)  # end-time header
    ):
        return measured, None
    return header, measured


def _packet_ends(
    container: Any, stream: Any, hint_end: float | None, fps: float, rewind: bool
) -> tuple[float | None, float | None]:
    """(end of the video packets, end of any stream's packets) in seconds: demuxing only, no
    decoding, from the packet about a second before `hint_end` to EOF (any packet, not the
    keyframe before it: the last packets settle the end, and reading a whole 10 s GOP for that
    is waste); when nothing is there (a header that overstates: Matroska end times), from the
    last keyframe before the hint, or the last one at all. With `rewind` the position goes
    back to the start."""
    tb = stream.time_base
    ends: tuple[float | None, float | None] = (None, None)
    try:
        if hint_end is not None:
            ends = _ends_from(container, stream, max(hint_end - _TAIL_S, 0.0) / tb, fps, True)
        if ends[0] is None:
            target = hint_end if hint_end is not None else 1e7  # past any end: the last keyframe
            ends = _ends_from(container, stream, target / tb, fps, False)
    except (av.FFmpegError, OSError, EOFError):
        ends = (None, None)  # an unreadable tail: the header stands, decoding will judge
    finally:
        if rewind:
            _rewind(container, stream)
    return ends


def _ends_from(
    container: Any, stream: Any, target: float, fps: float, any_frame: bool
) -> tuple[float | None, float | None]:
    tb = stream.time_base
    video_end = any_end = None
    container.seek(int(target), stream=stream, backward=True, any_frame=any_frame)
    for packet in container.demux():
        if packet.pts is None or packet.stream.time_base is None:
            continue
        span = packet.duration or 0
        if packet.stream.index == stream.index and fps:
            # With B-frames a packet's duration is its dts step, not how long it is shown.
            span = min(span, 1 / (fps * tb)) if span else 1 / (fps * tb)
        end = float((packet.pts + span) * packet.stream.time_base)
        if packet.stream.index == stream.index:
            video_end = end if video_end is None else max(video_end, end)
        any_end = end if any_end is None else max(any_end, end)
    return video_end, any_end


# Packets read before the header's end to find where the video ends: more than any decoder's
# reorder window (the latest-shown packet is among the last few decoded).
_TAIL_S = 1.0


def _last_packet_time(
    container: Any, stream: Any, start_s: float, end_s: float, rewind: bool
) -> float | None:
    """About where the video's packets stop (to a second), by bisection: a few seeks, each
    reading a packet or two. None when even the start has none."""
    tb = stream.time_base

    def has_packet_after(t: float) -> float | None:
        try:
            container.seek(int(t / tb), stream=stream, backward=True, any_frame=True)
            for packet in container.demux(stream):
                if packet.pts is not None:
                    at = float(packet.pts * tb)
                    return at if at >= t - _TAIL_S else None
        except (av.FFmpegError, OSError, EOFError):
            return None
        return None

    low, high = start_s, end_s
    if has_packet_after(low) is None:
        return None
    try:
        while high - low > _TAIL_S:
            middle = (low + high) / 2
            found = has_packet_after(middle)
            low, high = (max(middle, found), high) if found is not None else (low, middle)
    finally:
        if rewind:
            _rewind(container, stream)
    return low


def _rewind(container: Any, stream: Any) -> None:
    """Back to the stream's start for the caller's decode (a failed seek: the decode judges)."""
    try:
        container.seek(stream.start_time or 0, stream=stream, backward=True)
    except (av.FFmpegError, OSError, EOFError):
        pass
