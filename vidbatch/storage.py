"""fsspec access in one place: nothing below this module knows which store a URI lives on."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from fsspec.core import url_to_fs

_SECRET_KEY = re.compile(r"secret|token|password|key|credential|session", re.IGNORECASE)


def filesystem(uri: str, storage_options: Mapping[str, Any] | None = None):
    """(filesystem, path) for a URI; local paths become absolute."""
    if "://" not in uri:
        uri = os.path.abspath(uri)
    return url_to_fs(uri, **dict(storage_options or {}))


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return os.path.abspath(uri[len("file://") :] if uri.startswith("file://") else uri)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def open_input(uri: str, storage_options: Mapping[str, Any] | None = None, **kwargs):
    """A readable binary file object: a plain file locally, ranged reads on object stores."""
    if is_local(uri):
        return open(local_path(uri), "rb")
    fs, path = filesystem(uri, storage_options)
    return fs.open(path, "rb", **kwargs)


def redact(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of storage_options safe to print or record: secret-looking values hidden."""

    def clean(key: str, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: clean(str(k), v) for k, v in value.items()}
        return "***" if _SECRET_KEY.search(key) and value not in (None, "") else value

    return {k: clean(str(k), v) for k, v in (storage_options or {}).items()}


__all__ = ["filesystem", "is_local", "local_path", "join", "open_input", "redact"]
