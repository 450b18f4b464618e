"""Listing: turn a source URI (prefix, glob, single file or manifest) into video references."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from vidbatch.errors import ConfigError, describe
from vidbatch.storage import StorageError, filesystem, normalize_uri, public_uri, retrying

VIDEO_EXTENSIONS = frozenset(
    "mp4 m4v mov mkv webm avi mpg mpeg ts mts m2ts flv wmv 3gp ogv y4m".split()
)
MANIFEST_EXTENSIONS = (".parquet", ".csv")


@dataclass(frozen=True, slots=True)
class VideoRef:
    """One listed video: where it is and what identifies its content.

    `uri` is what the index stores and shows: normalized, without user:password or signed-URL
    parameters. `source` is what decoding opens (the URI as listed, credentials included)."""

    uri: str
    size_bytes: int
    etag: str | None = None
    mtime: str | None = None  # ISO 8601 in UTC, whatever the driver's time zone
    error: str | None = None  # set when a manifest names a file that cannot be listed
    source: str | None = None  # when it differs from `uri`

    @property
    def open_uri(self) -> str:
        return self.source or self.uri

    @property
    def content_key(self) -> str:
        return self.etag or f"{self.size_bytes}:{self.mtime}"

    @property
    def video_id(self) -> str:
        """Stable across runs while the content is unchanged."""
        return hashlib.sha256(f"{self.uri}\n{self.content_key}".encode()).hexdigest()[:20]


def list_videos(
    uri: str, storage_options: Mapping[str, Any] | None = None, limit: int | None = None
) -> list[VideoRef]:
    """List the videos a source names, sorted by URI. A missing source is a ConfigError."""
    try:
        fs, path = filesystem(uri, storage_options)
        if uri.lower().endswith(MANIFEST_EXTENSIONS):
            refs = _from_manifest(fs, path, uri, storage_options)
        else:  # a transient storage error retries the listing; a missing source does not
            refs = retrying(
                lambda: _list(fs, path, uri), uri, action="list", storage_options=storage_options
            )
    except ConfigError:
        raise
    except StorageError as exc:
        raise ConfigError(f"source.uri: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"source.uri: cannot list {uri} ({describe(exc)})") from exc
    refs = list({r.uri: r for r in refs}.values())  # one object under several spellings: once
    refs.sort(key=lambda r: r.uri)
    return refs[:limit] if limit is not None else refs


def _list(fs: Any, path: str, uri: str) -> list[VideoRef]:
    # A pattern, unless a folder or file has that very name (e.g. "shoots [2024]").
    if any(ch in path for ch in "*?[") and not fs.exists(path):
        found = fs.glob(path, detail=True).items()
        # Only files, and not the manifests and label tables that often sit beside videos.
        return [
            _ref(fs, p, info)
            for p, info in found
            if info.get("type") == "file" and not p.lower().endswith(MANIFEST_EXTENSIONS)
        ]
    if fs.isdir(path):
        found = fs.find(path, detail=True)
        return [_ref(fs, p, info) for p, info in found.items() if _is_video_name(p)]
    try:  # not fs.isfile: it answers False for any error, an outage included
        info = fs.info(path)
    except FileNotFoundError:
        info = {}
    if info.get("type") != "file":
        raise ConfigError(f"source.uri: no such file, folder or prefix: {uri}")
    return [_ref(fs, path, info)]


def _is_video_name(path: str) -> bool:
    return path.rsplit(".", 1)[-1].lower() in VIDEO_EXTENSIONS if "." in path else False


def _ref(fs: Any, path: str, info: Mapping[str, Any]) -> VideoRef:
    etag = info.get("ETag") or info.get("etag")
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if isinstance(mtime, (int, float)):  # local files: seconds since the epoch
        mtime = datetime.fromtimestamp(mtime, timezone.utc).isoformat()
    elif isinstance(mtime, datetime):
        mtime = (mtime if mtime.tzinfo else mtime.replace(tzinfo=timezone.utc)).isoformat()
    elif mtime is not None:
        mtime = str(mtime)
    return _make_ref(
        _full_uri(fs, path),
        size_bytes=int(info.get("size") or 0),
        etag=str(etag).strip('"') if etag else None,
        mtime=mtime,
    )


def _make_ref(listed: str, **fields: Any) -> VideoRef:
    source = normalize_uri(listed)
    uri = public_uri(source)
    return VideoRef(uri=uri, source=source if source != uri else None, **fields)


def _full_uri(fs: Any, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def _from_manifest(fs: Any, path: str, uri: str, storage_options: Any) -> list[VideoRef]:
    data = retrying(lambda: fs.cat_file(path), uri, action="read", storage_options=storage_options)
    table = (
        pq.read_table(io.BytesIO(data))
        if path.endswith(".parquet")
        else pacsv.read_csv(pa.py_buffer(data))
    )
    if "uri" not in table.column_names:
        raise ConfigError(f"source.uri: manifest {uri} has no 'uri' column")
    # One object under several spellings (s3://b//a.mp4, s3://b/./a.mp4) is listed once.
    uris = {normalize_uri(u): None for u in table.column("uri").to_pylist() if u}

    def stat(video_uri: str) -> VideoRef:
        try:
            vfs, vpath = filesystem(video_uri, storage_options)
            info = retrying(
                lambda: vfs.info(vpath), video_uri, action="stat", storage_options=storage_options
            )
            ref = _ref(vfs, vpath, info)
            # Keep what the manifest gave to open it (a signed URL's parameters, say).
            return _make_ref(video_uri, size_bytes=ref.size_bytes, etag=ref.etag, mtime=ref.mtime)
        except StorageError as exc:
            return _make_ref(video_uri, size_bytes=0, error=f"catalog: {exc}")
        except (OSError, ValueError) as exc:
            return _make_ref(video_uri, size_bytes=0, error=f"catalog: {describe(exc)}")

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(stat, uris))
