"""Detectors: torchvision's detection zoo by name, and vidbatch's own `synth-detector`.

Every detector is family "torchvision-detection": a torchvision detection module whose own
transform resizes and normalizes frames, so `Detector.detect` takes plain uint8 RGB frames of
any size and returns boxes relative to that frame. Zoo models are built with
`weights=None, weights_backbone=None` (torchvision downloads nothing while building) and take
their weights by torchvision's name (`DEFAULT`, `COCO_V1`, read from the torch hub cache, see
`vidbatch.models.tv_weights`) or as the user's state dict (`.pth`, read with
`torch.load(weights_only=True)`, so a pickle that carries code is refused); their labels are
the COCO categories of torchvision's weights record. A vidbatch checkpoint (`.safetensors` +
JSON metadata) loads into any of them with its own labels and arch args: that is how the
shipped `synth-detector` (FCOS on a tiny CNN, trained from scratch by
`jobs/train_detector.py`) is stored. `weights="random"` builds an untrained model, for tests.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
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
    fit_torchvision_state,
    read_state_dict,
    weights_version,
)
from vidbatch.models.loaded import (
    Detector,
    build_from_checkpoint,
    checkpoint_meta,
    frames_to_tensor,
)
from vidbatch.models.registry import asset_path, register_model
from vidbatch.models.spec import (
    RANDOM_WEIGHTS,
    ModelInfo,
    ModelSpec,
    weights_bytes,
)
from vidbatch.models.tv_weights import zoo_weights
from vidbatch.specs import ClipSpec, FrameSpec

FAMILY = "torchvision-detection"
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# torchvision's COCO category names (index = model label id; "__background__" and "N/A" unused).
COCO_CATEGORIES: tuple[str, ...] = tuple(
    tvd.FasterRCNN_ResNet50_FPN_V2_Weights.DEFAULT.meta["categories"]
)


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


# ---------------------------------------------------------------- loading


def _weights(
    spec: ModelSpec, weights: str | None, storage_options: Mapping[str, Any] | None
) -> tuple[bytes, str, tuple[str, ...]]:
    """(bytes, uri, labels of a bare state dict): zoo models also take torchvision names."""
    if spec.weights_by_name:
        record, data, uri = zoo_weights(spec, weights, storage_options)
        return data, uri, tuple(record.meta["categories"])
    data, uri = weights_bytes(spec, weights, storage_options)
    return data, uri, spec.labels


def _is_checkpoint(data: bytes, uri: str) -> bool:
    return uri.endswith(".safetensors") or (len(data) > 9 and data[8:9] == b"{")


def _labels(spec: ModelSpec, labels: tuple[str, ...], uri: str) -> tuple[str, ...]:
    if not labels:
        raise ValueError(
            f"{uri}: model {spec.name!r} has no built-in labels; give a vidbatch checkpoint "
            "(.safetensors with labels in its metadata)"
        )
    return labels


def load_torchvision_detector(
    spec: ModelSpec,
    weights: str | None,
    storage_options: Mapping[str, Any] | None,
    device: torch.device,
) -> Detector:
    """The family's loader: a vidbatch checkpoint, torchvision weights by name or state dict,
    or random init."""
    data, uri, labels = _weights(spec, weights, storage_options)
    if _is_checkpoint(data, uri):
        module, meta = build_from_checkpoint(spec, data, uri)
        return _detector(spec, module, weights_version(data), meta.labels, meta.arch, device, meta)
    labels = _labels(spec, labels, uri)
    module = spec.builder(num_classes=len(labels), clip=None)
    if data:  # empty: weights "random"
        fit_torchvision_state(module, read_state_dict(data, uri), uri)
    version = weights_version(data) if data else RANDOM_WEIGHTS
    return _detector(spec, module, version, labels, {}, device)


def describe_torchvision_detector(
    spec: ModelSpec, weights: str | None, storage_options: Mapping[str, Any] | None
) -> ModelInfo:
    """The same identity from the checkpoint header or torchvision's record, nothing built."""
    data, uri, labels = _weights(spec, weights, storage_options)
    arch: Mapping[str, Any] = {}
    if _is_checkpoint(data, uri):
        meta = checkpoint_meta(data, uri, spec)
        labels, arch = meta.labels, meta.arch
    return ModelInfo(
        name=spec.name,
        family=spec.family,
        task=spec.task,
        version=weights_version(data) if data else RANDOM_WEIGHTS,
        labels=_labels(spec, labels, uri),
        frame=_frame(spec, arch),
        weights_shipped=weights is None and spec.weights_shipped,
    )


def _frame(spec: ModelSpec, arch: Mapping[str, Any]) -> FrameSpec | None:
    size = arch.get("size", spec.arch_defaults().get("size"))
    return FrameSpec(size=int(size)) if size else None


def _detector(
    spec: ModelSpec,
    module: nn.Module,
    version: str,
    labels: Sequence[str],
    arch: Mapping[str, Any],
    device: torch.device,
    meta: CheckpointMeta | None = None,
) -> Detector:
    return Detector(
        name=spec.name,
        family=spec.family,
        module=module,
        version=version,
        labels=labels,
        frame=_frame(spec, arch),
        device=device,
        meta=meta,
    )


# ---------------------------------------------------------------- torchvision zoo


def _zoo(name: str, build: Callable[..., nn.Module], summary: str) -> Callable[..., nn.Module]:
    """Register one zoo model: built without weights; its weights come by name or file."""

    def builder(
        *, num_classes: int = len(COCO_CATEGORIES), clip: ClipSpec | None = None
    ) -> nn.Module:
        del clip  # detectors see single frames
        return build(weights=None, weights_backbone=None, num_classes=num_classes)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"{summary}; COCO labels."
    return register_model(
        name,
        family=FAMILY,
        task="detect",
        loader=load_torchvision_detector,
        describer=describe_torchvision_detector,
        labels=COCO_CATEGORIES,
        weights_by_name=True,
    )(builder)


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


register_model(
    "synth-detector",
    family=FAMILY,
    task="detect",
    default_weights=asset_path("synth-detector.safetensors"),
    loader=load_torchvision_detector,
    describer=describe_torchvision_detector,
    labels=SHAPES,
)(synth_detector)


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
