"""Delta Lake plumbing below the IndexStore: delta-rs storage options, data files described
as add actions (with the statistics that let a commit find a video's rows without scanning),
and table versions read as Arrow datasets.

Workers write Parquet files straight into a table's folder; such a file is invisible until a
commit names it in the table's `_delta_log/`, so a killed run leaves nothing half-visible and
`vacuum` removes what it wrote. Readers build Arrow datasets from the log's file list with
pyarrow's own filesystems (delta-rs's `to_pyarrow_dataset` leaves threads that abort the
interpreter at exit: delta-io/delta-rs#2184).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from vidbatch.index import tables
from vidbatch.storage import protocol

# Commits on S3 use conditional puts (If-None-Match), so two writers can never both commit
# the same version; measured against moto: 12 concurrent appends, 12 versions, no loss.
S3_SAFE_COMMITS = {"conditional_put": "etag"}
# object_store retries each request (its default waits up to 180 s); vidbatch retries whole
# steps on top (vidbatch.storage.retrying), so a step may fail sooner.
OBJECT_STORE_RETRIES = {"max_retries": "4", "retry_timeout": "60s"}


def delta_options(uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, str]:
    """delta-rs (object_store) options for the fsspec `storage_options` of `uri`.

    s3fs's key/secret/token, endpoint (top level or client_kwargs), region, anon and profile
    are translated; anything else delta-rs needs it reads from the environment (AWS_*,
    GOOGLE_*, AZURE_*), as the AWS SDKs do.
    """
    options = dict(storage_options or {})
    scheme = protocol(uri)
    out: dict[str, str] = {}
    if scheme in ("s3", "s3a"):
        client = dict(options.get("client_kwargs") or {})
        pairs = {
            "AWS_ACCESS_KEY_ID": options.get("key"),
            "AWS_SECRET_ACCESS_KEY": options.get("secret"),
            "AWS_SESSION_TOKEN": options.get("token"),
            "AWS_ENDPOINT_URL": options.get("endpoint_url") or client.get("endpoint_url"),
            "AWS_REGION": client.get("region_name") or options.get("region"),
            "AWS_PROFILE": options.get("profile"),
        }
        out.update({k: str(v) for k, v in pairs.items() if v})
        if options.get("anon"):
            out["AWS_SKIP_SIGNATURE"] = "true"
        if out.get("AWS_ENDPOINT_URL", "").startswith("http://"):
            out["AWS_ALLOW_HTTP"] = "true"
        if "AWS_S3_LOCKING_PROVIDER" not in options:
            out.update(S3_SAFE_COMMITS)
        out.update(OBJECT_STORE_RETRIES)
    elif scheme in ("gs", "gcs"):
        if isinstance(options.get("token"), str):
            out["GOOGLE_SERVICE_ACCOUNT"] = options["token"]
    elif scheme in ("az", "abfs", "abfss"):
        pairs = {
            "AZURE_STORAGE_ACCOUNT_NAME": options.get("account_name"),
            "AZURE_STORAGE_ACCOUNT_KEY": options.get("account_key"),
            "AZURE_STORAGE_SAS_KEY": options.get("sas_token"),
        }
        out.update({k: str(v) for k, v in pairs.items() if v})
    # Options already in delta-rs's own spelling pass through (e.g. AWS_S3_LOCKING_PROVIDER).
    out.update({k: str(v) for k, v in options.items() if k.isupper() and isinstance(v, str)})
    return out


def partition_value(value: str) -> str:
    """A Hive folder segment that cannot escape its folder: URI-encoded, as delta-rs does,
    with a leading dot encoded too."""
    encoded = quote(str(value), safe="-_.")
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    return encoded or "_"


def partition_folder(name: str, values: Mapping[str, str | None]) -> str:
    """`model=<encoded>` folders of a table's partition (empty for unpartitioned tables)."""
    return "/".join(
        f"{column}={partition_value(values[column]) if values[column] is not None else '__HIVE_DEFAULT_PARTITION__'}"
        for column in tables.PARTITIONS[name]
    )


def file_stats(rows: pa.Table) -> str:
    """Delta statistics of a data file: row count, and min/max/null counts of the flat
    columns, so commits and readers can skip files by uri, video_id or time."""
    stats: dict[str, Any] = {"numRecords": rows.num_rows, "minValues": {}, "maxValues": {}}
    stats["nullCount"] = {}
    for field, column in zip(rows.schema, rows.columns, strict=True):
        kind = field.type
        if not (
            pa.types.is_string(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind)
        ):
            continue
        stats["nullCount"][field.name] = column.null_count
        if column.null_count == len(column):
            continue
        low, high = pc.min_max(column).values()
        low, high = low.as_py(), high.as_py()
        if isinstance(low, float) and not (math.isfinite(low) and math.isfinite(high)):
            continue  # NaN or infinities: no bounds rather than wrong ones
        stats["minValues"][field.name] = low
        stats["maxValues"][field.name] = high
    return json.dumps(stats, separators=(",", ":"))


@dataclass(frozen=True)
class DataFile:
    """A Parquet file written into a table's folder and not yet committed: what a worker
    hands the driver instead of rows (a few hundred bytes, whatever the rows)."""

    table: str
    path: str  # relative to the table's root, as on storage (the Delta log URI-encodes it)
    size: int
    partition_values: dict[str, str | None]
    stats: str
    rows: int
    modification_time: int  # ms since the epoch
    video_ids: tuple[str, ...]

    def add_action(self) -> Any:
        from deltalake.transaction import AddAction

        return AddAction(
            self.path, self.size, self.partition_values, self.modification_time, True, self.stats
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DataFile:
        data = json.loads(text)
        data["video_ids"] = tuple(data["video_ids"])
        return cls(**data)


def remove_action(path: str, size: int | None, partition_values: Mapping[str, Any], now_ms: int):
    from deltalake.transaction import RemoveAction

    return RemoveAction(path, True, now_ms, size, dict(partition_values))


def add_actions(table: Any) -> pa.Table:
    """The live files of a DeltaTable version: path, size, partition.* and min/max stats."""
    return pa.table(table.get_add_actions(flatten=True))


def arrow_dataset(
    name: str, files: pa.Table, table_root: str, filesystem: Any
) -> pds.FileSystemDataset:
    """One table version as an Arrow dataset: the files its log lists, partition columns
    from the log (not parsed from folder names)."""
    schema = tables.TABLES[name]
    paths = [f"{table_root}/{unquote(p)}" for p in files.column("path").to_pylist()]
    partitions = []
    for i in range(files.num_rows):
        expression = pc.scalar(True)
        for column in tables.PARTITIONS[name]:
            value = files.column(f"partition.{column}")[i].as_py()
            field = pc.field(column)
            expression = expression & (field.is_null() if value is None else field == value)
        partitions.append(expression)
    return pds.FileSystemDataset.from_paths(
        paths,
        schema=schema,
        format=pds.ParquetFileFormat(),
        filesystem=filesystem,
        partitions=partitions,
    )


def sql_quote(values: Sequence[str]) -> str:
    """A SQL IN-list of string literals."""
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)
