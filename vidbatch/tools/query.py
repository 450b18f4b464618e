"""SQL over the index: DuckDB views of the Delta tables, read as Arrow datasets from one
snapshot, so any store (S3 with the job's storage_options) works without DuckDB extensions
(DuckDB's own `delta` extension downloads at run time)."""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from vidbatch.index.store import IndexStore
from vidbatch.storage import filesystem


def connect(
    output_uri: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    as_of: int | str | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the index's tables registered as views (`videos`, `clips`,
    `detections`, `shots`, `runs`), all of one snapshot: the latest, or `as_of` a `videos`
    table version or a timestamp."""
    return IndexStore(output_uri, storage_options).connect(as_of)


def query(
    output_uri: str,
    sql: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    as_of: int | str | None = None,
) -> pa.Table:
    """Run one SQL statement; a DuckDB error becomes one line: ValueError("SQL error: ...")
    keeping DuckDB's hints (`Did you mean "clips"?`)."""
    con = connect(output_uri, storage_options, as_of=as_of)
    try:
        # con.execute(...).to_arrow_table() copies the rows and warns in DuckDB 2.
        relation = con.sql(sql)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.Error as exc:
        raise ValueError(f"SQL error: {one_line(str(exc))}") from exc
    finally:
        con.close()


def one_line(text: str) -> str:
    """A library's multi-line message on one line: every line kept except the source excerpt
    DuckDB draws under an error (LINE n: ... and its caret)."""
    lines = [line.strip() for line in text.splitlines()]
    kept = [line for line in lines if line and not line.startswith(("LINE ", "^"))]
    return " ".join(kept)


FORMATS = ("csv", "json", "parquet")


def encode(table: pa.Table, fmt: str) -> bytes:
    """Results as CSV, JSON Lines or Parquet bytes. CSV has no nested types, so list/struct
    columns (clips.labels, clips.scores) become JSON text; JSON writes times as ISO 8601."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    buffer = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(table, buffer, compression="zstd")
    elif fmt == "csv":
        pacsv.write_csv(_flatten_nested(table), buffer)
    else:
        for row in table.to_pylist():
            buffer.write(json.dumps(row, default=_json_value, ensure_ascii=False).encode() + b"\n")
    return buffer.getvalue()


def write_table(
    table: pa.Table, fmt: str, out: str | None, storage_options: Mapping[str, Any] | None = None
) -> str:
    """Write results (`encode`) to a local path or fsspec URI; returns `out`. The file is
    complete or absent: serialized in memory first, a local file written beside the target
    and renamed."""
    if not out:
        raise ValueError(f"--format {fmt} needs --out FILE")
    data = encode(table, fmt)
    fs, path = filesystem(out, storage_options)
    if "://" in out and not out.startswith("file://"):
        fs.pipe_file(path, data)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial")
        with open(partial, "wb") as handle:
            handle.write(data)
        os.replace(partial, path)
    return out


def to_text(table: pa.Table) -> str:
    """A plain-text table for the terminal."""
    if not table.num_rows:
        return "(no rows)"
    return table.to_pandas().to_string(index=False)


def _flatten_nested(table: pa.Table) -> pa.Table:
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_nested(field.type):
            values = column.to_pylist()
            text = [None if v is None else json.dumps(v, default=_json_value) for v in values]
            column = pa.array(text, pa.string())
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _json_value(value: Any) -> Any:
    """JSON for what Arrow rows hold beyond JSON's types: times as ISO 8601, bytes as base64."""
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)
