"""Media and reference code for jobs/benchmark.py: synthetic H.264 files made with PyAV and
cached by parameters, and the non-vidbatch side of each comparison (a bare PyAV loop, the
read_videos baseline's sampling, a shared detector stage, an S3 server that counts bytes).

Frames are built with numpy (a textured background panned per frame, moving bars, a little
pre-computed noise) directly as yuv420p planes, so making a 20-minute 720p file is bounded by
x264, not Python. Keyframes sit exactly every `keyint` frames (scenecut off).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import av
import numpy as np

from vidbatch.job.plan import clip_starts, frame_times
from vidbatch.media.decode import clip_frame_times
from vidbatch.media.footage import write_footage
from vidbatch.media.synth import write_keyframed
from vidbatch.specs import ClipSpec, FrameSpec


def cache_dir(root: str | os.PathLike[str]) -> Path:
    """The cache folder, with a .gitignore of its own so nothing in it reaches git."""
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    ignore = path / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return path


def _planes(width: int, height: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    # Smooth texture: random 8x8 blocks, upsampled, on a gradient; twice the frame so it can pan.
    blocks = rng.integers(40, 200, (height // 4 + 1, width // 4 + 1), dtype=np.uint8)
    texture = np.kron(blocks, np.ones((8, 8), np.uint8))[: 2 * height, : 2 * width]
    texture = np.pad(
        texture, ((0, 2 * height - texture.shape[0]), (0, 2 * width - texture.shape[1]))
    )
    noise = [rng.integers(-6, 7, (height, width), dtype=np.int16) for _ in range(8)]
    return texture, noise


def make_video(
    path: Path,
    *,
    seconds: float,
    width: int = 1280,
    height: int = 720,
    fps: int = 30,
    keyint: int = 30,
    seed: int = 0,
    preset: str = "superfast",
) -> Path:
    """Write an H.264 (libx264, yuv420p) mp4 unless it is already cached; returns `path`."""
    if path.exists():
        return path
    tmp = path.with_suffix(".part.mp4")
    texture, noise = _planes(width, height, seed)
    cols = np.arange(width)
    chroma_u = np.tile(np.linspace(90, 166, width // 2, dtype=np.uint8), (height // 2, 1))
    chroma_v = np.tile(np.linspace(166, 90, height // 2, dtype=np.uint8)[:, None], (1, width // 2))
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = keyint
        stream.codec_context.options = {
            "preset": preset,
            "crf": "23",
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0",
        }
        frame_count = round(seconds * fps)
        for i in range(frame_count):
            dx, dy = (3 * i) % width, (i // 2) % height
            luma = texture[dy : dy + height, dx : dx + width].astype(np.int16) + noise[i % 8]
            bar = ((cols + 7 * i) // 64) % 4 == 0
            luma[:, bar] += 40
            luma[(i * 5) % (height - 40) :][:40] = 235
            yuv = np.concatenate(
                [
                    np.clip(luma, 16, 235).astype(np.uint8),
                    np.roll(chroma_u, i, axis=1).reshape(height // 4, width),
                    np.roll(chroma_v, i, axis=0).reshape(height // 4, width),
                ]
            )
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    tmp.rename(path)
    return path


def video_name(seconds: float, width: int, height: int, keyint: int, seed: int) -> str:
    return f"h264-{width}x{height}-{seconds:g}s-k{keyint}-s{seed}.mp4"


def get_video(
    root: Path,
    seconds: float,
    width: int = 1280,
    height: int = 720,
    *,
    keyint: int = 30,
    seed: int = 0,
) -> Path:
    """The cached video for these parameters, encoded on first use."""
    path = root / video_name(seconds, width, height, keyint, seed)
    return make_video(path, seconds=seconds, width=width, height=height, keyint=keyint, seed=seed)


def footage_name(
    seconds: float, width: int, height: int, keyint: int, seed: int, open_gop: bool
) -> str:
    gop = "open" if open_gop else "closed"
    return f"footage-{width}x{height}-{seconds:g}s-k{keyint}-{gop}-s{seed}.mp4"


def get_footage(
    root: Path,
    seconds: float,
    width: int = 1280,
    height: int = 720,
    *,
    keyint: int = 60,
    seed: int = 0,
    open_gop: bool = False,
) -> Path:
    """Cached real-looking footage (vidbatch.media.footage): 30 fps, x264 veryfast crf 23,
    3 B-frames, a keyframe exactly every `keyint` frames."""
    path = root / footage_name(seconds, width, height, keyint, seed, open_gop)
    if not path.exists():
        write_footage(
            path,
            seconds=seconds,
            width=width,
            height=height,
            keyint=keyint,
            seed=seed,
            open_gop=open_gop,
        )
    return path


def make_irregular(path: Path, *, seconds: float, keys: tuple[float, ...], fps: int = 30) -> Path:
    """A cached 320x240 H.264 file whose only keyframes are at `keys`."""
    if path.exists():
        return path
    return write_keyframed(path, seconds=seconds, fps=fps, keys=keys, width=320, height=240)
    forced = {round(k * fps) for k in keys}
    long_gop = round(seconds * fps) + 1
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.gop_size = long_gop
        stream.codec_context.options = {
            "x264-params": f"keyint={long_gop}:min-keyint={long_gop}:scenecut=0"
        }
        for i in range(round(seconds * fps)):
            image = np.full((240, 320, 3), (i * 7) % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            if i in forced:
                frame.pict_type = av.video.frame.PictureType.I
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


# ---------------------------------------------------------------- inputs for vidbatch runs


def classifier_weights(name: str, root: Path, clip: ClipSpec) -> tuple[str, str]:
    """(weights, note): the shipped checkpoint, else a random-init one of the default arch
    (written anew each time: the family's architecture may have changed since the last run)."""
    import torch

    from vidbatch.models import get_model_spec, load_model
    from vidbatch.models.checkpoint import CheckpointMeta, save_checkpoint
    from vidbatch.models.common import KINETICS_MEAN, KINETICS_STD

    spec = get_model_spec(name)
    if spec.default_weights and os.path.exists(spec.default_weights):
        try:
            load_model(name, device="cpu")
            return spec.default_weights, "shipped"
        except ValueError:  # the shipped asset does not fit the code (yet): use random-init
            pass
    path = root / "weights" / f"{name}-random.safetensors"
    torch.manual_seed(0)
    labels = tuple(f"class{i}" for i in range(8))
    meta = CheckpointMeta(name, spec.family, spec.task, labels, clip, KINETICS_MEAN, KINETICS_STD)
    save_checkpoint(str(path), spec.builder(num_classes=8, clip=clip), meta)
    return str(path), "random-init"


def manifest(root: Path, name: str, paths: list[Path]) -> str:
    path = root / f"manifest-{name}.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["uri"], *[[str(p.resolve())] for p in paths]])
    return str(path)


def ray_start() -> None:
    import ray
    from ray import cloudpickle
    from ray.data import DataContext

    if not ray.is_initialized():  # "local": never join another engineer's cluster on this host
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        cloudpickle.register_pickle_by_value(
            sys.modules[__name__]
        )  # Ray workers cannot import jobs/
        logging.getLogger("ray").setLevel(logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    DataContext.get_current().enable_progress_bars = False
    DataContext.get_current().print_on_execution_start = False


def detector() -> tuple[str, str | None, bool]:
    """(name, weights, registered): the shipped synth-detector, else ssdlite320 through
    vidbatch's loader with "random" weights, else ssdlite320 built here (registering nothing)."""
    from vidbatch.models import load_model

    for name, weights in (("synth-detector", None), (SSDLite.name, "random")):
        try:
            if load_model(name, weights, device="cpu").task == "detect":
                return name, weights, True
        except (ValueError, OSError):  # not registered (yet), or its weights do not load
            continue
    return SSDLite.name, None, False


# ---------------------------------------------------------------- reference (non-vidbatch) code


def bare_decode(path: Path, clip: ClipSpec, frames: FrameSpec) -> tuple[int, int, float]:
    """A plain PyAV loop with the job's samples (clips + detector frames), converting only those.

    Returns (frames decoded, frames used, seconds).
    """
    start = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb, duration = stream.time_base, float(stream.duration * stream.time_base)
        width, height = stream.codec_context.width, stream.codec_context.height
        scale = frames.size / max(width, height)
        det = (round(width * scale), round(height * scale))
        times = clip_frame_times(clip_starts(duration, clip), clip).ravel().tolist()
        wanted = sorted(
            [(t, (clip.size, clip.size)) for t in times]
            + [(t, det) for t in frame_times(duration, frames)]
        )
        kept: list[np.ndarray] = []
        decoded = used = i = 0
        previous = None
        for frame in container.decode(stream):
            decoded += 1
            t = float(frame.pts * tb)
            sizes = set()
            while i < len(wanted) and wanted[i][0] < t - 1e-6:  # shown at w: last pts <= w
                sizes.add(wanted[i][1])
                i += 1
            if sizes and previous is not None:
                used += 1
                kept += [previous.reformat(w, h, "rgb24").to_ndarray() for w, h in sizes]
            previous = frame
            if i == len(wanted):
                break
        if i < len(wanted) and previous is not None:
            used += 1
            kept += [
                previous.reformat(w, h, "rgb24").to_ndarray() for w, h in {s for _, s in wanted[i:]}
            ]
    return decoded, used, time.perf_counter() - start


class SSDLite:
    """torchvision's ssdlite320_mobilenet_v3_large, random weights (no hub download; a frame
    costs what it costs with trained weights); `detect` has vidbatch's detector signature."""

    name = "ssdlite320_mobilenet_v3_large"

    def __init__(self) -> None:
        import torch
        import torchvision

        torch.manual_seed(0)
        build = torchvision.models.detection.ssdlite320_mobilenet_v3_large
        self.model = build(weights=None, weights_backbone=None).eval()

    def detect(self, frames: np.ndarray, *, min_score: float, max_detections: int) -> list[Any]:
        import torch

        # As vidbatch's Detector does: the threshold inside the model, so NMS sees few boxes.
        self.model.score_thresh, self.model.detections_per_img = min_score, max_detections
        found = []
        with torch.inference_mode():
            for i in range(0, len(frames), 8):
                x = torch.from_numpy(np.ascontiguousarray(frames[i : i + 8])).permute(0, 3, 1, 2)
                found += self.model(list(x.float() / 255))
        return [
            (
                o["boxes"][:max_detections].numpy(),
                o["scores"][:max_detections].numpy(),
                o["labels"][:max_detections].numpy(),
            )
            for o in found
        ]


class DetectActor:
    """The model stage both sides share: one output row per frame (uri, time, detections with
    score >= 0.3, top score), 8 frames per model call. Takes read_videos frame rows or
    vidbatch DecodeStage rows."""

    def __init__(self, model: str, weights: str | None, source_fps: float) -> None:
        import torch

        from vidbatch.models import load_model

        torch.manual_seed(0)  # random-init weights are the same on both sides
        if model == SSDLite.name and weights is None:
            self.model: Any = SSDLite()
        else:
            self.model = load_model(model, weights, device="cpu")
            self.model.batch_size = 8  # what InferenceStage sets on CPU
        self.source_fps = source_fps

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if "frames" in batch:  # DecodeStage rows: one segment each, frames as bytes + shape
            arrays = [
                np.frombuffer(b, np.uint8).reshape(tuple(s))
                for b, s in zip(batch["frames"], batch["frames_shape"], strict=True)
            ]
            frames, times = np.concatenate(arrays), np.concatenate(list(batch["frame_times"]))
            uris = np.repeat(batch["uri"], [len(a) for a in arrays])
        else:
            frames, uris = batch["frame"], batch["path"]
            times = batch["frame_index"] / self.source_fps
        found = self.model.detect(frames, min_score=0.3, max_detections=100)
        return {
            "uri": uris,
            "frame_time_s": times,
            "detections": [int((s >= 0.3).sum()) for _, s, _ in found],
            "top_score": [float(s.max()) if len(s) else 0.0 for _, s, _ in found],
        }


def keep_and_resize(batch: dict[str, np.ndarray], stride: int, size: int) -> dict[str, Any]:
    """read_videos baseline sampling: frame_index % stride == 0, longer side -> size (bilinear)."""
    import torch
    import torch.nn.functional as F

    mask = batch["frame_index"] % stride == 0
    h, w = batch["frame"].shape[1:3]
    shape = (round(h * size / max(h, w)), round(w * size / max(h, w)))
    frames = np.empty((0, *shape, 3), np.uint8)
    if mask.any():
        x = torch.from_numpy(batch["frame"][mask]).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=shape, mode="bilinear", antialias=True, align_corners=False)
        frames = x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return {"path": batch["path"][mask], "frame_index": batch["frame_index"][mask], "frame": frames}


@contextmanager
def s3_counting(path: Path) -> Iterator[tuple[str, dict[str, Any], list[int]]]:
    """Serve `path` from a moto S3 server: (uri, storage_options, sizes of the GETs s3fs made)."""
    import boto3
    import s3fs.core
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    with redirect_stdout(io.StringIO()):
        server.start()
    original, fetched = s3fs.core.S3File._fetch_range, []

    def counting(self: Any, start: int, end: int) -> bytes:
        data = original(self, start, end)
        fetched.append(len(data))
        return data

    try:
        endpoint = f"http://127.0.0.1:{port}"
        creds = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)
        client.create_bucket(Bucket="bench")
        client.upload_file(str(path), "bench", path.name)
        options = {"key": "bench", "secret": "bench"}
        options["client_kwargs"] = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        s3fs.core.S3File._fetch_range = counting
        yield f"s3://bench/{path.name}", options, fetched
    finally:
        s3fs.core.S3File._fetch_range = original
        server.stop()
