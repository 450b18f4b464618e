"""vidbatch checkpoints: ONE `.safetensors` file whose header metadata carries, under the key
"vidbatch", a JSON document with everything needed to rebuild and run the model (family, arch
args, labels, clip spec, normalization) and how it was trained (held-out metrics).

Reading never unpickles anything: the header is parsed by hand (8-byte little-endian length,
then JSON), checked against the file size, and the tensors are decoded by safetensors itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from vidbatch.errors import describe
from vidbatch.specs import ClipSpec
from vidbatch.storage import filesystem, is_local, local_path

FORMAT_VERSION = 1
METADATA_KEY = "vidbatch"
# A real header is a few KB; anything above this is not a safetensors header.
_MAX_HEADER = 64 * 1024 * 1024


@dataclass(frozen=True)
class CheckpointMeta:
    """The JSON stored under "vidbatch" in the safetensors header."""

    name: str
    family: str
    task: str
    labels: tuple[str, ...]
    clip: ClipSpec
    mean: tuple[float, ...]
    std: tuple[float, ...]
    arch: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(
            {
                "format_version": self.format_version,
                "name": self.name,
                "family": self.family,
                "task": self.task,
                "arch": self.arch,
                "labels": list(self.labels),
                "clip": {k: v for k, v in asdict(self.clip).items() if v is not None},
                "normalization": {"mean": list(self.mean), "std": list(self.std)},
                "metrics": self.metrics,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, where: str) -> CheckpointMeta:
        """Parse and validate; errors are one line naming `where` (the file)."""
        try:
            doc = json.loads(text)
            version = int(doc["format_version"])
            if version > FORMAT_VERSION:
                raise ValueError(
                    f"format_version {version} is newer than this vidbatch ({FORMAT_VERSION})"
                )
            clip = doc["clip"]
            meta = cls(
                name=str(doc["name"]),
                family=str(doc["family"]),
                task=str(doc["task"]),
                labels=tuple(str(label) for label in doc["labels"]),
                clip=ClipSpec(
                    int(clip["frames"]),
                    float(clip["fps"]),
                    int(clip["size"]),
                    tuple(int(v) for v in clip["resize"]) if clip.get("resize") else None,
                ),
                mean=tuple(float(v) for v in doc["normalization"]["mean"]),
                std=tuple(float(v) for v in doc["normalization"]["std"]),
                arch=dict(doc.get("arch") or {}),
                metrics=dict(doc.get("metrics") or {}),
                format_version=version,
            )
        except KeyError as exc:
            raise ValueError(f"{where}: vidbatch metadata lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{where}: bad vidbatch metadata ({describe(exc)})") from None
        if not meta.labels:
            raise ValueError(f"{where}: vidbatch metadata has no labels")
        if len(meta.mean) != 3 or len(meta.std) != 3:
            raise ValueError(f"{where}: normalization mean/std must have 3 values")
        return meta


def weights_version(data: bytes) -> str:
    """Stable model version: first 12 hex digits of the sha256 of the weights file."""
    return hashlib.sha256(data).hexdigest()[:12]


def save_checkpoint(
    path: str,
    module: nn.Module,
    meta: CheckpointMeta,
    storage_options: Mapping[str, Any] | None = None,
) -> bytes:
    """Write `module`'s state dict and `meta` as one safetensors file; returns the bytes written.

    Local files are written atomically (temp file + rename), so a reader never sees half a file.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    data = save_safetensors(tensors, metadata={METADATA_KEY: meta.to_json()})
    if is_local(path):
        target = local_path(path)
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target) or ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        fs, fs_path = filesystem(path, storage_options)
        with fs.open(fs_path, "wb") as out:
            out.write(data)
    return data


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """The whole file through fsspec; FileNotFoundError names the URI."""
    try:
        fs, fs_path = filesystem(uri, storage_options)
        with fs.open(fs_path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file not found: {uri}") from None
    except IsADirectoryError:
        raise ValueError(f"{uri}: is a directory, not a weights file") from None


def parse_header(data: bytes, where: str) -> dict[str, Any]:
    """The safetensors JSON header, validated against the file size without decoding tensors."""
    if len(data) < 8:
        raise ValueError(f"{where}: not a safetensors file ({len(data)} bytes, truncated or empty)")
    (size,) = struct.unpack("<Q", data[:8])
    looks_like_json = data[8:9] == b"{"
    if size < 2 or size > _MAX_HEADER or not looks_like_json:
        raise ValueError(f"{where}: not a safetensors file (no safetensors header)")
    if 8 + size > len(data):
        raise ValueError(
            f"{where}: truncated safetensors file (header needs {8 + size} bytes, file has {len(data)})"
        )
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"{where}: not a safetensors file (bad header: {describe(exc)})") from None
    needed = 8 + size + max(ends, default=0)
    if needed > len(data):
        raise ValueError(
            f"{where}: truncated safetensors file (tensors need {needed} bytes, file has {len(data)})"
        )
    return header


