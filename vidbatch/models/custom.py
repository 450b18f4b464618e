"""A user's own model by name, `package.module:factory`, without editing vidbatch.

The factory takes no arguments and returns `(module, metadata)`: an `nn.Module` taking
normalized clips (B, T, 3, H, W) and returning logits, and a dict with `labels`, `clip`
({frames, fps, size}) and optionally `mean`, `std`, `version`. Weights given in the job config
(safetensors or a torch state dict) are loaded into the module; without them the factory's
own parameters are used and the version is a hash of them.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vidbatch.models.checkpoint import fit_state_dict, weights_version
from vidbatch.models.loaded import Classifier, register_loader
from vidbatch.models.registry import ModelSpec
from vidbatch.specs import ClipSpec

FAMILY = "custom"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def is_custom_name(name: str) -> bool:
    return ":" in name


def custom_spec(name: str) -> ModelSpec:
    """A registry entry for `module:factory`, resolved by importing the module."""
    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model {name!r}: cannot import factory ({exc})") from None
    if not callable(factory):
        raise ValueError(f"model {name!r}: {attr} is not callable")
    return ModelSpec(
        name=name, family=FAMILY, task="classify", default_weights=None, builder=factory
    )


def _call_factory(spec: ModelSpec) -> tuple[nn.Module, Mapping[str, Any]]:
    built = spec.builder()
    if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module)):
        raise ValueError(f"model {spec.name!r}: factory must return (nn.Module, metadata dict)")
    module, meta = built
    for key in ("labels", "clip"):
        if key not in meta:
            raise ValueError(f"model {spec.name!r}: factory metadata lacks {key!r}")
    return module, meta


def _state_version(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


@register_loader(FAMILY)
def load_custom(spec: ModelSpec, data: bytes, uri: str, device: torch.device) -> Classifier:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    from vidbatch.models.checkpoint import read_state_dict

    module, meta = _call_factory(spec)
    if data:
        if data[8:9] == b"{":  # safetensors header: plain tensors, any metadata
            try:
                state = load_safetensors(data)
            except SafetensorError as exc:
                raise ValueError(f"{uri}: not a valid safetensors file ({exc})") from None
        else:
            state = read_state_dict(data, uri)
        fit_state_dict(module, state, uri)
    clip = meta["clip"]
    return Classifier(
        name=spec.name,
        family=FAMILY,
        module=module,
        version=str(
            meta.get("version") or (weights_version(data) if data else _state_version(module))
        ),
        labels=list(meta["labels"]),
        clip=clip if isinstance(clip, ClipSpec) else ClipSpec(**clip),
        mean=tuple(meta.get("mean", _IMAGENET_MEAN)),
        std=tuple(meta.get("std", _IMAGENET_STD)),
        device=device,
    )
