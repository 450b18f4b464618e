"""A user's own model by name, `package.module:factory`, without editing vidbatch.

The factory takes no arguments and returns `(module, metadata)`. `metadata["task"]` says what
the module is (default "classify"):

- "classify": the module takes normalized clips (B, T, 3, H, W) and returns logits;
  metadata has `labels`, `clip` ({frames, fps, size[, resize]}) and optionally `mean`, `std`.
- "detect": a torchvision-style detector: a list of float (3, H, W) images in 0..1 in, one
  dict per image out with `boxes` (pixels, x1 y1 x2 y2), `scores` and `labels` (indices into
  metadata `labels`); optionally `frame` ({size}: the longer side it was trained at).
- "shots": uint8 (B, window, height, width, 3) RGB windows in, (B, window) transition logits
  out; metadata has `shot` ({width, height}), `window` and `context_frames`.

Any task may give a `version`. Weights given in the job config (safetensors or a torch state
dict) are loaded into the module; the model's version then includes their hash, so new weights
are a new version. Without weights and without a `version`, the version is a hash of the
module's own parameters.

A factory may also carry its metadata as an attribute, `factory.metadata = {...}`: then the
driver learns the model's task, labels and input (`describe_model`) without building it.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Mapping
from functools import cache
from typing import Any

import torch
from torch import nn

from vidbatch.models.checkpoint import fit_state_dict, read_bytes, read_state_dict, weights_version
from vidbatch.models.loaded import Classifier, Detector
from vidbatch.models.shots import ShotDetector
from vidbatch.models.spec import RANDOM_WEIGHTS, TASKS, ModelInfo, ModelSpec
from vidbatch.specs import ClipSpec, FrameSpec, ShotSpec

FAMILY = "custom"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_REQUIRED = {
    "classify": ("labels", "clip"),
    "detect": ("labels",),
    "shots": ("shot", "window", "context_frames"),
}


def is_factory_name(name: str) -> bool:
    return ":" in name


def factory_spec(name: str) -> ModelSpec:
    """A registry entry for `module:factory`, resolved by importing the module."""
    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"model {name!r}: cannot import factory ({exc})") from None
    if not callable(factory):
        raise ValueError(f"model {name!r}: {attr} is not callable")
    return ModelSpec(
        name=name,
        family=FAMILY,
        task=str(_metadata(name, factory)["task"]),
        default_weights=None,
        builder=factory,
        loader=load_factory_model,
        describer=describe_factory_model,
    )


@cache
def _metadata(name: str, factory: Any) -> Mapping[str, Any]:
    """The factory's metadata, validated: declared on the factory, or from one call of it."""
    declared = getattr(factory, "metadata", None)
    meta = declared if isinstance(declared, Mapping) else _call(name, factory)[1]
    return _checked(name, meta)


def _call(name: str, factory: Any) -> tuple[nn.Module, Mapping[str, Any]]:
    built = factory()
    if not (
        isinstance(built, tuple)
        and len(built) == 2
        and isinstance(built[0], nn.Module)
        and isinstance(built[1], Mapping)
    ):
        raise ValueError(f"model {name!r}: factory must return (nn.Module, metadata dict)")
    return built[0], _checked(name, built[1])


def _checked(name: str, meta: Mapping[str, Any]) -> Mapping[str, Any]:
    task = meta.get("task", "classify")
    if task not in TASKS:
        raise ValueError(f"model {name!r}: metadata task {task!r} is not one of {', '.join(TASKS)}")
    for key in _REQUIRED[task]:
        if key not in meta:
            raise ValueError(f"model {name!r}: factory metadata lacks {key!r} (task {task!r})")
    return {**meta, "task": task}


def _spec_of(cls: type, value: Any) -> Any:
    return value if isinstance(value, cls) else cls(**value)


def _clip(meta: Mapping[str, Any]) -> ClipSpec:
    clip = _spec_of(ClipSpec, meta["clip"])
    return ClipSpec(clip.frames, clip.fps, clip.size, tuple(clip.resize) if clip.resize else None)


def _state_version(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def _version(meta: Mapping[str, Any], data: bytes, module: nn.Module | None) -> str:
    """`version` from the metadata, joined by "+" with the weights file's hash when one was
    loaded; a hash of the module's parameters when neither exists."""
    parts = [str(meta["version"])] if meta.get("version") else []
    if data:
        parts.append(weights_version(data))
    if parts:
        return "+".join(parts)
    assert module is not None
    return _state_version(module)


def _read_weights(
    weights: str | None, storage_options: Mapping[str, Any] | None
) -> tuple[bytes, str]:
    if weights in (None, RANDOM_WEIGHTS):  # the factory's own parameters are its weights
        return b"", ""
    return read_bytes(weights, storage_options), weights


def _state_dict(data: bytes, uri: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, safetensors or a torch state dict; never unpickles code
    (a pickle with a payload is a one-line ValueError naming the file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    if data[8:9] == b"{":  # safetensors header: plain tensors, any metadata
        try:
            return load_safetensors(data)
        except SafetensorError as exc:
            raise ValueError(f"{uri}: not a valid safetensors file ({exc})") from None
    return read_state_dict(data, uri)


def load_factory_model(
    spec: ModelSpec,
    weights: str | None,
    storage_options: Mapping[str, Any] | None,
    device: torch.device,
) -> Classifier | Detector | ShotDetector:
    module, meta = _call(spec.name, spec.builder)
    data, uri = _read_weights(weights, storage_options)
    if data:
        fit_state_dict(module, _state_dict(data, uri), uri)
    identity = {
        "name": spec.name,
        "family": FAMILY,
        "module": module,
        "version": _version(meta, data, module),
        "labels": list(meta.get("labels", ())),
        "device": device,
    }
    if meta["task"] == "detect":
        frame = _spec_of(FrameSpec, meta["frame"]) if meta.get("frame") else None
        return Detector(frame=frame, **identity)
    if meta["task"] == "shots":
        return ShotDetector(
            spec=_spec_of(ShotSpec, meta["shot"]),
            window=int(meta["window"]),
            context_frames=int(meta["context_frames"]),
            **identity,
        )
    return Classifier(
        clip=_clip(meta),
        mean=tuple(meta.get("mean", IMAGENET_MEAN)),
        std=tuple(meta.get("std", IMAGENET_STD)),
        **identity,
    )


def describe_factory_model(
    spec: ModelSpec, weights: str | None, storage_options: Mapping[str, Any] | None
) -> ModelInfo:
    """From the declared metadata when the factory has it; the module is built only when the
    version has to be a hash of its parameters (no weights file, no `version`)."""
    meta = _metadata(spec.name, spec.builder)
    data, uri = _read_weights(weights, storage_options)
    if data:  # a file that is no state dict (or a pickle with a payload) stops the run here
        _state_dict(data, uri)
    module = None
    if not data and not meta.get("version"):
        module, meta = _call(spec.name, spec.builder)
    task = meta["task"]
    return ModelInfo(
        name=spec.name,
        family=FAMILY,
        task=task,
        version=_version(meta, data, module),
        labels=tuple(meta.get("labels", ())),
        clip=_clip(meta) if task == "classify" else None,
        frame=_spec_of(FrameSpec, meta["frame"])
        if task == "detect" and meta.get("frame")
        else None,
        shot=_spec_of(ShotSpec, meta["shot"]) if task == "shots" else None,
        context_frames=int(meta["context_frames"]) if task == "shots" else 0,
    )
