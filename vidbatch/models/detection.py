"""Detectors: torchvision's detection zoo by name, and vidbatch's own `synth-detector`.

Every detector is family "torchvision-detection": a torchvision detection module whose own
transform resizes and normalizes frames, so `Detector.detect` takes plain uint8 RGB frames of
any size and returns boxes relative to that frame. Zoo models are built with
`weights=None, weights_backbone=None` (nothing is downloaded, ever) and take the user's
torchvision state dict (`.pth`, read with `torch.load(weights_only=True)`, so a pickle that
carries code is refused); their labels are torchvision's COCO categories (metadata only).
A vidbatch checkpoint (`.safetensors` + JSON metadata) loads into any of them with its own
labels and arch args: that is how the shipped `synth-detector` (FCOS on a tiny CNN, trained
from scratch by `jobs/train_detector.py`) is stored. `weights="random"` builds an untrained
model, for tests.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torchvision.models.detection as tvd
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import FeaturePyramidNetwork

from vidbatch.index import tables
from vidbatch.media.synth import SHAPES
from vidbatch.models.checkpoint import (
    CheckpointMeta,
    fit_state_dict,
    fit_torchvision_state,
    parse_checkpoint,
    read_state_dict,
    weights_version,
)
from vidbatch.models.common import to_device
from vidbatch.models.loaded import RANDOM_WEIGHTS, LoadedModel, register_loader
from vidbatch.models.registry import (
    ModelSpec,
    asset_path,
    check_arch,
    register_model,
)
from vidbatch.specs import ClipSpec, FrameSpec

FAMILY = "torchvision-detection"
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# torchvision's COCO category names (index = model label id; "__background__" and "N/A" unused).
COCO_CATEGORIES: tuple[str, ...] = tuple(
    tvd.FasterRCNN_ResNet50_FPN_V2_Weights.DEFAULT.meta["categories"]
)

# Labels of an untrained build or of a bare state dict, by model name; checkpoints carry theirs.
_LABELS: dict[str, tuple[str, ...]] = {}


class Detector(LoadedModel):
    """An object detector: uint8 RGB frames in, normalized boxes, scores and labels out.

    `frame` is the input size the model was trained at (longer side), or None when the model
    resizes any frame itself and the job's frame size is as good as any.
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


def detections_table(
    detector: Detector,
    results: Sequence[tuple[np.ndarray, np.ndarray, list[str]]],
    *,
    uri: str,
    frame_times: Sequence[float],
    video_id: str = "",
    run_id: str = "",
) -> pa.Table:
    """`detect` results of one video's frames as `detections` rows (vidbatch.index.tables.DETECTIONS)."""
    counts = [len(scores) for _, scores, _ in results]
    boxes = np.concatenate([b for b, _, _ in results]) if results else np.empty((0, 4))
    n = int(sum(counts))
    columns = {
        "video_id": [video_id] * n,
        "uri": [uri] * n,
        "frame_time_s": np.repeat(np.asarray(frame_times, np.float64), counts),
        "model": [detector.name] * n,
        "model_version": [detector.version] * n,
        "label": [label for _, _, labels in results for label in labels],
        "score": np.concatenate([s for _, s, _ in results]) if results else np.empty(0),
        **{c: boxes[:, i] for i, c in enumerate(("x1", "y1", "x2", "y2"))},
        "run_id": [run_id] * n,
    }
    return pa.table(columns, schema=tables.DETECTIONS)


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


# ---------------------------------------------------------------- torchvision zoo


def _zoo(name: str, build: Callable[..., nn.Module], summary: str) -> Callable[..., nn.Module]:
    """Register one zoo model: built with no weights at all, so nothing is ever downloaded."""

    def builder(
        *, num_classes: int = len(COCO_CATEGORIES), clip: ClipSpec | None = None
    ) -> nn.Module:
        del clip  # detectors see single frames
        return build(weights=None, weights_backbone=None, num_classes=num_classes)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"{summary}; COCO labels; weights: a torchvision state dict (.pth) you give."
    _LABELS[name] = COCO_CATEGORIES
    return register_model(name, family=FAMILY, task="detect")(builder)


ZOO: dict[str, Callable[..., nn.Module]] = {
    name: _zoo(name, build, summary)
    for name, build, summary in (
        (
            "ssdlite320_mobilenet_v3_large",
            tvd.ssdlite320_mobilenet_v3_large,
            "torchvision SSDlite 320 on MobileNetV3-Large (fastest, least accurate)",
        ),
        (
            "fasterrcnn_mobilenet_v3_large_320_fpn",
            tvd.fasterrcnn_mobilenet_v3_large_320_fpn,
            "torchvision Faster R-CNN on MobileNetV3-Large FPN at 320 px (CPU-friendly)",
        ),
        (
            "fasterrcnn_mobilenet_v3_large_fpn",
            tvd.fasterrcnn_mobilenet_v3_large_fpn,
            "torchvision Faster R-CNN on MobileNetV3-Large FPN at 800 px",
        ),
        (
            "fasterrcnn_resnet50_fpn_v2",
            tvd.fasterrcnn_resnet50_fpn_v2,
            "torchvision Faster R-CNN v2 on ResNet-50 FPN (most accurate, GPU)",
        ),
        (
            "retinanet_resnet50_fpn_v2",
            tvd.retinanet_resnet50_fpn_v2,
            "torchvision RetinaNet v2 on ResNet-50 FPN",
        ),
        (
            "fcos_resnet50_fpn",
            tvd.fcos_resnet50_fpn,
            "torchvision FCOS on ResNet-50 FPN (anchor-free)",
        ),
    )
}


