"""SQL over the output tables: DuckDB views `videos`, `clips`, `detections` on Arrow datasets,
so any fsspec store (S3 with the job's storage_options) works without DuckDB extensions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as pds
from pyarrow.fs import FSSpecHandler, PyFileSystem

from vidbatch import tables
from vidbatch.storage import filesystem, join


def table_dataset(output_uri: str, name: str, storage_options: Mapping[str, Any] | None = None):
    """A pyarrow dataset of one output table (Hive partitions as columns), or an empty table."""
    fs, root = filesystem(output_uri, storage_options)
    path = join(root, name)
    schema = tables.read_schema(name)
    partition_fields = [schema.field(p) for p in tables.PARTITIONS[name]]
    if not fs.exists(path):
        return schema.empty_table()
    return pds.dataset(
        path,
        filesystem=PyFileSystem(FSSpecHandler(fs)),
        format="parquet",
        partitioning=pds.partitioning(pa.schema(partition_fields), flavor="hive"),
        schema=schema,
        exclude_invalid_files=False,
    )


def connect(output_uri: str, storage_options: Mapping[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the index's tables registered as views."""
    fs, root = filesystem(output_uri, storage_options)
    if not fs.exists(root):
        raise FileNotFoundError(f"no index at {output_uri}")
    con = duckdb.connect()
    for name in tables.TABLES:
        con.register(name, table_dataset(output_uri, name, storage_options))
    return con


def query(output_uri: str, sql: str, storage_options: Mapping[str, Any] | None = None) -> pa.Table:
    con = connect(output_uri, storage_options)
    try:
        return con.execute(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise ValueError(f"SQL error: {str(exc).splitlines()[0]}") from exc
