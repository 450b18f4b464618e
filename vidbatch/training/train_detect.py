"""Train the shipped `synth-detector` from scratch on synthetic archives, and score it.

Frames are decoded with `vidbatch.media.decode.decode_samples` at the detector's frame size, the path
inference uses, and boxes come from the archive's boxes.parquet at exactly those frame times.
The held-out set is a fresh archive made with another seed, scored with
`vidbatch.tools.evaluate.evaluate_detection` through `Detector.detect`, so the mAP recorded in the
checkpoint is the one `vidbatch eval` would report. Everything is seeded: the same command and
thread count give bit-identical weights (the file, and so its version, differs only by the
timings recorded in its metadata).

Augmentations keep every box valid and every label true: flips (the shapes are symmetric
classes), channel order, brightness and contrast.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vidbatch.media.decode import decode_samples
from vidbatch.media.synth import SHAPES, SynthArchive, synthesize
from vidbatch.models.checkpoint import CheckpointMeta, save_checkpoint, weights_version
from vidbatch.models.common import param_count
from vidbatch.models.detection import (
    FAMILY,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Detector,
    detections_table,
    frames_to_tensor,
)
from vidbatch.models.registry import asset_path, check_arch, get_model_spec
from vidbatch.specs import ClipSpec, FrameSpec
from vidbatch.tools.evaluate import BOX_COLUMNS, evaluate_detection

Log = Callable[[str], None]
MODEL = "synth-detector"
COMMAND = "python jobs/train_detector.py"


@dataclass(frozen=True)
class DetectorTrainConfig:
    """Everything that decides the shipped checkpoint; recorded in its metadata."""

    output: str = asset_path("synth-detector.safetensors")
    train_videos: int = 400
    holdout_videos: int = 80
    frames_per_video: int = 6
    train_seed: int = 1
    holdout_seed: int = 2  # a different archive: held-out frames are never seen in training
    min_seconds: float = 2.0
    max_seconds: float = 4.0
    arch: dict[str, Any] = field(default_factory=lambda: {"size": 160})
    epochs: int = 12
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1  # these small convolutions gain little from more; 2 thrash on a busy host
    eval_every: int = 0  # also score the held-out set every N epochs (0: only at the end)
    work_dir: str | None = None  # where the archives go; a temporary folder when None


@dataclass(frozen=True)
class TrainedDetector:
    """Where the checkpoint went, its version (sha256[:12] of the file) and its metrics."""

    output: str
    version: str
    size_bytes: int
    metrics: dict[str, Any]


@dataclass
class FrameSet:
    """Decoded frames with their truth: boxes normalized 0..1 and label indices into SHAPES."""

    frames: list[np.ndarray]
    boxes: list[np.ndarray]  # (K, 4) float32 per frame
    labels: list[np.ndarray]  # (K,) int64 per frame
    uris: list[str]
    times: list[float]
    truth: pa.Table  # boxes.parquet rows at the sampled frames

    def frames_table(self) -> pa.Table:
        return pa.table({"uri": self.uris, "frame_time_s": pa.array(self.times, pa.float64())})


def sample_frames(
    archive: SynthArchive, *, seed: int, frames_per_video: int, size: int
) -> FrameSet:
    """Decode `frames_per_video` random frames of each video of a synth archive at `size`.

    Frame times are exact frame positions (k / fps), so every truth row lines up with one
    decoded frame; frames where the shape is hidden (blinking, off screen) are kept as negatives.
    The same seed picks the same frames at any size.
    """
    manifest = pq.read_table(archive.labels_uri).to_pylist()
    boxes = pq.read_table(archive.boxes_uri)
    by_uri: dict[str, list[dict]] = {}
    for row in boxes.to_pylist():
        by_uri.setdefault(row["uri"], []).append(row)
    rng = np.random.default_rng(seed)
    spec = FrameSpec(size=size)
    out = FrameSet([], [], [], [], [], boxes.schema.empty_table())
    truth_rows: list[dict] = []
    for video in manifest:
        count = max(2, round(video["seconds"] * video["fps"]))
        picks = np.sort(rng.choice(count, size=min(frames_per_video, count), replace=False))
        times = [float(k) / video["fps"] for k in picks]
        decoded = decode_samples(video["uri"], frame_spec=spec, frame_times=times).frames
        rows = by_uri.get(video["uri"], [])
        for t, frame in zip(times, decoded if decoded is not None else [], strict=True):
            here = [r for r in rows if abs(r["frame_time_s"] - t) <= 1e-3]
            truth_rows.extend(here)
            out.frames.append(frame)
            out.boxes.append(np.array([[r[c] for c in BOX_COLUMNS] for r in here], np.float32))
            out.labels.append(np.array([SHAPES.index(r["label"]) for r in here], np.int64))
            out.uris.append(video["uri"])
            out.times.append(t)
    out.boxes = [b.reshape(-1, 4) for b in out.boxes]
    out.truth = pa.Table.from_pylist(truth_rows, schema=boxes.schema)
    return out


def _augment(
    frame: np.ndarray, boxes: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Label-preserving flips and photometric jitter; boxes stay normalized."""
    boxes = boxes.copy()
    if rng.random() < 0.5:
        frame = frame[:, ::-1]
        boxes[:, [0, 2]] = 1.0 - boxes[:, [2, 0]]
    if rng.random() < 0.5:
        frame = frame[::-1]
        boxes[:, [1, 3]] = 1.0 - boxes[:, [3, 1]]
    frame = frame[..., rng.permutation(3)].astype(np.float32)
    contrast, brightness = rng.uniform(0.7, 1.3), rng.uniform(-30.0, 30.0)
    frame = (frame - frame.mean()) * contrast + frame.mean() + brightness
    return np.clip(frame, 0, 255).astype(np.uint8), boxes


