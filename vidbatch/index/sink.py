"""Committing output: files are staged under `_staging/` and moved into the Hive-partitioned
tables only when a run has produced them whole, so readers never see half-written files.

Every storage step (stage, move into place, clean up) is idempotent and retried on transient
errors (`storage.retrying`); when storage stays down, the commit raises StorageError naming the
URI, leaving at most data files without their `videos` twin, which the next run removes."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vidbatch.index import tables
from vidbatch.storage import filesystem, join, needs_folders, retrying, uri_of

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def partition_value(value: str) -> str:
    """A Hive path segment that cannot escape its folder: URI-encoded, dots encoded when leading."""
    encoded = quote(str(value), safe="-_.")
    if encoded.startswith("."):
        encoded = encoded.replace(".", "%2E")
    return encoded or "_"


def file_name(value: str) -> str:
    """A file name made only of safe characters."""
    return _SAFE_NAME.sub("_", value).lstrip(".") or "_"


class TableSink:
    """Stage partitioned Parquet files for one run, then move them into place together."""

    def __init__(self, output_uri: str, storage_options: Mapping[str, Any] | None, run_id: str):
        self.output_uri = output_uri.rstrip("/")
        self.storage_options = storage_options
        self.fs, self.root = filesystem(self.output_uri, storage_options)
        self.folders = needs_folders(self.fs)
        self.run_id = run_id
        self.staging = join(self.root, "_staging", file_name(run_id))
        self.staged: list[str] = []  # relative paths

    def stage(self, name: str, table: pa.Table, partitions: Mapping[str, str], part: str) -> None:
        """Write rows of one table into the partition given by `partitions` (e.g. model, date)."""
        if table.num_rows == 0:
            return
        schema = tables.file_schema(name)
        table = table.select(schema.names).cast(schema)  # partition columns live in the path only
        folders = [f"{key}={partition_value(partitions[key])}" for key in tables.PARTITIONS[name]]
        relative = "/".join([name, *folders, f"{file_name(part)}.parquet"])
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        target, data = join(self.staging, relative), buffer.getvalue()

        def write() -> None:
            self._folder_of(target)
            self.fs.pipe_file(target, data)

        self._retry(write, target, "stage")
        self.staged.append(relative)

    def stage_by(
        self, name: str, table: pa.Table, column: str, partitions: Mapping[str, str], part: str
    ) -> None:
        """Stage one file per distinct value of `column` (e.g. one per model)."""
        for value in pc.unique(table.column(column)).to_pylist() if table.num_rows else []:
            rows = table.filter(pc.equal(table.column(column), value))
            self.stage(name, rows, {**partitions, column: value}, part)

    def commit(self) -> list[str]:
        """Move every staged file into the tables; same-named files are replaced, never doubled."""
        committed = []
        for relative in self.staged:
            self._move(join(self.staging, relative), join(self.root, relative))
            committed.append(relative)
        self._retry(self._remove_staging, self.staging, "remove staging")
        self.staged = []
        return committed

    def _move(self, source: str, target: str) -> None:
        """Into place: a rename where folders are real, else copy then delete (each retried:
        a copy repeated while the source exists, or a delete of a gone key, changes nothing)."""
        if self.folders:

            def rename() -> None:
                self._folder_of(target)
                self.fs.mv(source, target)

            self._retry(rename, target, "commit")
            return
        self._retry(lambda: self.fs.cp_file(source, target), target, "commit")
        self._retry(lambda: self.fs.rm_file(source), source, "remove staged copy")

    def _remove_staging(self) -> None:
        if self.fs.exists(self.staging):
            self.fs.rm(self.staging, recursive=True)
        parent = self.staging.rsplit("/", 1)[0]
        if self.fs.exists(parent) and not self.fs.ls(parent):
            self.fs.rmdir(parent)

    def _folder_of(self, path: str) -> None:
        if self.folders:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)

    def _retry(self, step, path: str, action: str):
        uri = uri_of(self.fs, path)
        return retrying(step, uri, action=action, storage_options=self.storage_options)