# ---------------------------------------------------------------- vidbatch's own detector


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class TinyFPNBackbone(nn.Module):
    """A small from-scratch CNN with an FPN: strides 8, 16, 32, `channels` wide each.

    Sized for CPU training in minutes; the stride-32 level gives the stride-8 level (where
    synth objects are matched) context over the whole frame through the top-down path.
    """

    def __init__(self, width: int = 16, channels: int = 64) -> None:
        super().__init__()
        w = width
        self.c3 = nn.Sequential(
            _conv_bn(3, w, 2), _conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w, 1),
            _conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w, 1),
        )  # fmt: skip
        self.c4 = nn.Sequential(_conv_bn(4 * w, 6 * w, 2), _conv_bn(6 * w, 6 * w, 1))
        self.c5 = nn.Sequential(_conv_bn(6 * w, 8 * w, 2), _conv_bn(8 * w, 8 * w, 1))
        self.fpn = FeaturePyramidNetwork([4 * w, 6 * w, 8 * w], channels)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        c3 = self.c3(x)
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        return self.fpn(OrderedDict(p3=c3, p4=c4, p5=c5))


@register_model(
    "synth-detector",
    family=FAMILY,
    task="detect",
    default_weights=asset_path("synth-detector.safetensors"),
)
def synth_detector(
    *,
    num_classes: int,
    clip: ClipSpec | None = None,
    size: int = 160,
    width: int = 16,
    channels: int = 64,
    head_convs: int = 2,
) -> nn.Module:
    """FCOS on a tiny CNN + FPN, trained from scratch on synth shapes (circle, square, triangle).

    `size` is the longer frame side it runs at: its transform resizes any frame to that.
    """
    del clip
    backbone = TinyFPNBackbone(width=width, channels=channels)
    anchors = AnchorGenerator(((8,), (16,), (32,)), ((1.0,),) * 3)  # one point per location
    head = FCOSHead(channels, 1, num_classes, num_convs=head_convs)
    return tvd.FCOS(
        backbone,
        num_classes,
        min_size=size,
        max_size=size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        anchor_generator=anchors,
        head=head,
        score_thresh=0.05,
        detections_per_img=20,
    )


_LABELS["synth-detector"] = SHAPES


# ---------------------------------------------------------------- loading


@register_loader(FAMILY)
def load_torchvision_detector(
    spec: ModelSpec, data: bytes, uri: str, device: torch.device
) -> Detector:
    """The family's loader: a vidbatch checkpoint, a torchvision state dict, or random init."""
    if uri == RANDOM_WEIGHTS:
        labels = _default_labels(spec, uri)
        module = spec.builder(num_classes=len(labels), clip=None)
        return _detector(spec, module, RANDOM_WEIGHTS, labels, {}, device)
    if uri.endswith(".safetensors") or _looks_like_safetensors(data):
        state, meta = parse_checkpoint(data, uri)
        if meta.family != spec.family or meta.task != spec.task:
            raise ValueError(
                f"{uri}: checkpoint is a {meta.family!r} {meta.task!r} model ({meta.name}), "
                f"but {spec.name!r} is a {spec.family!r} {spec.task!r} model"
            )
        try:
            check_arch(spec, meta.arch)
            module = spec.builder(num_classes=len(meta.labels), clip=None, **meta.arch)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{uri}: cannot build {spec.name!r} from its arch args ({exc})"
            ) from None
        fit_state_dict(module, state, uri)
        version = weights_version(data)
        return _detector(spec, module, version, meta.labels, meta.arch, device, meta)
    labels = _default_labels(spec, uri)
    module = spec.builder(num_classes=len(labels), clip=None)
    fit_torchvision_state(module, read_state_dict(data, uri), uri)
    return _detector(spec, module, weights_version(data), labels, {}, device)


def _default_labels(spec: ModelSpec, uri: str) -> tuple[str, ...]:
    try:
        return _LABELS[spec.name]
    except KeyError:
        raise ValueError(
            f"{uri}: model {spec.name!r} has no built-in labels; give a vidbatch checkpoint "
            "(.safetensors with labels in its metadata)"
        ) from None


def _looks_like_safetensors(data: bytes) -> bool:
    return len(data) > 9 and data[8:9] == b"{"


def _detector(
    spec: ModelSpec,
    module: nn.Module,
    version: str,
    labels: Sequence[str],
    arch: Mapping[str, Any],
    device: torch.device,
    meta: CheckpointMeta | None = None,
) -> Detector:
    size = arch.get("size", spec.arch_defaults().get("size"))
    return Detector(
        name=spec.name,
        family=spec.family,
        module=module,
        version=version,
        labels=labels,
        frame=FrameSpec(size=int(size)) if size else None,
        device=device,
        meta=meta,
    )


__all__ = [
    "COCO_CATEGORIES",
    "Detector",
    "TinyFPNBackbone",
    "detections_table",
    "ZOO",
    "fit_torchvision_state",
    "frames_to_tensor",
    "load_torchvision_detector",
    "read_state_dict",
    "synth_detector",
]
