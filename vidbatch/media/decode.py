"""PyAV probing and decoding: each work unit is opened once, seeked to its first keyframe,
and only the frames the models use are converted (and converted once, at the size they need)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np

from vidbatch.errors import StageError, describe
from vidbatch.specs import ClipSpec, FrameSpec
from vidbatch.storage import is_local, local_path, open_input

DECODE_MODES = ("seek", "all", "keyframes")

# A frame is "displayed at t" when its presentation time is <= t; this absorbs float rounding.
_EPS = 1e-6


@dataclass(frozen=True)
class VideoInfo:
    """What probing a container tells: enough to plan work without decoding."""

    duration_s: float
    fps: float
    width: int
    height: int
    codec: str
    start_s: float = 0.0


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
        return _info(container, stream, measure=True)


def _info(container: Any, stream: Any, *, measure: bool = False) -> VideoInfo:
    """`measure` checks the header's end against the last packets; without it, only headers
    without a per-stream duration (Matroska, WebM, FLV ...) are checked."""
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
    if tb and (measure or not stream.duration):
        duration = _checked_duration(container, stream, start_s, duration, fps)
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
    )


def _container_start(container: Any) -> float:
    return container.start_time / av.time_base if container.start_time else 0.0


def _checked_duration(
    container: Any, stream: Any, start_s: float, header: float, fps: float
) -> float:
    """The video's duration from where its packets end, when the header is not to be trusted.

    Headers disagree on what "duration" means: Matroska/WebM and FLV store the end time (so a
    stream starting at 5 s looked 5 s longer, and the tail was padded with the last frame), the
    MP4 muxer counts B-frame VFR tracks short (the tail was never indexed), and live WebM has
    none. The packets after the last keyframe settle it. A file whose packets (of every stream)
    end well before the header says is truncated: the header is kept so decoding reports it.
    """
    tol = 0.02 + (1.5 / fps if fps else 0.0)
    header_end = start_s + header if header > 0 else None
    video_end, any_end = _packet_ends(container, stream, header_end, fps)
    if video_end is None:
        return header
    measured = video_end - start_s
    absolute_end = container.duration / av.time_base if container.duration else None
    if (
        header_end is None
        or video_end >= header_end - tol  # agrees, or the header counts short
        or (any_end is not None and any_end >= header_end - tol)  # audio runs on past the video
        or (absolute_end is not None and abs(video_end - absolute_end) <= tol)  # end-time header
    ):
        return measured
    return header


def _packet_ends(
    container: Any, stream: Any, hint_end: float | None, fps: float
) -> tuple[float | None, float | None]:
    """(end of the video packets, end of any stream's packets) in seconds, from the last video
    keyframe before `hint_end` to EOF: demuxing only, no decoding. The position is rewound."""
    tb = stream.time_base
    video_end = any_end = None
    target = hint_end if hint_end is not None else 1e7  # past any end: the last keyframe
    try:
        container.seek(int(target / tb), stream=stream, backward=True)
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
    except (av.FFmpegError, OSError, EOFError):
        return None, None  # an unreadable tail: the header stands, decoding will judge
    finally:
        try:
            container.seek(stream.start_time or 0, stream=stream, backward=True)
        except (av.FFmpegError, OSError, EOFError):
            pass
    return video_end, any_end


@dataclass
class SampledFrames:
    """What one decode pass produced for a work unit."""

    clips: dict[ClipSpec, np.ndarray] = field(default_factory=dict)  # (N, T, S, S, 3) uint8
    frames: np.ndarray | None = None  # (M, H, W, 3) uint8, detector input
    frame_times: np.ndarray | None = None  # (M,) when each of `frames` is shown, from the start
    frames_decoded: int = 0
    frames_used: int = 0


def clip_frame_times(starts: Sequence[float], clip: ClipSpec) -> np.ndarray:
    """(N, T) sample times: clip i shows the frames displayed at starts[i] + j / fps."""
    return np.asarray(starts, dtype=np.float64)[:, None] + np.arange(clip.frames) / clip.fps


def decode_samples(
    uri: str,
    *,
    clips: Mapping[ClipSpec, Sequence[float]] | None = None,
    frame_spec: FrameSpec | None = None,
    frame_times: Sequence[float] = (),
    storage_options: Mapping[str, Any] | None = None,
    mode: str = "seek",
) -> SampledFrames:
    """Decode one work unit once and sample every clip spec and the detector frames from it.

    `clips` maps each clip spec to its clip start times (seconds from the video start);
    `mode` is one of DECODE_MODES (see `_frames_at`).
    Raises StageError("decode", ...) for corrupt or truncated streams.
    """
    clips = {spec: list(starts) for spec, starts in (clips or {}).items() if len(starts)}
    wanted: list[tuple[float, Any, int]] = []  # (time, output key, flat index)
    for spec, starts in clips.items():
        for index, t in enumerate(clip_frame_times(starts, spec).ravel()):
            wanted.append((float(t), spec, index))
    if frame_spec is not None:
        wanted.extend((float(t), frame_spec, index) for index, t in enumerate(frame_times))
    out = SampledFrames()
    if not wanted:
        return out
    wanted.sort(key=lambda item: item[0])

    counts: dict[Any, int] = {spec: len(starts) * spec.frames for spec, starts in clips.items()}
    if frame_spec is not None:
        counts[frame_spec] = len(frame_times)
    buffers: dict[Any, np.ndarray] = {}
    shown_at = np.zeros(len(frame_times))
    with open_video(uri, storage_options) as (container, stream):
        info = _info(container, stream)
        converted: dict[tuple[int, Any], np.ndarray] = {}
        for (_t, key, index), frame in _frames_at(container, stream, info, wanted, out, mode):
            cache_key = (id(frame), key)
            if cache_key not in converted:
                if not any(k[0] == id(frame) for k in converted):
                    converted = {}  # a new frame: the previous one's conversions are done with
                    out.frames_used += 1
                # The display matrix rides on decoded frames; the picture is stored unrotated.
                rotation = int(getattr(frame, "rotation", 0) or 0) % 360
                shape = _output_shape(key, frame.width, frame.height, rotation)
                converted[cache_key] = _convert(frame, shape, rotation)
            if key not in buffers:
                buffers[key] = np.empty((counts[key], *converted[cache_key].shape), np.uint8)
            buffers[key][index] = converted[cache_key]
            if key is frame_spec:
                shown_at[index] = max(0.0, float(frame.pts * stream.time_base) - info.start_s)

    for spec, starts in clips.items():
        out.clips[spec] = buffers[spec].reshape(len(starts), spec.frames, spec.size, spec.size, 3)
    if frame_spec is not None:
        out.frames, out.frame_times = buffers[frame_spec], shown_at
    return out


def _frames_at(
    container: Any,
    stream: Any,
    info: VideoInfo,
    wanted: list[tuple[float, Any, int]],
    out: SampledFrames,
    mode: str,
) -> Iterator[tuple[tuple[float, Any, int], Any]]:
    """Yield (request, frame displayed at the request's time).

    Decoding starts at the keyframe before the first request. In "seek" and "keyframes" mode a
    gap longer than the keyframe interval is jumped with another seek instead of decoded through;
    "keyframes" also tells the decoder to skip non-key frames (each sample = latest keyframe).
    """
    if mode == "keyframes":
        stream.codec_context.skip_frame = "NONKEY"
    time_base = stream.time_base
    gop = 1.0  # seconds between keyframes, learned while decoding
    last_key = None
    pending, previous, last_time = 0, None, -math.inf
    # A seek that lands at or before where decoding already was (the only keyframe before the
    # target is behind us) would repeat forever: decode through until a newer keyframe instead.
    stuck_at = -math.inf
    while pending < len(wanted):
        target, seek_from = wanted[pending][0], last_time
        if target > 0 and time_base:
            container.seek(int((target + info.start_s) / time_base), stream=stream, backward=True)
        previous, jumped, landed = None, False, False
        try:
            for frame in container.decode(stream):
                out.frames_decoded += 1
                if frame.pts is None:
                    continue
                t = float(frame.pts * time_base) - info.start_s
                if not landed:
                    landed = True
                    if t <= seek_from + _EPS:
                        stuck_at = seek_from
                if frame.key_frame:
                    if last_key is not None and t - last_key > 1e-3:
                        gop = t - last_key
                    last_key = t
                while pending < len(wanted) and t > wanted[pending][0] + _EPS:
                    yield wanted[pending], previous if previous is not None else frame
                    pending += 1
                previous, last_time = frame, t
                if pending == len(wanted):
                    return
                may_jump = stuck_at == -math.inf or (last_key is not None and last_key > stuck_at)
                if mode != "all" and may_jump and wanted[pending][0] - t > max(gop, 0.5) + _EPS:
                    jumped = True
                    break
        except av.FFmpegError as exc:
            raise StageError(
                "decode", f"decoder error after {max(last_time, 0):.2f}s ({describe(exc)})"
            ) from exc
        if not jumped:
            break
    if previous is None:
        first = wanted[pending][0]
        raise StageError("decode", f"no decodable frames from {first:.2f}s: truncated or corrupt")
    # The last frame is shown until its own end (in keyframes mode, until the next keyframe's
    # would be). A request after that but inside the container's duration means frames are
    # missing. Checking only the last request (always near the end) let a truncated file pass
    # with every later sample padded by its last frame. Requests past the duration are a short
    # video's clip padding.
    shown = float(previous.duration * time_base) if previous.duration and time_base else 0.0
    if info.fps:  # with B-frames a frame's duration is its dts step, not how long it is shown
        shown = min(shown, 1.0 / info.fps) if shown else 1.0 / info.fps
    frame_end = last_time + shown + (gop if mode == "keyframes" else 0.0)
    tol = 0.01  # timestamps in milliseconds round
    if any(frame_end + tol < t < info.duration_s - tol for t, _, _ in wanted[pending:]):
        raise StageError(
            "decode",
            f"stream ends at {frame_end:.2f}s but the container says {info.duration_s:.2f}s: "
            "truncated or corrupt",
        )
    for request in wanted[pending:]:
        yield request, previous


def _output_shape(key: Any, width: int, height: int, rotation: int) -> tuple[int, int]:
    """(height, width) after display rotation: clips are square, detector frames keep aspect."""
    if isinstance(key, ClipSpec):
        return key.size, key.size
    if rotation in (90, 270):
        width, height = height, width
    scale = key.size / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _convert(frame: Any, shape: tuple[int, int], rotation: int) -> np.ndarray:
    """RGB array of the displayed picture at `shape` (height, width); rotation applied after scaling."""
    height, width = shape
    if rotation in (90, 270):
        height, width = width, height
    rgb = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
    if rotation:
        # Display matrix rotation is counter-clockwise; np.rot90 rotates counter-clockwise for k > 0.
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    return rgb


def decode_clips(
    uri: str,
    starts: Sequence[float],
    clip: ClipSpec,
    storage_options: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """(N, T, S, S, 3) uint8 clips starting at `starts`; the decode path training shares with inference."""
    return decode_samples(uri, clips={clip: starts}, storage_options=storage_options).clips.get(
        clip, np.empty((0, clip.frames, clip.size, clip.size, 3), np.uint8)
    )