def _targets(frame: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
    height, width = frame.shape[:2]
    pixels = boxes * np.array([width, height, width, height], np.float32)
    return {"boxes": torch.from_numpy(pixels), "labels": torch.from_numpy(labels)}


def score(detector: Detector, frames: FrameSet, *, min_score: float = 0.05) -> dict[str, Any]:
    """evaluate_detection of `detector` over a frame set (every sampled frame scored)."""
    found = detector.detect(frames.frames, min_score=min_score, max_detections=20)
    parts = []
    for uri in dict.fromkeys(frames.uris):
        rows = [i for i, u in enumerate(frames.uris) if u == uri]
        times = [frames.times[i] for i in rows]
        parts.append(
            detections_table(detector, [found[i] for i in rows], uri=uri, frame_times=times)
        )
    table = pa.concat_tables(parts)
    return evaluate_detection(table, frames.truth, frames=frames.frames_table()).get(
        detector.name, {"map_50": 0.0, "map_50_95": 0.0, "ap_50": {}}
    )


def _detector(module: torch.nn.Module, arch: dict[str, Any]) -> Detector:
    """The module being trained, wrapped as inference will see it (eval mode, CPU)."""
    return Detector(
        name=MODEL, family=FAMILY, module=module, version="training", labels=SHAPES,
        frame=FrameSpec(size=arch["size"]), device="cpu",
    )  # fmt: skip


def train_detector(
    config: DetectorTrainConfig, log: Log = print, *, command: str = COMMAND
) -> TrainedDetector:
    """Train, score on the held-out archive and write the checkpoint with its metrics.

    `command` is recorded in the metadata as how to reproduce it.
    """
    started = time.perf_counter()
    spec = get_model_spec(MODEL)
    check_arch(spec, config.arch)
    arch = {**spec.arch_defaults(), **config.arch}
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    with tempfile.TemporaryDirectory(prefix="vidbatch-detector-") as scratch:
        work = Path(config.work_dir or scratch)
        log(f"synthesizing {config.train_videos} + {config.holdout_videos} videos under {work}")
        seconds = {"min_seconds": config.min_seconds, "max_seconds": config.max_seconds}
        train_archive = synthesize(
            work / "train", config.train_videos, seed=config.train_seed, **seconds
        )
        holdout_archive = synthesize(
            work / "holdout", config.holdout_videos, seed=config.holdout_seed, **seconds
        )
        per_video = config.frames_per_video
        train = sample_frames(
            train_archive, seed=config.train_seed, frames_per_video=per_video, size=arch["size"]
        )
        holdout = sample_frames(
            holdout_archive, seed=config.holdout_seed, frames_per_video=per_video, size=arch["size"]
        )
        # The same frames at the job's default size: the model's transform resizes them itself.
        job_size = FrameSpec().size
        holdout_job = sample_frames(
            holdout_archive, seed=config.holdout_seed, frames_per_video=per_video, size=job_size
        )
    data_seconds = time.perf_counter() - started
    log(f"{len(train.frames)} train / {len(holdout.frames)} held-out frames ({data_seconds:.0f}s)")

    module = spec.builder(num_classes=len(SHAPES), clip=None, **config.arch)
    log(f"{MODEL}: {param_count(module):,} parameters, frames at {arch['size']} px")
    steps_per_epoch = math.ceil(len(train.frames) / config.batch_size)
    # OneCycleLR needs a warm-up of 2+ steps; a tiny smoke run stops early in a padded schedule.
    total_steps = max(steps_per_epoch * config.epochs, 20)
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=0.1
    )
    train_started, cpu_started = time.perf_counter(), time.process_time()
    loss_value = math.nan
    for epoch in range(config.epochs):
        module.train()
        order = rng.permutation(len(train.frames))
        losses = []
        for first in range(0, len(order), config.batch_size):
            images, targets = [], []
            for i in order[first : first + config.batch_size]:
                frame, boxes = _augment(train.frames[i], train.boxes[i], rng)
                images.append(frames_to_tensor(frame))
                targets.append(_targets(frame, boxes, train.labels[i]))
            loss = sum(module(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 10.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        loss_value = float(np.mean(losses))
        progress = ""
        last = epoch + 1 == config.epochs
        if config.eval_every and (epoch + 1) % config.eval_every == 0 and not last:
            progress = f", held-out mAP@0.5 {score(_detector(module, arch), holdout)['map_50']:.3f}"
        wall, cpu = time.perf_counter() - train_started, time.process_time() - cpu_started
        log(
            f"epoch {epoch + 1}/{config.epochs}: loss {loss_value:.3f}{progress} "
            f"({wall:.0f}s, cpu {cpu:.0f}s)"
        )
    train_seconds = time.perf_counter() - train_started
    train_cpu_seconds = time.process_time() - cpu_started
    detector = _detector(module, arch)
    held = score(detector, holdout)
    held_job = score(detector, holdout_job)
    metrics = {
        "holdout_map_50": round(held["map_50"], 4),
        "holdout_map_50_95": round(held["map_50_95"], 4),
        "holdout_ap_50": {k: round(v, 4) for k, v in held["ap_50"].items()},
        f"holdout_map_50_at_{job_size}px": round(held_job["map_50"], 4),
        f"holdout_map_50_95_at_{job_size}px": round(held_job["map_50_95"], 4),
        "holdout_frames": len(holdout.frames),
        "holdout_boxes": holdout.truth.num_rows,
        "train_frames": len(train.frames),
        "final_loss": round(loss_value, 4),
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "threads": config.threads,
        "command": command,
        "config": {k: v for k, v in asdict(config).items() if k not in ("output", "work_dir")},
        "torch": torch.__version__,
    }
    meta = CheckpointMeta(
        name=MODEL,
        family=FAMILY,
        task="detect",
        labels=SHAPES,
        clip=ClipSpec(),  # unused by detectors; the frame size is arch["size"]
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        arch=arch,
        metrics=metrics,
    )
    data = save_checkpoint(config.output, module, meta)
    log(
        f"held-out mAP@0.5 {metrics['holdout_map_50']:.3f}, mAP@0.5:0.95 "
        f"{metrics['holdout_map_50_95']:.3f} ({metrics['holdout_frames']} frames); "
        f"at {job_size}px input {metrics[f'holdout_map_50_at_{job_size}px']:.3f}"
    )
    log(
        f"wrote {config.output} ({len(data) / 1e6:.1f} MB, version {weights_version(data)}) "
        f"in {metrics['total_seconds']:.0f}s"
    )
    return TrainedDetector(config.output, weights_version(data), len(data), metrics)
