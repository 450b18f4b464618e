"""Train a registered clip classifier on a labeled manifest and write a vidbatch checkpoint.

Clips are decoded with `vidbatch.media.decode.decode_clips`, the same code inference uses, and cached
in memory as uint8. Videos (not clips) are split into train and held-out sets, so the held-out
accuracy in the checkpoint measures videos the model never saw.

Augmentations must keep the label right. Photometric changes (gain, colour offset, channel order)
always do. Time reversal and mirroring change labels (time reversal turns moving_left into
moving_right, growing into shrinking, cw into ccw), so they are applied only through label maps the
config declares (`train.time_reversal`, `train.hflip`, `train.vflip`: label -> label after the
transform; clips of unlisted labels are never transformed). Showing the same video under both
labels of a pair is what stops a model from memorizing a pair by appearance.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vidbatch.config import parse, read_yaml
from vidbatch.errors import ConfigError, describe
from vidbatch.media.decode import decode_clips, probe
from vidbatch.models.checkpoint import CheckpointMeta, save_checkpoint, weights_version
from vidbatch.models.common import KINETICS_MEAN, KINETICS_STD, clips_to_tensor, param_count
from vidbatch.models.loaded import default_device
from vidbatch.models.registry import check_arch, get_model_spec
from vidbatch.specs import ClipSpec
from vidbatch.storage import filesystem

Log = Callable[[str], None]


@dataclass(frozen=True)
class DataConfig:
    manifest: str  # parquet or csv with columns uri, label
    storage_options: dict[str, Any] = field(default_factory=dict)
    holdout_fraction: float = 0.2
    max_clips_per_video: int = 4
    labels: tuple[str, ...] | None = None  # class order; default: sorted labels of the manifest
    description: str | None = None  # recorded in the checkpoint; default: the manifest URI


@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.05
    augment: bool = True  # photometric: gain, colour offset, channel order
    # label -> label after the transform; a transform is applied (p = 0.5) only to listed labels
    time_reversal: dict[str, str] = field(default_factory=dict)
    hflip: dict[str, str] = field(default_factory=dict)
    vflip: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    workers: int = 1  # > 1: data-parallel (DDP) over Ray Train workers


@dataclass(frozen=True)
class TrainConfig:
    model: str  # registry name; the family comes from its spec
    data: DataConfig
    output: str  # path or URI of the .safetensors checkpoint to write
    clip: ClipSpec = ClipSpec()
    arch: dict[str, Any] = field(default_factory=dict)
    train: LoopConfig = LoopConfig()
    output_storage_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        try:
            check_arch(get_model_spec(self.model), self.arch)
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from None
        if not 0.0 < self.data.holdout_fraction < 1.0:
            raise ConfigError("data.holdout_fraction: must be between 0 and 1 (exclusive)")
        if self.data.max_clips_per_video < 1:
            raise ConfigError("data.max_clips_per_video: must be >= 1")
        if self.clip.frames < 1 or self.clip.fps <= 0 or self.clip.size < 16:
            raise ConfigError("clip: frames >= 1, fps > 0 and size >= 16 required")
        loop = self.train
        if loop.epochs < 1 or loop.batch_size < 1 or loop.lr <= 0 or loop.workers < 1:
            raise ConfigError("train: epochs, batch_size and workers must be >= 1 and lr > 0")
        if not self.output.endswith(".safetensors"):
            raise ConfigError(f"output: must end with .safetensors, got {self.output!r}")
        return self


def load_train_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read and validate a training YAML; a wrong key or value is a one-line ConfigError."""
    data = read_yaml(path, overrides, "model:, data:, clip:, train: ...")
    return parse(TrainConfig, data).validate()


# ---------------------------------------------------------------- data


@dataclass
class ClipSet:
    """Decoded, labeled clips held in memory as uint8, with the video each came from."""

    clips: np.ndarray  # (N, T, S, S, 3) uint8
    targets: np.ndarray  # (N,) int64 index into labels
    videos: np.ndarray  # (N,) int64 index into uris
    uris: list[str]
    video_targets: np.ndarray  # (V,) int64
    labels: tuple[str, ...]
    clip: ClipSpec
    failed: list[tuple[str, str]] = field(default_factory=list)
    decode_seconds: float = 0.0


