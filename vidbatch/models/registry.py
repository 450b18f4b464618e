"""The one registry of named models, in torchvision's style.

Adding a model = one module with its `nn.Module` and a builder decorated with
`@register_model(name, family=..., task=...)`. Everything else (the CLI's `models` verb, the
pipeline's loader, training, the tests parametrised over `list_models()`) reads this registry.

Families name the weights format and loader, not the architecture details:
"cnn" | "rnn" | "transformer" are vidbatch's own safetensors checkpoints; "torchvision-video",
"torchvision-detection" (the zoo) and "custom" (a user's `module:factory`) slot in later by
registering specs with those families and a loader for them in `vidbatch.models.loaded`.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from vidbatch.specs import ClipSpec

FAMILIES = ("cnn", "rnn", "transformer", "torchvision-video", "torchvision-detection", "custom")
TASKS = ("classify", "detect")
ASSETS = Path(__file__).resolve().parent.parent / "assets"

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a named model before any weights are read."""

    name: str
    family: str
    task: str
    default_weights: str | None
    builder: Builder

    @property
    def summary(self) -> str:
        """First line of the builder's docstring, for `vidbatch models`."""
        return (inspect.getdoc(self.builder) or "").split("\n", 1)[0]

    @property
    def input(self) -> str:
        """Expected input, from the shipped checkpoint's clip spec when there is one."""
        return _describe_input(self.task, self.default_weights)

    def arch_defaults(self) -> dict[str, Any]:
        """The architecture arguments the builder takes, with their defaults."""
        return {
            p.name: p.default
            for p in inspect.signature(self.builder).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name not in ("num_classes", "clip")
        }


_MODELS: dict[str, ModelSpec] = {}


@functools.cache
def _describe_input(task: str, weights: str | None) -> str:
    if task != "classify":
        return "frames"
    if weights is None or not os.path.exists(weights):
        return "uint8 RGB clips (N, T, S, S, 3)"
    from vidbatch.models.checkpoint import read_metadata

    try:
        clip = read_metadata(weights).clip
    except ValueError:
        return "uint8 RGB clips (N, T, S, S, 3)"
    return f"uint8 RGB clips (N, {clip.frames}, {clip.size}, {clip.size}, 3) at {clip.fps:g} fps"


def asset_path(filename: str) -> str:
    """Path of a checkpoint shipped inside the package (vidbatch/assets/)."""
    return str(ASSETS / filename)


def register_model(
    name: str, *, family: str, task: str, default_weights: str | None = None
) -> Callable[[B], B]:
    """Decorator: register `builder(*, num_classes, clip, **arch) -> nn.Module` under `name`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")

    def wrap(builder: B) -> B:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelSpec(name, family, task, default_weights, builder)
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
    """The spec of a registered model; a one-line ValueError listing the known names otherwise."""
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))}") from None


def check_arch(spec: ModelSpec, arch: dict[str, Any]) -> None:
    """Reject arch args the builder does not take, before anything expensive happens."""
    known = spec.arch_defaults()
    unknown = sorted(set(arch) - set(known))
    if unknown:
        raise ValueError(
            f"model {spec.name!r} has no arch arg {unknown[0]!r}; takes: {', '.join(known)}"
        )


def get_model(name: str, *, num_classes: int, clip: ClipSpec, **arch: Any) -> nn.Module:
    """An untrained module of a registered model (torchvision's `get_model`)."""
    spec = get_model_spec(name)
    check_arch(spec, arch)
    return spec.builder(num_classes=num_classes, clip=clip, **arch)
