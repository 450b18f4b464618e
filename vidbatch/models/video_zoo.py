"""torchvision's published video classifiers by name (Kinetics-400).

Weights: a torchvision weights name (`DEFAULT`, `KINETICS400_V1`, `R3D_18_Weights.KINETICS400_V1`)
read from the torch hub cache (see `vidbatch.models.tv_weights`), or a state dict file or URI
the user gives (read with `torch.load(weights_only=True)`), or `random` (tests). Labels,
normalization and the clip spec come from torchvision's weights record (`weights.meta` and
`weights.transforms()`), so the preprocessing that evaluated the weights is the one that runs
them: each frame resized to the transform's `resize_size`, then its centre `crop_size` cut out.

What torchvision records only in prose (its model docs), and the values used instead:
- the frame rate: 15 fps, the rate torchvision's docs give for evaluating the ResNet (2+1)D
  family, S3D and Swin3D (MViT: 7.5 fps);
- the clip length: 16 frames, as the docs give for the ResNet family and MViT, or the weights'
  `min_temporal_size` when that is larger (S3D: 14). S3D was evaluated on 128-frame clips
  and Swin3D on 32; both take 16.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn

from vidbatch.models.checkpoint import fit_torchvision_state, read_state_dict, weights_version
from vidbatch.models.loaded import Classifier
from vidbatch.models.registry import register_model
from vidbatch.models.spec import RANDOM_WEIGHTS, ModelInfo, ModelSpec
from vidbatch.models.tv_weights import zoo_weights
from vidbatch.specs import ClipSpec

FAMILY = "torchvision-video"
NAMES = (
    "r3d_18",
    "mc3_18",
    "r2plus1d_18",
    "s3d",
    "mvit_v1_b",
    "mvit_v2_s",
    "swin3d_t",
    "swin3d_s",
    "swin3d_b",
)
CLIP_FRAMES = 16  # see the module docstring: weights.meta records no clip length
CLIP_FPS = 15.0  # ... and no frame rate


class ChannelsFirstVideo(nn.Module):
    """Adapts vidbatch's (B, T, 3, H, W) clips to torchvision's (B, 3, T, H, W) video models."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model(clips.permute(0, 2, 1, 3, 4))


def clip_spec(weights: Any) -> ClipSpec:
    """The clip spec of a torchvision video weights record, from its transforms and meta.

    A (height, width) resize is used as is; a single size (resize the shorter side, keeping
    the aspect ratio) becomes a square resize of that size, since a ClipSpec is the same for
    every video: the centre crop then sees the frame squeezed to a square, as big as the
    weights saw it.
    """
    transforms = weights.transforms()
    resize = [int(v) for v in transforms.resize_size]
    height, width = (resize[0], resize[1]) if len(resize) == 2 else (resize[0], resize[0])
    frames = max(CLIP_FRAMES, int(weights.meta.get("min_temporal_size", 1)))
    return ClipSpec(
        frames=frames, fps=CLIP_FPS, size=int(transforms.crop_size[0]), resize=(height, width)
    )


@cache
def weights_meta(name: str, weights: str = "DEFAULT") -> dict[str, Any]:
    """Labels, normalization and clip spec of a model's torchvision weights (no download)."""
    record = tvm.get_model_weights(name)[weights]
    transforms = record.transforms()
    return {
        "labels": tuple(record.meta["categories"]),
        "clip": clip_spec(record),
        "mean": tuple(transforms.mean),
        "std": tuple(transforms.std),
    }


def load_video_classifier(
    spec: ModelSpec,
    weights: str | None,
    storage_options: Mapping[str, Any] | None,
    device: torch.device,
) -> Classifier:
    record, data, uri = zoo_weights(spec, weights, storage_options)
    meta = weights_meta(spec.name, record.name)
    module = spec.builder(num_classes=len(meta["labels"]))
    if data:  # empty bytes: weights "random"
        fit_torchvision_state(module.model, read_state_dict(data, uri), uri)
    return Classifier(
        name=spec.name,
        family=spec.family,
        module=module,
        version=weights_version(data) if data else RANDOM_WEIGHTS,
        labels=meta["labels"],
        clip=meta["clip"],
        mean=meta["mean"],
        std=meta["std"],
        device=device,
    )


def describe_video_classifier(
    spec: ModelSpec, weights: str | None, storage_options: Mapping[str, Any] | None
) -> ModelInfo:
    record, data, _ = zoo_weights(spec, weights, storage_options)
    meta = weights_meta(spec.name, record.name)
    return ModelInfo(
        name=spec.name,
        family=spec.family,
        task=spec.task,
        version=weights_version(data) if data else RANDOM_WEIGHTS,
        labels=meta["labels"],
        clip=meta["clip"],
    )


def _register(name: str) -> None:
    def builder(*, num_classes: int, clip: ClipSpec | None = None) -> nn.Module:
        return ChannelsFirstVideo(tvm.get_model(name, weights=None, num_classes=num_classes))

    builder.__doc__ = f"torchvision {name}; Kinetics-400 labels."
    register_model(
        name,
        family=FAMILY,
        task="classify",
        loader=load_video_classifier,
        describer=describe_video_classifier,
        labels=weights_meta(name)["labels"],
        weights_by_name=True,
    )(builder)


for _name in NAMES:
    _register(_name)
