"""What the registry records about a model (`ModelSpec`) and what a driver may learn about it
without building it (`ModelInfo`, like torchvision's `weights.meta`).

This module is the floor of `vidbatch.models`: specs, loaded models, user factories and the
registry all stand on it, and it imports none of them.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vidbatch.models.checkpoint import read_bytes
from vidbatch.specs import ClipSpec, FrameSpec, ShotSpec

FAMILIES = (
    "cnn",
    "rnn",
    "transformer",
    "torchvision-video",
    "torchvision-detection",
    "transnetv2",
    "custom",
)
TASKS = ("classify", "detect", "shots")
RANDOM_WEIGHTS = "random"  # untrained weights, for tests

Builder = Callable[..., nn.Module]
# loader(spec, weights, storage_options, device) -> a loaded model (Classifier, Detector, ...)
Loader = Callable[["ModelSpec", "str | None", "Mapping[str, Any] | None", torch.device], Any]
# describer(spec, weights, storage_options) -> ModelInfo, without building the module
Describer = Callable[["ModelSpec", "str | None", "Mapping[str, Any] | None"], "ModelInfo"]


@dataclass(frozen=True)
class ModelInfo:
    """A model's identity and input as the driver needs them, read from metadata only.

    `clip` is set for task "classify", `frame` for "detect" (None: the detector resizes any
    frame itself), `shot` and `context_frames` for "shots".
    """

    name: str
    family: str
    task: str
    version: str
    labels: tuple[str, ...] = ()
    clip: ClipSpec | None = None
    frame: FrameSpec | None = None
    shot: ShotSpec | None = None
    context_frames: int = 0
    weights_shipped: bool = False

    @property
    def input(self) -> str:
        """What the model takes, in words, for `vidbatch models`."""
        return describe_input(self.task, self.clip, self.frame, self.shot)


def describe_input(
    task: str,
    clip: ClipSpec | None = None,
    frame: FrameSpec | None = None,
    shot: ShotSpec | None = None,
) -> str:
    if task == "classify" and clip is not None:
        how = (
            f"resize {clip.resize[0]}x{clip.resize[1]}, centre {clip.size}"
            if clip.resize
            else f"{clip.size}x{clip.size}"
        )
        return f"{clip.frames} frames at {clip.fps:g} fps, {how}"
    if task == "detect":
        return f"frames, longer side {frame.size}" if frame is not None else "frames, any size"
    if task == "shots" and shot is not None:
        return f"every frame, {shot.width}x{shot.height}"
    return "?"


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a named model before any weights are read.

    `loader` turns weights into a loaded model and `describer` reads the same identity from
    metadata only; `labels` are the model's own labels when its weights carry none (a bare
    torchvision state dict, an untrained build).
    """

    name: str
    family: str
    task: str
    default_weights: str | None
    builder: Builder
    loader: Loader | None = None
    describer: Describer | None = None
    labels: tuple[str, ...] = ()
    weights_by_name: bool = False  # torchvision weights names (DEFAULT, KINETICS400_V1 ...)

    @property
    def summary(self) -> str:
        """First line of the builder's docstring, for `vidbatch models`."""
        return (inspect.getdoc(self.builder) or "").split("\n", 1)[0]

    @property
    def weights_shipped(self) -> bool:
        """Whether the default weights are a file installed with the packages (no download)."""
        return self.default_weights is not None and os.path.isfile(self.default_weights)

    def arch_defaults(self) -> dict[str, Any]:
        """The architecture arguments the builder takes, with their defaults."""
        return {
            p.name: p.default
            for p in inspect.signature(self.builder).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name not in ("num_classes", "clip")
        }


def check_arch(spec: ModelSpec, arch: Mapping[str, Any]) -> None:
    """Reject arch args the builder does not take, before anything expensive happens."""
    known = spec.arch_defaults()
    unknown = sorted(set(arch) - set(known))
    if unknown:
        raise ValueError(
            f"model {spec.name!r} has no arch arg {unknown[0]!r}; takes: {', '.join(known)}"
        )


def weights_uri(spec: ModelSpec, weights: str | None) -> str:
    """The weights to use: the given ones, else the spec's default; a one-line error if none."""
    uri = weights if weights is not None else spec.default_weights
    if uri is None:
        named = " a torchvision weights name (DEFAULT, ...)," if spec.weights_by_name else ""
        raise ValueError(
            f"model {spec.name!r} needs weights:{named} a file or URI (a torchvision state dict "
            f"for zoo models), or {RANDOM_WEIGHTS!r} for an untrained model (tests only)"
        )
    return uri


def weights_bytes(
    spec: ModelSpec, weights: str | None, storage_options: Mapping[str, Any] | None
) -> tuple[bytes, str]:
    """(file bytes, uri) of the weights to use; empty bytes for `random`."""
    uri = weights_uri(spec, weights)
    return (b"" if uri == RANDOM_WEIGHTS else read_bytes(uri, storage_options)), uri