def read_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(uri, label) rows of a parquet or csv manifest; relative URIs resolve against its folder."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    fs, path = filesystem(uri, storage_options)
    try:
        with fs.open(path, "rb") as handle:
            table = pcsv.read_csv(handle) if path.endswith(".csv") else pq.read_table(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest not found: {uri}") from None
    except Exception as exc:
        raise ConfigError(f"data.manifest {uri}: cannot read ({describe(exc)})") from exc
    missing = {"uri", "label"} - set(table.column_names)
    if missing:
        raise ConfigError(f"data.manifest {uri}: missing column(s) {', '.join(sorted(missing))}")
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    rows = []
    for video, label in zip(
        table.column("uri").to_pylist(), table.column("label").to_pylist(), strict=True
    ):
        if "://" not in video and not os.path.isabs(video):
            video = f"{base}/{video}"
        rows.append((str(video), str(label)))
    if not rows:
        raise ConfigError(f"data.manifest {uri}: no rows")
    return rows


def clip_starts(duration_s: float, clip: ClipSpec, limit: int) -> list[float]:
    """Back-to-back clip starts k * clip.seconds, at most `limit` spread evenly over the video."""
    count = max(1, math.floor(duration_s / clip.seconds + 1e-9))
    chosen = np.unique(np.linspace(0, count - 1, min(count, limit)).round().astype(int))
    return [float(k * clip.seconds) for k in chosen]


def load_clip_set(
    data: DataConfig, clip: ClipSpec, *, threads: int | None = None, log: Log = print
) -> ClipSet:
    """Decode up to `max_clips_per_video` clips per manifest video; a bad video is skipped
    and reported, not fatal (unless every video fails)."""
    rows = read_manifest(data.manifest, data.storage_options)
    labels = tuple(data.labels) if data.labels else tuple(sorted({label for _, label in rows}))
    unknown = sorted({label for _, label in rows} - set(labels))
    if unknown:
        raise ConfigError(f"data.labels: manifest label {unknown[0]!r} is not in the list")
    index = {label: i for i, label in enumerate(labels)}

    def decode(row: tuple[str, str]) -> np.ndarray:
        duration = probe(row[0], data.storage_options).duration_s
        starts = clip_starts(duration, clip, data.max_clips_per_video)
        return decode_clips(row[0], starts, clip, data.storage_options)

    began = time.perf_counter()
    arrays: list[np.ndarray] = []
    targets: list[int] = []
    videos: list[int] = []
    uris: list[str] = []
    video_targets: list[int] = []
    failed: list[tuple[str, str]] = []
    # PyAV releases the GIL while decoding and scaling, so threads overlap well.
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        results = pool.map(_capture(decode), rows)
        for (uri, label), (clips, error) in zip(rows, results, strict=True):
            if error is not None or clips is None or not len(clips):
                failed.append((uri, error or "no clips"))
                continue
            arrays.append(clips)
            targets += [index[label]] * len(clips)
            videos += [len(uris)] * len(clips)
            uris.append(uri)
            video_targets.append(index[label])
    if not arrays:
        raise ValueError(f"data.manifest {data.manifest}: no video decoded ({failed[0][1]})")
    for uri, error in failed[:5]:
        log(f"skipped {uri}: {error}")
    if len(failed) > 5:
        log(f"skipped {len(failed) - 5} more videos")
    return ClipSet(
        clips=np.concatenate(arrays),
        targets=np.asarray(targets, np.int64),
        videos=np.asarray(videos, np.int64),
        uris=uris,
        video_targets=np.asarray(video_targets, np.int64),
        labels=labels,
        clip=clip,
        failed=failed,
        decode_seconds=time.perf_counter() - began,
    )


def _capture(
    fn: Callable[[Any], np.ndarray],
) -> Callable[[Any], tuple[np.ndarray | None, str | None]]:
    def run(row: Any) -> tuple[np.ndarray | None, str | None]:
        try:
            return fn(row), None
        except Exception as exc:  # one bad video is reported and skipped, never fatal
            return None, str(exc) if "decode:" in str(exc) or "probe:" in str(exc) else describe(
                exc
            )

    return run


def split_videos(video_targets: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over videos: True = held out. Stratified per label, deterministic by seed."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(video_targets), bool)
    for label in np.unique(video_targets):
        members = np.flatnonzero(video_targets == label)
        count = min(len(members) - 1, max(1, round(len(members) * fraction)))
        if count > 0:
            held[rng.permutation(members)[:count]] = True
    return held


# ---------------------------------------------------------------- training


TRANSFORMS = ("time_reversal", "hflip", "vflip")


def label_maps(loop: LoopConfig, labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Each declared label map as an index array (-1: label not transformable), made symmetric.

    A one-line ConfigError names the map and the label that is not in `labels`.
    """
    index = {label: i for i, label in enumerate(labels)}
    maps = {}
    for name in TRANSFORMS:
        mapping = getattr(loop, name)
        if not mapping:
            continue
        table = np.full(len(labels), -1, np.int64)
        for src, dst in mapping.items():
            for label in (src, dst):
                if label not in index:
                    raise ConfigError(f"train.{name}: {label!r} is not one of the labels")
            for a, b in ((src, dst), (dst, src)):
                if table[index[a]] not in (-1, index[b]):
                    raise ConfigError(f"train.{name}: {a!r} maps to two labels")
                table[index[a]] = index[b]
        maps[name] = table
    return maps


def transform_labeled(
    clips: np.ndarray, targets: np.ndarray, maps: dict[str, np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Apply each declared transform to half of the clips whose label it maps, with the label."""
    clips, targets = clips.copy(), targets.copy()
    axes = {"time_reversal": 1, "vflip": 2, "hflip": 3}  # (N, T, H, W, C)
    for name, table in maps.items():
        mapped = table[targets]
        chosen = np.flatnonzero((mapped >= 0) & (rng.random(len(targets)) < 0.5))
        if len(chosen):
            clips[chosen] = np.flip(clips[chosen], axis=axes[name])
            targets[chosen] = mapped[chosen]
    return clips, targets


def shuffle_channels(clips: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random RGB order per clip (on uint8, before normalization): colour is not the label."""
    out = np.empty_like(clips)
    for i, clip in enumerate(clips):
        out[i] = clip[..., rng.permutation(3)]
    return out


def jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness/contrast-like gain and per-channel offset, one draw per clip, in place
    (keeps the channels_last layout of the normalized view)."""
    n = x.shape[0]
    gain = torch.empty((n, 1, 1, 1, 1)).uniform_(0.75, 1.25, generator=generator)
    bias = torch.empty((n, 1, 3, 1, 1)).uniform_(-0.3, 0.3, generator=generator)
    return x.mul_(gain.to(x.device)).add_(bias.to(x.device))


def evaluate(
    module: nn.Module,
    clips: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    batch: int = 64,
) -> np.ndarray:
    """Predicted class per clip, in eval mode, on the module's device."""
    module.eval()
    device = next(module.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(clips), batch):
            x = clips_to_tensor(clips[i : i + batch], mean, std, device=device)
            out.append(module(x).argmax(-1).cpu().numpy())
    return np.concatenate(out) if out else np.empty(0, np.int64)


def recall_by_class(
    pred: np.ndarray, target: np.ndarray, labels: Sequence[str]
) -> dict[str, float | None]:
    return {
        label: float((pred[target == i] == i).mean()) if (target == i).any() else None
        for i, label in enumerate(labels)
    }


def fit(
    module: nn.Module,
    train_x: np.ndarray,
    train_y: np.ndarray,
    loop: LoopConfig,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    held_x: np.ndarray | None = None,
    held_y: np.ndarray | None = None,
    rank: int = 0,
    world: int = 1,
    labels: Sequence[str] = (),
    log: Log = print,
) -> list[dict[str, float]]:
    """AdamW + warmup/cosine schedule on the module's device; one line per epoch.

    With `world` > 1 (Ray Train workers) the module is DDP-wrapped and each rank takes every
    world-th sample of the epoch's shared permutation, so all ranks run the same step count.
    """
    core = module.module if isinstance(module, DistributedDataParallel) else module
    device = next(core.parameters()).device
    generator = torch.Generator().manual_seed(loop.seed + rank)
    rng = np.random.default_rng(loop.seed)  # the same permutation on every rank
    aug_rng = np.random.default_rng([loop.seed, rank])
    maps = label_maps(loop, labels) if labels else {}
    decay = [p for p in module.parameters() if p.ndim > 1]
    no_decay = [p for p in module.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": loop.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=loop.lr,
    )
    per_rank = len(train_x) // world
    steps = max(1, math.ceil(per_rank / loop.batch_size))
    total, warmup = loop.epochs * steps, min(steps * 2, loop.epochs * steps // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
        ),
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=loop.label_smoothing)
    first = next(iter(module.parameters()))
    history: list[dict[str, float]] = []
    for epoch in range(1, loop.epochs + 1):
        began = time.perf_counter()
        module.train()
        order = rng.permutation(len(train_x))[rank : per_rank * world : world]
        seen = correct = 0
        loss_sum = 0.0
        for i in range(0, len(order), loop.batch_size):
            idx = np.sort(order[i : i + loop.batch_size])
            batch, targets = train_x[idx], train_y[idx]
            if maps:
                batch, targets = transform_labeled(batch, targets, maps, aug_rng)
            if loop.augment:
                batch = shuffle_channels(batch, aug_rng)
            x = clips_to_tensor(batch, mean, std, device=device)
            if loop.augment:
                x = jitter(x, generator)
            y = torch.from_numpy(targets).to(device)
            logits = module(x)
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(module.parameters(), 2.0)
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(-1) == y).sum())
            seen += len(idx)
        record = {
            "epoch": epoch,
            "loss": loss_sum / max(1, seen),
            "train_accuracy": correct / max(1, seen),
            # The optimizer's own count of the updates it applied, so far.
            "steps": int(optimizer.state[first].get("step", 0)) if first in optimizer.state else 0,
        }
        if held_x is not None and held_y is not None and rank == 0:
            # The unwrapped module: a DDP forward on one rank alone could wait on the others.
            pred = evaluate(core, held_x, mean, std)
            record["heldout_accuracy"] = float((pred == held_y).mean())
            classes = np.unique(held_y)
            recall = [float((pred[held_y == c] == c).mean()) for c in classes]
            record["worst_class"] = int(classes[int(np.argmin(recall))])
            record["worst_recall"] = min(recall)
        record["seconds"] = time.perf_counter() - began
        history.append(record)
        if rank == 0:
            held = (
                f" heldout_acc {record['heldout_accuracy']:.3f} (worst: "
                f"{_name(labels, record['worst_class'])} {record['worst_recall']:.2f})"
                if "heldout_accuracy" in record
                else ""
            )
            log(
                f"epoch {epoch:>3}/{loop.epochs} loss {record['loss']:.4f} "
                f"train_acc {record['train_accuracy']:.3f}{held} ({record['seconds']:.1f}s)"
            )
    return history


def _name(labels: Sequence[str], index: float) -> str:
    return labels[int(index)] if int(index) < len(labels) else f"class {int(index)}"


@dataclass
class RankReport:
    """How one training worker ended: which rank it was, in which process, how many optimizer
    updates it applied, its own per-epoch loss (on its shard) and its final state dict."""

    rank: int
    world: int
    pid: int
    steps: int
    losses: list[float]
    state: dict[str, torch.Tensor]


@dataclass
class DistributedFit:
    """What `fit_distributed` brings back: rank 0's history and every rank's report."""

    history: list[dict[str, float]]
    ranks: list[RankReport]


def fit_distributed(
    module: nn.Module,
    train_x: np.ndarray,
    train_y: np.ndarray,
    loop: LoopConfig,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    held_x: np.ndarray | None = None,
    held_y: np.ndarray | None = None,
    labels: Sequence[str] = (),
    log: Log = print,
) -> DistributedFit:
    """`fit` on `loop.workers` Ray Train workers (DDP: gloo on CPU, NCCL with GPUs).

    The decoded clips go to the object store once; every worker runs `fit` on its shard and
    rank 0 sends the weights back as a Ray Train checkpoint, loaded into `module` here, with
    every rank's report (`RankReport`), so a caller can see that the ranks stayed in step.
    """
    import tempfile

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init()
    use_gpu = bool(ray.cluster_resources().get("GPU", 0))
    config = {
        "module": module.cpu(),
        "arrays": {
            k: ray.put(v)
            for k, v in {
                "train_x": train_x,
                "train_y": train_y,
                "held_x": held_x,
                "held_y": held_y,
            }.items()
        },
        "loop": loop,
        "mean": tuple(mean),
        "std": tuple(std),
        "labels": tuple(labels),
    }
    with tempfile.TemporaryDirectory(prefix="vidbatch-train-") as storage:
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=loop.workers, use_gpu=use_gpu),
            run_config=RunConfig(name="vidbatch-train", storage_path=storage),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"Ray Train finished without a checkpoint ({result.error})")
        with result.checkpoint.as_directory() as folder:
            state = load_file(os.path.join(folder, "model.safetensors"))
            history = json.loads(Path(folder, "history.json").read_text())
            ranks = [
                RankReport(
                    **info,
                    state=load_file(os.path.join(folder, f"rank-{info['rank']}.safetensors")),
                )
                for info in json.loads(Path(folder, "ranks.json").read_text())
            ]
    module.load_state_dict(state)
    for record in history:
        log(f"epoch {record['epoch']}: " + ", ".join(f"{k} {v:.4g}" for k, v in record.items()))
    return DistributedFit(history=history, ranks=ranks)


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: DDP-wrap, run `fit` on this rank's shard; rank 0 gathers every
    rank's report and final weights and checkpoints them with its own."""
    import tempfile

    import ray
    import ray.train
    import torch.distributed as dist
    from ray.train import Checkpoint
    from ray.train.torch import prepare_model

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    arrays = {k: ray.get(v) for k, v in config["arrays"].items()}
    module = prepare_model(config["module"].to(memory_format=torch.channels_last))
    history = fit(
        module,
        arrays["train_x"],
        arrays["train_y"],
        config["loop"],
        mean=config["mean"],
        std=config["std"],
        held_x=arrays["held_x"],
        held_y=arrays["held_y"],
        rank=rank,
        world=world,
        labels=config["labels"],
    )
    core = module.module if isinstance(module, DistributedDataParallel) else module
    state = {k: v.detach().cpu().contiguous() for k, v in core.state_dict().items()}
    info = {
        "rank": rank,
        "world": world,
        "pid": os.getpid(),
        "steps": history[-1]["steps"] if history else 0,
        "losses": [record["loss"] for record in history],
    }
    reports: list[Any] = [None] * world
    if world > 1:
        dist.all_gather_object(reports, (info, state))
    else:
        reports = [(info, state)]
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            save_file(state, os.path.join(folder, "model.safetensors"))
            Path(folder, "history.json").write_text(json.dumps(history))
            for each, each_state in reports:
                save_file(each_state, os.path.join(folder, f"rank-{each['rank']}.safetensors"))
            Path(folder, "ranks.json").write_text(json.dumps([each for each, _ in reports]))
            checkpoint = Checkpoint.from_directory(folder)
        ray.train.report({"epochs": len(history)}, checkpoint=checkpoint)


