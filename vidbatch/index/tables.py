"""Arrow schemas of the output tables, declared once; every writer and reader uses these."""

from __future__ import annotations

import pyarrow as pa

VIDEOS = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("size_bytes", pa.int64()),
        ("etag", pa.string()),
        ("mtime", pa.string()),
        ("duration_s", pa.float64()),
        ("fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("codec", pa.string()),
        ("status", pa.string()),  # ok | failed | skipped
        ("error", pa.string()),  # "stage: message", null when ok
        ("segments", pa.int32()),
        ("frames_decoded", pa.int64()),
        ("frames_used", pa.int64()),
        ("config_key", pa.string()),  # sampling config + model versions, for incremental runs
        ("run_id", pa.string()),
        ("processed_at", pa.timestamp("us", tz="UTC")),
    ]
)

CLIPS = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("clip_start_s", pa.float64()),
        ("clip_end_s", pa.float64()),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("label", pa.string()),
        ("score", pa.float32()),
        ("labels", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float32())),
        ("run_id", pa.string()),
    ]
)

DETECTIONS = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("frame_time_s", pa.float64()),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("label", pa.string()),
        ("score", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("run_id", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {"videos": VIDEOS, "clips": CLIPS, "detections": DETECTIONS}

# Hive partition columns, outermost first.
PARTITIONS: dict[str, tuple[str, ...]] = {
    "videos": ("date",),
    "clips": ("model", "date"),
    "detections": ("model", "date"),
}


def file_schema(name: str) -> pa.Schema:
    """Columns stored inside the Parquet files: everything but the Hive partition columns."""
    schema = TABLES[name]
    for column in PARTITIONS[name]:
        if column in schema.names:
            schema = schema.remove(schema.get_field_index(column))
    return schema


def read_schema(name: str) -> pa.Schema:
    """What readers see: file columns plus partition columns (strings from the path)."""
    return pa.schema([*file_schema(name), *(pa.field(p, pa.string()) for p in PARTITIONS[name])])


def empty(name: str) -> pa.Table:
    return TABLES[name].empty_table()


def to_ipc(table: pa.Table) -> bytes:
    """Serialize a table to carry it through Ray Data as one binary value."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