def parse_checkpoint(data: bytes, where: str) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """(state_dict, meta) from the bytes of a vidbatch checkpoint; `where` names it in errors."""
    header = parse_header(data, where)
    metadata = header.get("__metadata__") or {}
    if METADATA_KEY not in metadata:
        raise ValueError(
            f"{where}: safetensors file without {METADATA_KEY!r} metadata (not a vidbatch checkpoint)"
        )
    meta = CheckpointMeta.from_json(metadata[METADATA_KEY], where)
    try:
        state = load_safetensors(data)
    except Exception as exc:  # safetensors raises its own SafetensorError for corrupt payloads
        raise ValueError(f"{where}: corrupt safetensors file ({describe(exc)})") from None
    return state, meta


def read_checkpoint(
    path_or_uri: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """(state_dict, meta) of a checkpoint on any fsspec store; never unpickles."""
    return parse_checkpoint(read_bytes(path_or_uri, storage_options), path_or_uri)


def read_metadata(
    path_or_uri: str, storage_options: Mapping[str, Any] | None = None
) -> CheckpointMeta:
    """Only the metadata (labels, clip, metrics) of a checkpoint, for listings and reports."""
    data = read_bytes(path_or_uri, storage_options)
    metadata = parse_header(data, path_or_uri).get("__metadata__") or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path_or_uri}: not a vidbatch checkpoint (no {METADATA_KEY!r} metadata)")
    return CheckpointMeta.from_json(metadata[METADATA_KEY], path_or_uri)


def fit_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Load `state` strictly; a mismatch is one line saying which keys or shapes differ."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch {_few(wrong)}")
    if problems:
        raise ValueError(
            f"{where}: weights do not fit the model built from its metadata ({'; '.join(problems)})"
        )
    module.load_state_dict(state, strict=True)


def _few(items: list[str], shown: int = 3) -> str:
    more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


# ---------------------------------------------- torchvision state dicts (.pth)


def read_state_dict(data: bytes, where: str) -> dict[str, torch.Tensor]:
    """A state dict from `.pth` bytes via `torch.load(weights_only=True)`: tensors, never code.

    Also takes torchvision's reference-script checkpoints ({"model": state_dict, ...}).
    """
    try:
        loaded = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        detail = f"it would import {found.group(1)}" if found else "it holds more than tensors"
        raise ValueError(
            f"{where}: refused: not a plain state dict (torch.load weights_only=True: {detail})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"{where}: not a torchvision state dict ({describe(exc)})") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ValueError(f"{where}: not a state dict (expected a mapping of names to tensors)")
    return dict(loaded)


def fit_torchvision_state(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Load strictly, except for BatchNorm step counters.

    torchvision's published detection weights come from FrozenBatchNorm2d models, which have
    no `num_batches_tracked`; built without weights the same layers are BatchNorm2d, which do.
    The counter does not affect inference, so the module's own value fills the gap.
    """
    own = module.state_dict()
    filled = dict(state)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in filled:
            filled[key] = value
    fit_state_dict(module, filled, where)
