"""Models ready for the pipeline: weights read once, preprocessing from the checkpoint.

`load_model(name, weights)` looks the name up in the registry, then hands the weights to the
loader registered for the model's family. vidbatch's own families share the safetensors loader
below; the torchvision zoo (`.pth` via `torch.load(weights_only=True)`, labels from torchvision's
metadata) and user `module:factory` models add a loader with `@register_loader(family)` and
return the same kind of object (`Classifier`, or a `Detector` for task "detect").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from vidbatch.models.checkpoint import (
    CheckpointMeta,
    fit_state_dict,
    parse_checkpoint,
    read_bytes,
    weights_version,
)
from vidbatch.models.common import clips_to_tensor
from vidbatch.models.registry import ModelSpec, check_arch, get_model_spec
from vidbatch.specs import ClipSpec

Loader = Callable[[ModelSpec, bytes, str, torch.device], Any]
RANDOM_WEIGHTS = "random"  # untrained weights, for tests: the loader receives empty bytes
_LOADERS: dict[str, Loader] = {}


def register_loader(*families: str) -> Callable[[Loader], Loader]:
    """Decorator: `loader(spec, weights_bytes, weights_uri, device)` for these families."""

    def wrap(loader: Loader) -> Loader:
        for family in families:
            _LOADERS[family] = loader
        return loader

    return wrap


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class LoadedModel:
    """What every loaded model carries: its name and family, the weights' version, labels,
    device and batch size (`batch_sizes`: the default on CUDA and on CPU)."""

    task = ""
    batch_sizes = (16, 4)

    def __init__(
        self,
        *,
        name: str,
        family: str,
        version: str,
        labels: Sequence[str],
        device: torch.device | str,
        batch_size: int | None = None,
        meta: CheckpointMeta | None = None,
    ) -> None:
        self.name = name
        self.family = family
        self.version = version
        self.labels = list(labels)
        self.device = torch.device(device)
        self.meta = meta
        on_gpu, on_cpu = self.batch_sizes
        self.batch_size = batch_size or (on_gpu if self.device.type == "cuda" else on_cpu)


class Classifier(LoadedModel):
    """A clip classifier: uint8 RGB clips in, class probabilities out.

    Normalization, clip spec and labels come from the checkpoint, so inference preprocesses
    exactly as training did.
    """

    task = "classify"
    batch_sizes = (64, 16)

    def __init__(
        self,
        *,
        module: nn.Module,
        clip: ClipSpec,
        mean: Sequence[float],
        std: Sequence[float],
        **identity: Any,
    ) -> None:
        super().__init__(**identity)
        self.clip = clip
        self.mean = tuple(mean)
        self.std = tuple(std)
        # channels_last: the clips arrive as NHWC frames; measured faster on CPU too.
        try:
            self.module = module.to(self.device, memory_format=torch.channels_last).eval()
        except RuntimeError:  # 3D convolutions (torchvision video models) have rank-5 weights
            self.module = module.to(self.device).eval()

    def __repr__(self) -> str:
        return (
            f"Classifier({self.name!r}, family={self.family!r}, version={self.version!r}, "
            f"labels={len(self.labels)}, clip={self.clip}, device={str(self.device)!r})"
        )

    def predict(self, clips: np.ndarray) -> np.ndarray:
        """uint8 (N, T, H, W, 3) RGB at `clip` -> float32 probabilities (N, len(labels))."""
        clips = np.asarray(clips)
        expected = (self.clip.frames, self.clip.size, self.clip.size, 3)
        if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[1:] != expected:
            raise ValueError(
                f"model {self.name!r} expects uint8 clips (N, {', '.join(map(str, expected))}), "
                f"got {clips.dtype} {clips.shape}"
            )
        out = np.empty((len(clips), len(self.labels)), np.float32)
        cuda = self.device.type == "cuda"
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
        with torch.inference_mode(), autocast:
            for i in range(0, len(clips), self.batch_size):
                x = clips_to_tensor(
                    clips[i : i + self.batch_size], self.mean, self.std, device=self.device
                )
                probs = self.module(x).float().softmax(dim=-1)
                out[i : i + len(x)] = probs.cpu().numpy()
        return out


def load_model(
    name: str,
    weights: str | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    device: str | None = None,
) -> Any:
    """A registered model (a Classifier or a Detector) with its weights (the spec's shipped default when `weights` is None).

    Unknown names, wrong or mismatched weights are one-line ValueErrors naming the model or the
    file; a missing file is FileNotFoundError naming it.
    """
    from vidbatch.models.custom import custom_spec, is_custom_name

    spec = custom_spec(name) if is_custom_name(name) else get_model_spec(name)
    uri = weights if weights is not None else spec.default_weights
    if uri is None and spec.family != "custom":  # a factory's own parameters are its weights
        raise ValueError(
            f"model {name!r} needs weights: a file or URI (a torchvision state dict for zoo "
            f"models), or {RANDOM_WEIGHTS!r} for an untrained model (tests only)"
        )
    loader = _LOADERS.get(spec.family)
    if loader is None:
        raise ValueError(f"model {name!r}: no weights loader for family {spec.family!r}")
    data = b"" if uri in (None, RANDOM_WEIGHTS) else read_bytes(uri, storage_options)
    return loader(spec, data, uri or "", torch.device(device or default_device()))


@register_loader("cnn", "rnn", "transformer")
def _load_vidbatch_checkpoint(
    spec: ModelSpec, data: bytes, uri: str, device: torch.device
) -> Classifier:
    """vidbatch's own families: safetensors + JSON metadata, built from the recorded arch."""
    state, meta = parse_checkpoint(data, uri)
    if meta.family != spec.family:
        raise ValueError(
            f"{uri}: checkpoint is family {meta.family!r} ({meta.name}), "
            f"but model {spec.name!r} is family {spec.family!r}"
        )
    if meta.task != spec.task:
        raise ValueError(f"{uri}: checkpoint task {meta.task!r} != model task {spec.task!r}")
    try:
        check_arch(spec, meta.arch)
        module = spec.builder(num_classes=len(meta.labels), clip=meta.clip, **meta.arch)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{uri}: cannot build {spec.name!r} from its arch args ({exc})") from None
    fit_state_dict(module, state, uri)
    return Classifier(
        name=spec.name,
        family=spec.family,
        module=module,
        version=weights_version(data),
        labels=meta.labels,
        clip=meta.clip,
        mean=meta.mean,
        std=meta.std,
        device=device,
        meta=meta,
    )
