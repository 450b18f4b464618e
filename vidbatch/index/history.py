"""What earlier runs left in the output: which videos are indexed (for incremental runs),
orphaned files of a killed commit, and the `_runs/` records."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc

from vidbatch.job.catalog import VideoRef
from vidbatch.storage import filesystem, join, retrying
from vidbatch.tools.query import table_dataset

# Why a listed video is (or is not) processed tonight.
NEW, CHANGED, RETRY, UPGRADE, SKIP = "new", "changed", "retry", "upgrade", "skipped"


def _retried(action: str) -> Callable:
    """Retry the whole step on transient storage errors: each of these is safe to redo."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(output_uri: str, storage_options: Mapping[str, Any] | None = None, *args: Any):
            return retrying(
                lambda: fn(output_uri, storage_options, *args),
                output_uri,
                action=action,
                storage_options=storage_options,
            )

        return run

    return wrap


@dataclass
class IndexState:
    """Per video_id and per uri, what the `videos` table already says."""

    ok_keys: dict[str, set[str]] = field(default_factory=dict)  # video_id -> config keys done ok
    seen_ids: set[str] = field(default_factory=set)
    seen_uris: set[str] = field(default_factory=set)

    def decide(self, ref: VideoRef, config_key: str) -> str:
        keys = self.ok_keys.get(ref.video_id)
        if keys and config_key in keys:
            return SKIP
        if keys:
            return UPGRADE
        if ref.video_id in self.seen_ids:
            return RETRY
        return CHANGED if ref.uri in self.seen_uris else NEW


@_retried("read the videos table")
def read_index_state(output_uri: str, storage_options: Mapping[str, Any] | None) -> IndexState:
    state = IndexState()
    videos = table_dataset(output_uri, "videos", storage_options)
    table = (
        videos.to_table(columns=["video_id", "uri", "status", "config_key"])
        if hasattr(videos, "to_table")
        else videos
    )
    if not table.num_rows:
        return state
    state.seen_ids = set(table.column("video_id").to_pylist())
    state.seen_uris = set(table.column("uri").to_pylist())
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    for video_id, key in zip(
        ok.column("video_id").to_pylist(), ok.column("config_key").to_pylist(), strict=True
    ):
        state.ok_keys.setdefault(video_id, set()).add(key)
    return state


@_retried("remove orphaned files")
def remove_orphans(output_uri: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    """Undo a commit a killed driver left half done, and drop stale staging areas.

    The `videos` file of a chunk is committed last, so a clips/detections file whose name has
    no `videos` twin belongs to a chunk that never finished: it is removed and redone.
    """
    fs, root = filesystem(output_uri, storage_options)
    removed = []
    staging = join(root, "_staging")
    if fs.exists(staging):
        fs.rm(staging, recursive=True)
        removed.append(staging)
    committed = {_name(p) for p in _parquet_files(fs, join(root, "videos"))}
    for table in ("clips", "detections"):
        for path in _parquet_files(fs, join(root, table)):
            if _name(path) not in committed:
                fs.rm(path)
                removed.append(path)
    return removed


@_retried("list committed files")
def committed_files(
    output_uri: str, storage_options: Mapping[str, Any] | None
) -> dict[str, list[str]]:
    """File name -> its paths in every table and partition (names are shared across tables)."""
    fs, root = filesystem(output_uri, storage_options)
    files: dict[str, list[str]] = {}
    for table in ("videos", "clips", "detections"):
        for path in _parquet_files(fs, join(root, table)):
            files.setdefault(_name(path), []).append(path)
    return files


def _parquet_files(fs: Any, path: str) -> list[str]:
    return [p for p in fs.find(path) if p.endswith(".parquet")] if fs.exists(path) else []


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


@_retried("write the run record")
def write_run_record(
    output_uri: str, storage_options: Mapping[str, Any] | None, record: dict
) -> None:
    """`_runs/<run_id>.json`: one small JSON per run, rewritten as the run progresses."""
    fs, root = filesystem(output_uri, storage_options)
    path = join(root, "_runs", f"{record['run_id']}.json")
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, json.dumps(record, indent=2, sort_keys=True, default=str).encode())


@_retried("read run records")
def read_run_records(
    output_uri: str, storage_options: Mapping[str, Any] | None = None
) -> list[dict]:
    fs, root = filesystem(output_uri, storage_options)
    folder = join(root, "_runs")
    if not fs.exists(folder):
        return []
    records = [json.loads(fs.cat_file(p)) for p in fs.find(folder) if p.endswith(".json")]
    return sorted(records, key=lambda r: r.get("started_at", ""))