@dataclass
class TrainResult:
    """What a training run produced: the checkpoint and its recorded metrics."""

    output: str
    version: str
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    meta: CheckpointMeta
    size_bytes: int
    ranks: list[RankReport] = field(default_factory=list)  # one per training worker

    def __str__(self) -> str:
        return (
            f"wrote {self.output} ({self.meta.name}, version {self.version}, "
            f"{self.size_bytes / 1e6:.2f} MB): held-out accuracy "
            f"{self.metrics['heldout_accuracy']:.3f} on {self.metrics['heldout_clips']} clips "
            f"of {self.metrics['heldout_videos']} videos, trained in {self.metrics['train_seconds']:.0f}s"
        )


def train(config: TrainConfig, *, clip_set: ClipSet | None = None, log: Log = print) -> TrainResult:
    """Decode (unless `clip_set` is given, e.g. shared by several models), split by video,
    train, evaluate on the held-out videos and write the checkpoint with those metrics."""
    config = config.validate()
    spec = get_model_spec(config.model)
    loop = config.train
    if clip_set is None:
        clip_set = load_clip_set(config.data, config.clip, log=log)
        log(
            f"decoded {len(clip_set.clips)} clips from {len(clip_set.uris)} videos "
            f"in {clip_set.decode_seconds:.1f}s ({len(clip_set.failed)} skipped)"
        )
    elif clip_set.clip != config.clip:
        raise ValueError(f"clip_set was decoded at {clip_set.clip}, config wants {config.clip}")
    labels = clip_set.labels
    label_maps(loop, labels)  # a wrong label in a map fails here, before training
    held_videos = split_videos(clip_set.video_targets, config.data.holdout_fraction, loop.seed)
    if not held_videos.any():
        raise ValueError(
            f"data.manifest {config.data.manifest}: too few videos to hold any out "
            "(each label needs at least 2 videos)"
        )
    held = held_videos[clip_set.videos]
    train_x, train_y = clip_set.clips[~held], clip_set.targets[~held]
    held_x, held_y = clip_set.clips[held], clip_set.targets[held]
    mean, std = KINETICS_MEAN, KINETICS_STD

    torch.manual_seed(loop.seed)
    module = spec.builder(num_classes=len(labels), clip=config.clip, **config.arch)
    log(
        f"training {spec.name} ({spec.family}, {param_count(module) / 1e3:.0f}k params) on "
        f"{len(train_x)} clips / {int((~held_videos).sum())} videos; held out {len(held_x)} clips / "
        f"{int(held_videos.sum())} videos"
    )
    began = time.perf_counter()
    data = dict(mean=mean, std=std, held_x=held_x, held_y=held_y, labels=labels, log=log)
    if loop.workers > 1:
        distributed = fit_distributed(module, train_x, train_y, loop, **data)
        history, ranks = distributed.history, distributed.ranks
    else:
        module.to(default_device(), memory_format=torch.channels_last)
        history = fit(module, train_x, train_y, loop, **data)
        state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        losses = [record["loss"] for record in history]
        ranks = [RankReport(0, 1, os.getpid(), history[-1]["steps"], losses, state)]
    train_seconds = time.perf_counter() - began

    pred = evaluate(module, held_x, mean, std)
    metrics: dict[str, Any] = {
        "heldout_accuracy": float((pred == held_y).mean()),
        "per_class_recall": recall_by_class(pred, held_y, labels),
        "confusion": _confusion(pred, held_y, len(labels)),
        "train_accuracy": history[-1]["train_accuracy"],
        "epochs": loop.epochs,
        "seed": loop.seed,
        "dataset": config.data.description or config.data.manifest,
        "manifest": config.data.manifest,
        "holdout_fraction": config.data.holdout_fraction,
        "train_videos": int((~held_videos).sum()),
        "heldout_videos": int(held_videos.sum()),
        "train_clips": len(train_x),
        "heldout_clips": len(held_x),
        "train_seconds": round(train_seconds, 1),
        "params": param_count(module),
        "optimizer": {k: v for k, v in asdict(loop).items() if k not in ("seed", "epochs")},
        "torch": torch.__version__.split("+")[0],
    }
    log(
        f"held-out accuracy {metrics['heldout_accuracy']:.3f}; per-class recall: "
        + ", ".join(f"{k} {v:.2f}" for k, v in metrics["per_class_recall"].items() if v is not None)
    )
    meta = CheckpointMeta(
        name=spec.name,
        family=spec.family,
        task=spec.task,
        labels=labels,
        clip=config.clip,
        mean=mean,
        std=std,
        arch=dict(config.arch),
        metrics=metrics,
    )
    data = save_checkpoint(config.output, module, meta, config.output_storage_options)
    return TrainResult(
        output=config.output,
        version=weights_version(data),
        metrics=metrics,
        history=history,
        meta=meta,
        size_bytes=len(data),
        ranks=ranks,
    )


def _confusion(pred: np.ndarray, target: np.ndarray, classes: int) -> list[list[int]]:
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (target, pred), 1)
    return matrix.tolist()
