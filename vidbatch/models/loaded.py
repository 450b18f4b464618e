"""Models ready for the pipeline: weights read once, preprocessing from the weights' metadata.

Every loaded model is a `LoadedModel` (name, family, version, labels, device, batch size) of one
task: `Classifier` (clips -> class probabilities), `Detector` (frames -> boxes) or, in
`vidbatch.models.shots`, `ShotDetector` (every frame -> transition probabilities). Each family's
loader (on its `ModelSpec`) returns one of them. The loader and describer of vidbatch's own
checkpoint families (cnn, rnn, transformer) live here too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from vidbatch.models.checkpoint import (
    METADATA_KEY,
    CheckpointMeta,
    fit_state_dict,
    parse_checkpoint,
    parse_header,
    weights_version,
)
from vidbatch.models.common import clips_to_tensor, to_device
from vidbatch.models.spec import ModelInfo, ModelSpec, check_arch, weights_bytes
from vidbatch.specs import ClipSpec, FrameSpec


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class LoadedModel:
    """What every loaded model carries: its name and family, the weights' version, labels,
    device and batch size (`batch_sizes`: the default on CUDA and on CPU)."""

    task = ""
    batch_sizes = (16, 4)

    def __init__(
        self,
        *,
        name: str,
        family: str,
        version: str,
        labels: Sequence[str],
        device: torch.device | str,
        batch_size: int | None = None,
        meta: CheckpointMeta | None = None,
    ) -> None:
        self.name = name
        self.family = family
        self.version = version
        self.labels = list(labels)
        self.device = torch.device(device)
        self.meta = meta
        on_gpu, on_cpu = self.batch_sizes
        self.batch_size = batch_size or (on_gpu if self.device.type == "cuda" else on_cpu)


class Classifier(LoadedModel):
    """A clip classifier: uint8 RGB clips in, class probabilities out.

    Normalization, clip spec and labels come from the weights' metadata, so inference
    preprocesses exactly as training did.
    """

    task = "classify"
    batch_sizes = (64, 16)

    def __init__(
        self,
        *,
        module: nn.Module,
        clip: ClipSpec,
        mean: Sequence[float],
        std: Sequence[float],
        **identity: Any,
    ) -> None:
        super().__init__(**identity)
        self.clip = clip
        self.mean = tuple(mean)
        self.std = tuple(std)
        # channels_last: the clips arrive as NHWC frames; measured faster on CPU too.
        try:
            self.module = module.to(self.device, memory_format=torch.channels_last).eval()
        except RuntimeError:  # 3D convolutions (torchvision video models) have rank-5 weights
            self.module = module.to(self.device).eval()

    def __repr__(self) -> str:
        return (
            f"Classifier({self.name!r}, family={self.family!r}, version={self.version!r}, "
            f"labels={len(self.labels)}, clip={self.clip}, device={str(self.device)!r})"
        )

    def predict(self, clips: np.ndarray) -> np.ndarray:
        """uint8 (N, T, H, W, 3) RGB at `clip` -> float32 probabilities (N, len(labels))."""
        clips = np.asarray(clips)
        expected = (self.clip.frames, self.clip.size, self.clip.size, 3)
        if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[1:] != expected:
            raise ValueError(
                f"model {self.name!r} expects uint8 clips (N, {', '.join(map(str, expected))}), "
                f"got {clips.dtype} {clips.shape}"
            )
        out = np.empty((len(clips), len(self.labels)), np.float32)
        cuda = self.device.type == "cuda"
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
        with torch.inference_mode(), autocast:
            for i in range(0, len(clips), self.batch_size):
                x = clips_to_tensor(
                    clips[i : i + self.batch_size], self.mean, self.std, device=self.device
                )
                probs = self.module(x).float().softmax(dim=-1)
                out[i : i + len(x)] = probs.cpu().numpy()
        return out


class Detector(LoadedModel):
    """An object detector: uint8 RGB frames in, normalized boxes, scores and labels out.

    The module is a torchvision-style detector: a list of float (3, H, W) images in 0..1 in,
    one dict per image out with `boxes` (pixels, x1 y1 x2 y2), `scores` and `labels` (indices
    into `labels`). `frame` is the input size the model was trained at (longer side), or None
    when the model resizes any frame itself and the job's frame size is as good as any.
    """

    task = "detect"
    batch_sizes = (16, 4)

    def __init__(self, *, module: nn.Module, frame: FrameSpec | None, **identity: Any) -> None:
        super().__init__(**identity)
        self.frame = frame
        self.module = module.to(self.device).eval()

    def __repr__(self) -> str:
        return (
            f"Detector({self.name!r}, family={self.family!r}, version={self.version!r}, "
            f"labels={len(self.labels)}, frame={self.frame}, device={str(self.device)!r})"
        )

    def detect(
        self, frames: Sequence[np.ndarray] | np.ndarray, *, min_score: float, max_detections: int
    ) -> list[tuple[np.ndarray, np.ndarray, list[str]]]:
        """Per frame: (boxes (K, 4) float32 x1,y1,x2,y2 in 0..1 of that frame, scores (K,), labels).

        Detections are sorted by score, at least `min_score`, at most `max_detections`.
        """
        frames = [_check_frame(self.name, f) for f in frames]
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        _set_limits(self.module, min_score, max_detections)
        cuda = self.device.type == "cuda"
        # float16 as torchvision's detection references train with; boxes come back as float32.
        autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else nullcontext()
        out: list[tuple[np.ndarray, np.ndarray, list[str]]] = []
        with torch.inference_mode(), autocast:
            for i in range(0, len(frames), self.batch_size):
                chunk = frames[i : i + self.batch_size]
                images = [frames_to_tensor(f, self.device) for f in chunk]
                for frame, found in zip(chunk, self.module(images), strict=True):
                    out.append(self._rows(frame, found, min_score, max_detections))
        return out

    def _rows(
        self, frame: np.ndarray, found: Mapping[str, torch.Tensor], min_score: float, limit: int
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        scores = found["scores"].float().cpu().numpy()
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] >= min_score][:limit]
        height, width = frame.shape[:2]
        scale = np.array([width, height, width, height], np.float32)
        boxes = found["boxes"].float().cpu().numpy()[order] / scale
        ids = found["labels"].cpu().numpy()[order]
        names = [self.labels[i] if 0 <= i < len(self.labels) else str(i) for i in ids.tolist()]
        return np.clip(boxes, 0.0, 1.0).astype(np.float32), scores[order].astype(np.float32), names


def frames_to_tensor(frame: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float (3, H, W) in 0..1, what torchvision detectors take.

    Training goes through this too; the model's own transform does resizing and normalization.
    """
    x = to_device(np.ascontiguousarray(frame), device)
    return x.permute(2, 0, 1).float().div_(255.0)


