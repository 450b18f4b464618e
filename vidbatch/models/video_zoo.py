"""torchvision's published video classifiers by name (Kinetics-400).

Weights come from a file or URI the user gives (a torchvision state dict, loaded with
`torch.load(weights_only=True)`); labels, normalization and clip spec come from torchvision's own
weights metadata, so nothing is downloaded. `weights: random` builds an untrained model (tests).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn

from vidbatch.models.checkpoint import weights_version
from vidbatch.models.loaded import Classifier, register_loader
from vidbatch.models.registry import ModelSpec, register_model
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


class ChannelsFirstVideo(nn.Module):
    """Adapts vidbatch's (B, T, 3, H, W) clips to torchvision's (B, 3, T, H, W) video models."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model(clips.permute(0, 2, 1, 3, 4))


@cache
def weights_meta(name: str) -> dict[str, Any]:
    """Labels, normalization and clip spec from torchvision's weights record (no download)."""
    weights = tvm.get_model_weights(name).DEFAULT
    transforms = weights.transforms()
    docs = weights.meta.get("_docs", "")
    frame_rate = re.search(r"frame_rate=([\d.]+)", docs)
    clip_len = re.search(r"clip_len=(\d+)", docs)
    frames = int(clip_len.group(1)) if clip_len else 16
    return {
        "labels": tuple(weights.meta["categories"]),
        "clip": ClipSpec(
            frames=max(frames, int(weights.meta.get("min_temporal_size", 1))),
            fps=float(frame_rate.group(1)) if frame_rate else 15.0,
            size=int(transforms.crop_size[0]),
        ),
        "mean": tuple(transforms.mean),
        "std": tuple(transforms.std),
    }


def _register(name: str) -> None:
    def builder(*, num_classes: int, clip: ClipSpec | None = None) -> nn.Module:
        return ChannelsFirstVideo(tvm.get_model(name, weights=None, num_classes=num_classes))

    builder.__doc__ = f"torchvision {name} (Kinetics-400 weights from a file you give)"
    register_model(name, family=FAMILY, task="classify")(builder)


for _name in NAMES:
    _register(_name)


@register_loader(FAMILY)
def load_video_classifier(
    spec: ModelSpec, data: bytes, uri: str, device: torch.device
) -> Classifier:
    from vidbatch.models.checkpoint import fit_torchvision_state, read_state_dict

    meta = weights_meta(spec.name)
    module = spec.builder(num_classes=len(meta["labels"]))
    if data:  # empty bytes: weights "random"
        fit_torchvision_state(module.model, read_state_dict(data, uri), uri)
    return Classifier(
        name=spec.name,
        family=spec.family,
        module=module,
        version=weights_version(data) if data else "random",
        labels=meta["labels"],
        clip=meta["clip"],
        mean=meta["mean"],
        std=meta["std"],
        device=device,
    )
