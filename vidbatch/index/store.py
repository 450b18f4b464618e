"""The IndexStore owns the output location (`output.uri`): its filesystem, resolved once, the
Delta tables under it, the commits, the run records and the writer lease.

Commit rule. A chunk of videos is committed table by table: each model table (clips,
detections, shots) in one Delta transaction that removes the rows it replaces and adds the
chunk's new files, then `videos` last. The `videos` commit records, as Delta app transactions
(`vidbatch:<table>`), the version of every model table it covers. Readers going through the
store (query, search, report, eval, the Python API) open `videos` at a version and each model
table at the version that commit names, so they see whole chunks only, and time travel is one
number: the `videos` version. A driver killed between the two leaves model-table commits no
`videos` commit names; the next run's `recover()` restores those tables to the named
versions before it writes anything (Delta RESTORE: the files are still there).

Each commit carries an app transaction `vidbatch-run:<run_id>` numbered by chunk, so a commit
retried after a lost reply is recognised as done instead of applied twice.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vidbatch.index import tables
from vidbatch.index.delta import (
    DataFile,
    add_actions,
    arrow_dataset,
    delta_options,
    file_stats,
    partition_folder,
    remove_action,
)
from vidbatch.index.lease import WriterLease
from vidbatch.storage import filesystem, is_local, local_path, needs_folders, retrying, scrub

SNAPSHOT_APP = "vidbatch:{table}"  # app transaction naming a model table's version in `videos`
RUN_APP = "vidbatch-run:{run_id}"  # app transaction numbering one run's commits


@dataclass(frozen=True)
class Snapshot:
    """Which version of each table a reader sees: one `videos` version names the rest."""

    versions: Mapping[str, int | None]
    videos_version: int | None = None


@dataclass
class ChunkCommit:
    """What the driver commits for one chunk of videos: file descriptions, never data rows
    (except the chunk's `videos` rows, one per video)."""

    sequence: int  # 1, 2, ... within the run: makes a retried commit recognisable
    run_id: str
    videos: pa.Table  # the chunk's new `videos` rows
    files: list[DataFile] = field(default_factory=list)  # model-table files workers wrote
    replace_uris: Sequence[str] = ()  # uris whose earlier rows this commit replaces
    models: frozenset[str] | None = None  # their rows under these models go; None: every model
    failed_ids: frozenset[str] = frozenset()  # videos none of whose rows are added


class IndexStore:
    """The index at one output URI. Picklable: workers get it to write data files."""

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.uri = uri.rstrip("/") if "://" in uri else os.path.abspath(uri)
        self.storage_options = dict(storage_options or {})
        self._tables: dict[str, Any] = {}
        self._existing: set[str] = set()

    def __repr__(self) -> str:  # storage_options may hold secrets
        return f"IndexStore({scrub(self.uri)!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"], state["storage_options"])

    # -- the location ----------------------------------------------------------------------

    @functools.cached_property
    def _location(self) -> tuple[Any, str]:
        return filesystem(self.uri, self.storage_options)

    @property
    def fs(self) -> Any:
        return self._location[0]

    @property
    def root(self) -> str:
        return self._location[1]

    @functools.cached_property
    def arrow_fs(self) -> Any:
        """A pyarrow filesystem for reading data files."""
        from pyarrow import fs as pafs

        if is_local(self.uri):
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))

    @functools.cached_property
    def delta_options(self) -> dict[str, str]:
        return delta_options(self.uri, self.storage_options)

    def table_uri(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def _retry(self, step: Any, action: str) -> Any:
        return retrying(step, self.uri, action=action, storage_options=self.storage_options)

    # -- tables -----------------------------------------------------------------------------

    def has_table(self, name: str) -> bool:
        if name in self._existing:  # a table, once there, stays
            return True
        # Not DeltaTable.is_deltatable: it holds the GIL while it waits on storage, which
        # deadlocks against an S3 endpoint served from this same process (tests' moto).
        found = self._retry(
            lambda: self.fs.exists(f"{self.root}/{name}/_delta_log"), f"look for the {name} table"
        )
        if found:
            self._existing.add(name)
        return found

    def exists(self) -> bool:
        return self.has_table("videos")

    def _open(self, name: str, version: int | str | datetime | None = None) -> Any:
        from deltalake import DeltaTable

        def load() -> Any:
            table = DeltaTable(self.table_uri(name), storage_options=self.delta_options)
            if version is not None:
                table.load_as_version(version)
            return table

        return self._retry(load, f"read the {name} table")

    def table(self, name: str) -> Any:
        """The writer's handle on a table at its latest version."""
        if name not in self._tables:
            self._tables[name] = self._open(name)
        else:
            self._retry(self._tables[name].update_incremental, f"read the {name} table")
        return self._tables[name]

    def ensure_tables(self) -> None:
        """Create every table that does not exist yet (empty, version 0)."""
        from deltalake import DeltaTable

        for name, schema in tables.TABLES.items():
            if not self.has_table(name):
                self._retry(
                    lambda name=name, schema=schema: DeltaTable.create(
                        self.table_uri(name),
                        schema=schema,
                        partition_by=list(tables.PARTITIONS[name]) or None,
                        mode="ignore",
                        storage_options=self.delta_options,
                    ),
                    f"create the {name} table",
                )

    # -- reading ----------------------------------------------------------------------------

    def snapshot(self, as_of: int | str | datetime | None = None) -> Snapshot:
        """The table versions a reader sees: `videos` at `as_of` (a version number or a
        timestamp; latest when None) and each model table as that version names it."""
        if not self.exists():
            raise FileNotFoundError(
                f"no index at {scrub(self.uri)}: no videos table there (is it the job's output.uri?)"
            )
        videos = self._open("videos", _parse_as_of(as_of))
        versions: dict[str, int | None] = {"videos": videos.version()}
        for name in tables.MODEL_TABLES:
            recorded = videos.transaction_version(SNAPSHOT_APP.format(table=name))
            versions[name] = (
                recorded if recorded is not None else (0 if self.has_table(name) else None)
            )
        versions["runs"] = None  # latest: the history of runs is not part of a snapshot
        return Snapshot(versions, versions["videos"])

    def dataset(self, name: str, snapshot: Snapshot | None = None) -> Any:
        """One table as a pyarrow dataset, at the snapshot's version (latest when None)."""
        if name not in tables.TABLES:
            raise ValueError(f"no table {name!r}; tables: {', '.join(tables.TABLES)}")
        version = snapshot.versions.get(name) if snapshot else None
        absent = snapshot is not None and version is None and name != "runs"
        if absent or not self.has_table(name):
            return tables.empty(name)
        table = self._open(name, version)
        return arrow_dataset(name, add_actions(table), f"{self.root}/{name}", self.arrow_fs)

    def read(
        self, name: str, columns: Sequence[str] | None = None, snapshot: Snapshot | None = None
    ) -> pa.Table:
        data = self.dataset(name, snapshot)
        if isinstance(data, pa.Table):
            return data.select(list(columns)) if columns else data
        return self._retry(lambda: data.to_table(columns=columns), f"read the {name} table")

    def current_videos(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The `videos` table as it is now (one row per URI), or empty when there is none."""
        if not self.exists():
            return (
                tables.empty("videos").select(list(columns)) if columns else tables.empty("videos")
            )
        return self.read("videos", columns)

    def runs(self) -> pa.Table:
        return self.read("runs") if self.has_table("runs") else tables.empty("runs")

    def connect(
        self, as_of: int | str | datetime | None = None, snapshot: Snapshot | None = None
    ) -> Any:
        """A DuckDB connection with every table registered as a view, all of one snapshot
        (`snapshot` when given, else the one `as_of` names)."""
        import duckdb

        snapshot = self.snapshot(as_of) if snapshot is None else snapshot
        con = duckdb.connect()
        for name in tables.TABLES:
            con.register(name, self.dataset(name, snapshot))
        return con

    # -- writing data files (workers) -------------------------------------------------------

    def write_rows(self, name: str, rows: pa.Table) -> list[DataFile]:
        """Write rows of table `name` as one Parquet file per partition, into the table's
        folder, uncommitted; returns what a commit needs to know of each file."""
        if rows.num_rows == 0:
            return []
        rows = rows.select(tables.TABLES[name].names).cast(tables.TABLES[name])
        columns = tables.PARTITIONS[name]
        groups = _partition_groups(rows, columns)
        written = []
        for values, part in groups:
            body = part.select(tables.file_schema(name).names)
            folder = partition_folder(name, values)
            relative = "/".join(p for p in (folder, f"part-{uuid.uuid4().hex}.parquet") if p)
            sink = pa.BufferOutputStream()
            pq.write_table(body, sink, compression="zstd")
            data = sink.getvalue().to_pybytes()
            target = f"{self.root}/{name}/{relative}"

            def put(target: str = target, data: bytes = data) -> None:
                if needs_folders(self.fs):
                    self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                self.fs.pipe_file(target, data)

            self._retry(put, f"write a {name} file")
            written.append(
                DataFile(
                    table=name,
                    path=relative,
                    size=len(data),
                    partition_values=dict(values),
                    stats=file_stats(body),
                    rows=body.num_rows,
                    modification_time=int(time.time() * 1000),
                    video_ids=tuple(sorted(set(part.column("video_id").to_pylist()))),
                )
            )
        return written

    # -- the one writer -----------------------------------------------------------------------

    def lease(self, run_id: str) -> WriterLease:
        return WriterLease(self.fs, self.root, self.uri, run_id)

    def recover(self) -> list[str]:
        """Undo model-table commits that no `videos` commit names (a driver killed between
        the two); returns the tables restored."""
        if not self.exists():
            return []
        videos = self.table("videos")
        restored = []
        for name in tables.MODEL_TABLES:
            if not self.has_table(name):
                continue
            recorded = videos.transaction_version(SNAPSHOT_APP.format(table=name)) or 0
            if self.table(name).version() > recorded:
                self._restore(name, recorded)
                restored.append(name)
        if restored:  # the restores are new versions: name them, or the next run redoes this
            self.seal(f"recover-{uuid.uuid4().hex[:8]}", 1)
        return restored

    def _restore(self, name: str, version: int) -> None:
        """Delta RESTORE as one commit: the files of `version` back, later ones removed.
        (delta-rs's own restore holds the GIL while it reads storage.)"""
        latest = _live_files(self.table(name))
        wanted = _live_files(self._open(name, version))
        now = int(time.time() * 1000)
        actions = [
            DataFile(
                table=name,
                path=unquote(path),
                size=f["size_bytes"],
                partition_values=dict(f["partition"] or {}),
                stats=_stats_json(f),
                rows=f["num_records"] or 0,
                modification_time=f["modification_time"],
                video_ids=(),
            ).add_action()
            for path, f in wanted.items()
            if path not in latest
        ]
        actions += [
            remove_action(unquote(path), f["size_bytes"], dict(f["partition"] or {}), now)
            for path, f in latest.items()
            if path not in wanted
        ]
        run_id = f"restore-{uuid.uuid4().hex[:8]}"
        self._commit(name, actions, ChunkCommit(1, run_id, tables.empty("videos")))

    def commit_chunk(self, chunk: ChunkCommit, lease: WriterLease | None = None) -> dict[str, int]:
        """Commit one chunk: each model table in one transaction (replaced rows out, new
        files in), then `videos`, which names the model tables' versions. Returns versions."""
        if lease is not None:
            lease.check()
        current_ids = frozenset(chunk.videos.column("video_id").to_pylist()) - chunk.failed_ids
        versions = {}
        for name in tables.MODEL_TABLES:
            actions = self._new_file_actions(
                name, [f for f in chunk.files if f.table == name], chunk.failed_ids
            )
            if chunk.replace_uris and self.has_table(name):
                actions += self._replaced(name, chunk.replace_uris, chunk.models, current_ids)
            if actions:
                versions[name] = self._commit(name, actions, chunk)
        # Only uris the index already holds can have rows to replace: a backfill of new videos
        # reads no existing file (planning marked every uri the index holds as known).
        actions = [f.add_action() for f in self.write_rows("videos", chunk.videos)]
        actions += self._replaced("videos", chunk.replace_uris, None, frozenset())
        versions["videos"] = self._commit("videos", actions, chunk, seal=True)
        return versions

    def seal(self, run_id: str, sequence: int) -> int:
        """A `videos` commit with no rows that names the model tables' latest versions (after
        compaction or pruning changed them)."""
        chunk = ChunkCommit(sequence=sequence, run_id=run_id, videos=tables.empty("videos"))
        return self._commit("videos", [], chunk, seal=True)

    def write_run(self, row: Mapping[str, Any]) -> None:
        """Insert or replace the run's row in `runs` (one small transaction)."""
        from deltalake import write_deltalake
        from deltalake.exceptions import CommitFailedError

        data = pa.Table.from_pylist([dict(row)], schema=tables.RUNS)
        run_id = str(row["run_id"]).replace("'", "''")

        def put() -> None:
            write_deltalake(
                self.table_uri("runs"),
                data,
                mode="overwrite",
                predicate=f"run_id = '{run_id}'",
                storage_options=self.delta_options,
            )

        def write() -> None:
            try:
                put()
            except CommitFailedError:
                # The writer lease makes this run the only writer: the "concurrent" commit is
                # its own, whose reply was lost and which delta-rs retried (seen in CI through
                # the flaky proxy). Replacing the row again is idempotent.
                put()

        self._retry(write, "write the run record")

    def prune(self, listed_uris: pa.Array, run_id: str, sequence: int) -> int:
        """Remove every row of videos no longer listed at the source; returns how many."""
        uris = self.current_videos(["uri"]).column("uri")
        gone = pc.filter(uris, pc.invert(pc.is_in(uris, value_set=listed_uris))).to_pylist()
        if gone:
            chunk = ChunkCommit(
                sequence=sequence, run_id=run_id, videos=tables.empty("videos"), replace_uris=gone
            )
            self.commit_chunk(chunk)
        return len(gone)

    def compact(self, retention_hours: float = 168.0) -> dict[str, Any]:
        """Optimize (small files into larger ones) and vacuum (delete files no version within
        the retention needs, and files of commits that never happened) every table."""
        report: dict[str, Any] = {}
        for name in tables.TABLES:
            if not self.has_table(name):
                continue
            table = self.table(name)
            metrics = self._retry(table.optimize.compact, f"optimize {name}")
            self._retry(table.update_incremental, f"read the {name} table")
            deleted = self._retry(
                lambda table=table: table.vacuum(
                    retention_hours=int(retention_hours),
                    dry_run=False,
                    enforce_retention_duration=False,
                    full=True,
                ),
                f"vacuum {name}",
            )
            report[name] = {
                "files_added": metrics.get("numFilesAdded", 0),
                "files_removed": metrics.get("numFilesRemoved", 0),
                "files_deleted": len(deleted),
            }
        self.seal(f"compact-{uuid.uuid4().hex[:8]}", 1)
        return report

    # -- inside a commit ------------------------------------------------------------------------

    def _commit(
        self, name: str, actions: list[Any], chunk: ChunkCommit, *, seal: bool = False
    ) -> int:
        from deltalake import CommitProperties, Transaction
        from deltalake.exceptions import CommitFailedError

        app = RUN_APP.format(run_id=chunk.run_id)

        def committed(table: Any) -> bool:
            return (table.transaction_version(app) or 0) >= chunk.sequence

        def attempt() -> int:
            table = self.table(name)
            if committed(table):
                return table.version()  # committed already; the reply was lost
            txns = [Transaction(app, chunk.sequence)]
            if seal:
                for data_table in tables.MODEL_TABLES:
                    if self.has_table(data_table):
                        version = self.table(data_table).version()
                        txns.append(Transaction(SNAPSHOT_APP.format(table=data_table), version))
            try:
                table.create_write_transaction(
                    actions,
                    "append",
                    tables.TABLES[name],
                    partition_by=list(tables.PARTITIONS[name]) or None,
                    commit_properties=CommitProperties(
                        custom_metadata={"vidbatch.run_id": chunk.run_id},
                        app_transactions=txns,
                    ),
                )
            except CommitFailedError:
                # A put whose reply was lost and that delta-rs retried finds its own commit
                # there and calls it a concurrent one: ours if it carries this commit's number.
                table.update_incremental()
                if not committed(table):
                    raise
                return table.version()
            table.update_incremental()
            return table.version()

        return self._retry(attempt, f"commit to {name}")

    def _new_file_actions(
        self, name: str, files: list[DataFile], failed_ids: frozenset[str]
    ) -> list[Any]:
        """Add actions for a chunk's new files, without the rows of videos that failed (a video
        is indexed whole or not at all): such files are rewritten or dropped."""
        actions = []
        for data_file in files:
            failed = failed_ids.intersection(data_file.video_ids)
            if not failed:
                actions.append(data_file.add_action())
                continue
            if len(failed) < len(data_file.video_ids):
                rows = self._read_file(name, data_file.path, data_file.partition_values)
                keep = pc.invert(pc.is_in(rows.column("video_id"), pa.array(sorted(failed))))
                actions += [f.add_action() for f in self.write_rows(name, rows.filter(keep))]
            self._delete(name, data_file.path)
        return actions

    def _replaced(
        self,
        name: str,
        uris: Sequence[str],
        models: frozenset[str] | None,
        keep_ids: frozenset[str],
    ) -> list[Any]:
        """Remove (and where a file also holds other rows, rewrite) the rows of `uris` that a
        commit replaces: in `videos` every row of those uris; in a model table the rows of the
        run's `models`, and of any model when the row's video_id is not a current one (the
        content changed). Files are found by their uri statistics, then read by column."""
        if not uris or not self.has_table(name):
            return []
        live = add_actions(self.table(name))
        if live.num_rows == 0:
            return []
        wanted = np.array(sorted(set(uris)), dtype=object)
        candidates = range(live.num_rows)
        if "min.uri" in live.column_names and "max.uri" in live.column_names:
            # Files whose [min uri, max uri] holds a wanted uri (or that have no statistics).
            low = live.column("min.uri").to_numpy(zero_copy_only=False)
            high = live.column("max.uri").to_numpy(zero_copy_only=False)
            known = np.array(
                [a is not None and b is not None for a, b in zip(low, high, strict=True)]
            )
            at = np.searchsorted(wanted, np.where(known, low, ""), side="left")
            inside = np.array(
                [
                    k and i < len(wanted) and wanted[i] <= h
                    for k, i, h in zip(known, at, high, strict=True)
                ]
            )
            candidates = np.flatnonzero(inside | ~known)
        now = int(time.time() * 1000)
        actions: list[Any] = []
        paths = live.column("path")
        wanted_uris = pa.array(wanted.tolist(), pa.string())
        current_ids = pa.array(sorted(keep_ids), pa.string())
        for i in candidates:
            path = paths[int(i)].as_py()
            values = {
                c: live.column(f"partition.{c}")[int(i)].as_py() for c in tables.PARTITIONS[name]
            }
            physical = _physical(path)
            rows = self._read_file(name, physical, values, columns=["uri", "video_id"])
            drop = pc.is_in(rows.column("uri"), value_set=wanted_uris)
            if name in tables.MODEL_TABLES and models is not None:
                stale = pc.invert(pc.is_in(rows.column("video_id"), current_ids))
                if values.get("model") not in models:
                    drop = pc.and_(drop, stale)
            hits = pc.sum(drop).as_py() or 0
            if hits == 0:
                continue
            size = live.column("size_bytes")[int(i)].as_py()
            actions.append(remove_action(physical, size, values, now))
            if hits < rows.num_rows:
                whole = self._read_file(name, physical, values)
                actions += [
                    f.add_action() for f in self.write_rows(name, whole.filter(pc.invert(drop)))
                ]
        return actions

    def _read_file(
        self,
        name: str,
        physical: str,
        partition_values: Mapping[str, Any],
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        path = f"{self.root}/{name}/{physical}"
        body = self._retry(
            lambda: pq.read_table(path, columns=columns, filesystem=self.arrow_fs),
            f"read a {name} file",
        )
        if columns is not None:
            return body
        for column in tables.PARTITIONS[name]:
            body = body.append_column(
                column, pa.array([partition_values[column]] * body.num_rows, pa.string())
            )
        return body.select(tables.TABLES[name].names)

    def _delete(self, name: str, physical: str) -> None:
        path = f"{self.root}/{name}/{physical}"
        if is_local(self.uri):
            self._retry(
                lambda: os.remove(local_path(path)) if os.path.exists(local_path(path)) else None,
                "delete a file",
            )
        else:
            self._retry(lambda: self.fs.rm_file(path), "delete a file")


def _partition_groups(
    rows: pa.Table, columns: Iterable[str]
) -> list[tuple[dict[str, Any], pa.Table]]:
    columns = list(columns)
    if not columns:
        return [({}, rows)]
    keys = rows.select(columns).group_by(columns).aggregate([]).to_pylist()
    groups = []
    for key in keys:
        mask = pc.scalar(True)
        for column, value in key.items():
            field = pc.field(column)
            mask = mask & (field.is_null() if value is None else field == value)
        groups.append((key, rows.filter(mask)))
    return groups


def _physical(path: str) -> str:
    return unquote(path)


def _live_files(table: Any) -> dict[str, dict[str, Any]]:
    """Path (as the log spells it) -> add action, nested: partition, min, max, null_count."""
    actions = pa.table(table.get_add_actions(flatten=False)).to_pylist()
    return {a["path"]: a for a in actions}


def _stats_json(action: Mapping[str, Any]) -> str:
    """Delta statistics back from a nested add action (get_add_actions)."""
    import json

    def present(values: Any) -> dict[str, Any]:
        return {k: v for k, v in (values or {}).items() if v is not None}

    return json.dumps(
        {
            "numRecords": action.get("num_records"),
            "minValues": present(action.get("min")),
            "maxValues": present(action.get("max")),
            "nullCount": present(action.get("null_count")),
        },
        separators=(",", ":"),
        default=str,
    )


def _parse_as_of(as_of: int | str | datetime | None) -> int | datetime | None:
    """A version number, or a timestamp (ISO 8601; UTC when it names no zone)."""
    if as_of is None or isinstance(as_of, (int, datetime)):
        if isinstance(as_of, datetime) and as_of.tzinfo is None:
            return as_of.replace(tzinfo=timezone.utc)
        return as_of
    text = str(as_of).strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--as-of {text!r}: expected a table version (e.g. 3) or a timestamp "
            "(e.g. 2026-11-30T08:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