def _check_frame(name: str, frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
        raise ValueError(
            f"model {name!r} expects uint8 RGB frames (H, W, 3), got {frame.dtype} {frame.shape}"
        )
    return frame


def _set_limits(module: nn.Module, min_score: float, max_detections: int) -> None:
    """Push the caller's limits into torchvision's postprocessing (before NMS and top-k).

    Every torchvision detector keeps `score_thresh` / `detections_per_img`, on itself or on
    `roi_heads` (Faster R-CNN); without this a lower `min_score` than its default would be lost.
    """
    target = getattr(module, "roi_heads", module)
    if hasattr(target, "score_thresh"):
        # torchvision keeps scores > thresh; min_score is inclusive, checked exactly afterwards.
        target.score_thresh = float(min_score) - 1e-6
    if hasattr(target, "detections_per_img"):
        target.detections_per_img = int(max_detections)


# ---------------------------------------------------------------- vidbatch checkpoints


def checkpoint_meta(data: bytes, uri: str, spec: ModelSpec) -> CheckpointMeta:
    """The metadata of a vidbatch checkpoint (header only), checked against the spec."""
    metadata = parse_header(data, uri).get("__metadata__") or {}
    if METADATA_KEY not in metadata:
        raise ValueError(
            f"{uri}: safetensors file without {METADATA_KEY!r} metadata (not a vidbatch checkpoint)"
        )
    meta = CheckpointMeta.from_json(metadata[METADATA_KEY], uri)
    if meta.family != spec.family or meta.task != spec.task:
        raise ValueError(
            f"{uri}: checkpoint is family {meta.family!r}, task {meta.task!r} ({meta.name}), "
            f"but model {spec.name!r} is family {spec.family!r}, task {spec.task!r}"
        )
    return meta


def build_from_checkpoint(
    spec: ModelSpec, data: bytes, uri: str
) -> tuple[nn.Module, CheckpointMeta]:
    """The spec's module built from the checkpoint's arch args, with its weights."""
    checkpoint_meta(data, uri, spec)
    state, meta = parse_checkpoint(data, uri)
    clip = meta.clip if spec.task == "classify" else None  # detectors see single frames
    try:
        check_arch(spec, meta.arch)
        module = spec.builder(num_classes=len(meta.labels), clip=clip, **meta.arch)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{uri}: cannot build {spec.name!r} from its arch args ({exc})") from None
    fit_state_dict(module, state, uri)
    return module, meta


def load_checkpoint_classifier(
    spec: ModelSpec,
    weights: str | None,
    storage_options: Mapping[str, Any] | None,
    device: torch.device,
) -> Classifier:
    """vidbatch's own families: safetensors + JSON metadata, built from the recorded arch."""
    data, uri = weights_bytes(spec, weights, storage_options)
    module, meta = build_from_checkpoint(spec, data, uri)
    return Classifier(
        name=spec.name,
        family=spec.family,
        module=module,
        version=weights_version(data),
        labels=meta.labels,
        clip=meta.clip,
        mean=meta.mean,
        std=meta.std,
        device=device,
        meta=meta,
    )


def describe_checkpoint_classifier(
    spec: ModelSpec, weights: str | None, storage_options: Mapping[str, Any] | None
) -> ModelInfo:
    """The same identity from the checkpoint's header, without building the module."""
    data, uri = weights_bytes(spec, weights, storage_options)
    meta = checkpoint_meta(data, uri, spec)
    return ModelInfo(
        name=spec.name,
        family=spec.family,
        task=spec.task,
        version=weights_version(data),
        labels=meta.labels,
        clip=meta.clip,
        weights_shipped=weights is None and spec.weights_shipped,
    )
