"""torchvision weights by name (`DEFAULT`, `KINETICS400_V1`, `R3D_18_Weights.KINETICS400_V1`,
`COCO_V1` ...) through torchvision's weights API and the torch hub cache.

The file is the one torch.hub keeps under `$TORCH_HOME/hub/checkpoints/` (`torch.hub.get_dir()`),
named as torchvision publishes it (`r3d_18-b3b3357e.pth`). When it is missing it is downloaded
there with torch.hub's hash check (`download_url_to_file(..., hash_prefix)`, what
`check_hash=True` does); a file already in the cache gets the same check (its sha256 must start
with the hex digits in its name), since torch.hub checks only what it downloads. With the file
cached nothing touches the network. `VIDBATCH_OFFLINE=1` never downloads (a missing file is an
error at once), for machines without network where a download would only wait for a timeout.
The file is read with `torch.load(weights_only=True)`: tensors, never code.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision.models as tvm

from vidbatch.errors import describe
from vidbatch.models.checkpoint import read_bytes
from vidbatch.models.spec import RANDOM_WEIGHTS, ModelSpec, weights_uri

OFFLINE_ENV = "VIDBATCH_OFFLINE"
# DEFAULT, KINETICS400_V1, R3D_18_Weights.KINETICS400_V1; never a path or a URI.
_NAME = re.compile(r"^(?:[A-Za-z][A-Za-z0-9_]*_Weights\.)?[A-Z][A-Z0-9_]*$")


def is_weights_name(text: str | None) -> bool:
    """Whether `text` names torchvision weights rather than a file (a file named like that is
    given as ./NAME)."""
    return bool(text) and bool(_NAME.match(text or ""))


def get_weights(model: str, text: str) -> Any:
    """The torchvision weights record (a `WeightsEnum` member) `text` names for `model`."""
    enum = tvm.get_model_weights(model)
    qualifier, _, member = text.rpartition(".")
    available = ", ".join(["DEFAULT", *(w.name for w in enum)])
    if qualifier and qualifier != enum.__name__:
        raise ValueError(
            f"model {model!r}: {text} are not its weights (its weights are {enum.__name__}: "
            f"{available})"
        )
    try:
        return enum[member]
    except KeyError:
        raise ValueError(
            f"model {model!r}: no torchvision weights {member!r} (its weights are "
            f"{enum.__name__}: {available})"
        ) from None


def qualified_name(weights: Any) -> str:
    return f"{type(weights).__name__}.{weights.name}"


def cache_path(weights: Any) -> str:
    """Where torch.hub keeps this weights file ($TORCH_HOME/hub/checkpoints/<file>)."""
    filename = os.path.basename(urlparse(weights.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def hash_prefix(path: str) -> str | None:
    """The sha256 prefix torchvision puts in its file names (torch.hub's HASH_REGEX)."""
    found = torch.hub.HASH_REGEX.search(os.path.basename(path))
    return found.group(1) if found else None


def fetch_command(weights: Any) -> str:
    name = qualified_name(weights)
    return (
        f"python -c \"import torchvision; torchvision.models.get_weight('{name}')"
        '.get_state_dict(check_hash=True)"'
    )


def weights_file_bytes(weights: Any) -> bytes:
    """The bytes of the weights file, from the torch cache (downloaded there once if missing).

    Missing and not downloadable is a FileNotFoundError in one line naming the weights, the
    cache path and how to fetch them; a file that is not torchvision's is a ValueError.
    """
    path = cache_path(weights)
    name = qualified_name(weights)
    expected = hash_prefix(path)
    if not os.path.isfile(path):
        reason = _download(weights.url, path, expected)
        if reason:
            raise FileNotFoundError(
                f"torchvision weights {name} are not in the torch cache ({path}) and {reason}; "
                f"fetch them where there is network with: {fetch_command(weights)}, then copy "
                f"{os.path.basename(path)} into {os.path.dirname(path)} (set TORCH_HOME to use "
                "another cache)"
            )
    with open(path, "rb") as handle:
        data = handle.read()
    digest = hashlib.sha256(data).hexdigest()
    if expected and not digest.startswith(expected):
        raise ValueError(
            f"{path}: not torchvision's {name} (sha256 {digest[:12]}... does not start with "
            f"{expected}, torch.hub's hash check): delete it and fetch the weights again"
        )
    return data


def _download(url: str, path: str, expected: str | None) -> str | None:
    """None when the file is now in the cache, else why not (one phrase)."""
    if os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return f"{OFFLINE_ENV} forbids downloading"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.hub.download_url_to_file(url, path, hash_prefix=expected, progress=False)
    except RuntimeError as exc:  # torch.hub's hash check failed on the downloaded file
        raise ValueError(f"{url}: {describe(exc)}") from None
    except (OSError, http.client.HTTPException) as exc:  # no network, timeouts, a read-only cache
        return f"could not be downloaded ({describe(exc)})"
    return None


def zoo_weights(
    spec: ModelSpec, weights: str | None, storage_options: Mapping[str, Any] | None
) -> tuple[Any, bytes, str]:
    """(torchvision weights record, file bytes, where they came from) for a zoo model.

    A weights name reads the named record's file from the torch cache; a file or URI is a
    state dict the user gives, described by the model's DEFAULT record (labels, transforms);
    `random` gives empty bytes.
    """
    uri = weights_uri(spec, weights)
    if is_weights_name(uri):
        record = get_weights(spec.name, uri)
        return record, weights_file_bytes(record), cache_path(record)
    record = tvm.get_model_weights(spec.name).DEFAULT
    return record, (b"" if uri == RANDOM_WEIGHTS else read_bytes(uri, storage_options)), uri
