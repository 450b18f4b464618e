"""Hostile inputs for tests, made for real: files that look like videos and are not, and real
videos of the odd kinds archives hold (B-frames, 10-bit, interlaced, rotated, VFR, late starts,
several video streams, extreme sizes). Counter videos show their frame index, so a test can
check which frame a sample time got, not only that a frame came back."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def zero_bytes(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def text_as_video(path: Path) -> Path:
    path.write_text("this is not a video, just text with a video extension\n" * 20)
    return path


def random_bytes(path: Path, size: int = 64 * 1024, seed: int = 0) -> Path:
    """Noise with a video extension (no container signature, no codec)."""
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
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
            frame = av.AudioFrame.from_ndarray(
                samples[:, start : start + 1024], format="fltp", layout="mono"
            )
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def jpeg_image(path: Path, width: int = 64, height: int = 48) -> Path:
    """A plain JPEG picture (FFmpeg opens it as a one-frame image stream), whatever `path` is named."""
    frame = av.VideoFrame.from_ndarray(counter_image(7, width, height), format="rgb24")
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuvj420p"
    codec.time_base = Fraction(1, 25)
    data = b"".join(
        bytes(p) for p in [*codec.encode(frame.reformat(format="yuvj420p")), *codec.encode(None)]
    )
    path.write_bytes(data)
    return path


BITS = 12


def counter_image(index: int, width: int, height: int) -> np.ndarray:
    """(H, W, 3) picture showing `index` in binary as BITS wide black/white vertical stripes."""
    image = np.zeros((height, width, 3), np.uint8)
    edges = np.linspace(0, width, BITS + 1).astype(int)
    for bit in range(BITS):
        if (index >> bit) & 1:
            image[:, edges[bit] : edges[bit + 1]] = 255
    return image


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
    pix_fmt: str = "yuv420p",
    times: Sequence[float] | None = None,
    start_s: float = 0.0,
    rotation: int = 0,
    bframes: int | None = None,
    interlaced: bool = False,
    format: str | None = None,
    extra_video: tuple[int, int, float] | None = None,
    extra_first: bool = False,
    cover_art: tuple[int, int] | None = None,
) -> Path:
    """A video whose frame i shows i in binary as BITS wide black/white stripes (survives scaling).

    Frames are at i / fps (time base 1/fps, first pts `start_pts`), or, with `times`, at those
    seconds (VFR, time base 1/1000) plus `start_s`. `rotation` goes into the display matrix and
    the stored picture is turned back, so a player (and read_counter) sees upright stripes.
    `bframes` fixes the encoder's B-frame run, `interlaced` codes x264 field pictures (tff).
    `extra_video=(width, height, seconds)` adds a second video stream of grey frames at `fps`
    (`extra_first` puts it first in the container); the counter stream is flagged default.
    `cover_art=(width, height)` adds a larger attached picture (MP4 `covr`, a video stream to FFmpeg).
    """
    options = {"movflags": "faststart"} if faststart else {}
    if times is None:
        time_base = Fraction(1, fps)
        pts = [start_pts + i for i in range(int(seconds * fps))]
    else:
        time_base = Fraction(1, 1000)
        pts = [round((start_s + t) * 1000) for t in times]
    extra_count = int(extra_video[2] * fps) if extra_video else 0
    display = (height, width) if rotation in (90, 270) else (width, height)
    with av.open(str(path), "w", format=format, options=options) as container:
        extra = (
            _grey_stream(container, fps, *extra_video[:2]) if extra_video and extra_first else None
        )
        if cover_art:
            art = container.add_stream("mjpeg", rate=1)
            art.width, art.height, art.pix_fmt = *cover_art, "yuvj420p"
            art.disposition = av.stream.Disposition.attached_pic
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = time_base
        stream.codec_context.gop_size = gop or fps
        codec_options = {}
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
            if codec == "libx264":  # exactly `bframes` B-frames between references
                codec_options.update({"bframes": str(bframes), "b-adapt": "0"})
        if interlaced:
            codec_options["x264-params"] = "interlaced=1:tff=1"
        stream.codec_context.options = codec_options
        if rotation:
            stream.set_display_rotation(rotation)
        if extra_video and not extra_first:
            extra = _grey_stream(container, fps, *extra_video[:2])
        if extra is not None:  # the counter is the one a player shows, whatever the order
            stream.disposition = av.stream.Disposition.default
            extra.disposition = av.stream.Disposition(0)
        if cover_art:
            picture = av.VideoFrame.from_ndarray(counter_image(4095, *cover_art), format="rgb24")
            picture.pts = 0
            container.mux([*art.encode(picture), *art.encode(None)])
        for i in range(max(len(pts), extra_count)):
            if i < len(pts):
                # np.rot90 turns counter-clockwise; storing turns the displayed picture back.
                stored = np.ascontiguousarray(
                    np.rot90(counter_image(i, *display), k=-rotation // 90)
                )
                frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
                frame.pts, frame.time_base = pts[i], time_base
                container.mux(stream.encode(frame))
            if i < extra_count:
                grey = np.full((extra.height, extra.width, 3), 128, np.uint8)
                frame = av.VideoFrame.from_ndarray(grey, format="rgb24")
                frame.pts = i
                container.mux(extra.encode(frame))
        container.mux(stream.encode(None))
        if extra is not None:
            container.mux(extra.encode(None))
    return path


def _grey_stream(container, fps: int, width: int, height: int):
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    return stream


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


def shown_at(frame_times: Sequence[float], t: float) -> int:
    """Index of the frame a player shows at `t`: the last one presented at or before it."""
    index = int(np.searchsorted(np.asarray(frame_times), t + 1e-6, side="right")) - 1
    return max(index, 0)


def huge_frame(
    path: Path, width: int, height: int, codec: str = "libx264", frames: int = 1
) -> Path:
    """A few frames of a very large picture (cheap to encode: flat stripes, fastest preset)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libx264":
            stream.codec_context.options = {"preset": "ultrafast"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(counter_image(i, width, height), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def jpeg_claiming(path: Path, width: int, height: int, frames: int = 3) -> Path:
    """A Matroska MJPEG stream whose container says 64x48 but whose JPEG headers claim
    width x height (up to 65535): a decoder that believed them would allocate gigabytes."""
    data = bytearray(jpeg_image(path.with_suffix(".jpg")).read_bytes())
    path.with_suffix(".jpg").unlink()
    sof = data.index(b"\xff\xc0")  # baseline JPEG frame header: length, precision, height, width
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    time_base = Fraction(1, 1000)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        stream.time_base = time_base
        for k in range(frames):
            packet = av.Packet(bytes(data))
            packet.stream, packet.time_base = stream, time_base
            packet.pts = packet.dts = k * 40
            packet.duration, packet.is_keyframe = 40, True
            container.mux(packet)
    return path


def row_iou(a: dict, b: dict) -> float:
    """IoU of two rows with x1, y1, x2, y2 columns (a detection, a ground-truth box)."""
    from vidbatch.tools.evaluate import box_iou

    corners = ("x1", "y1", "x2", "y2")
    return float(box_iou([[a[k] for k in corners]], [[b[k] for k in corners]])[0, 0])
