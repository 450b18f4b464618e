"""Arrow schemas of the index tables, declared once; every writer and reader uses these.

Each table is a Delta Lake table under the output URI. The model tables are partitioned by
`model` (a Hive folder `model=<name>`); `videos` and `runs` are small and unpartitioned.
"""

from __future__ import annotations

import pyarrow as pa

VIDEOS = pa.schema(
    [
        ("video_id", pa.string()),  # hash of the normalized uri + content key
        ("uri", pa.string()),  # normalized, credentials and signed-URL parameters removed
        ("size_bytes", pa.int64()),
        ("etag", pa.string()),
        ("mtime", pa.string()),  # ISO 8601 in UTC
        ("duration_s", pa.float64()),
        ("fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("codec", pa.string()),
        ("status", pa.string()),  # ok | failed
        ("error", pa.string()),  # "stage: message", null when ok
        ("attempts", pa.int32()),  # failed runs in a row with this content and config; 0 when ok
        ("segments", pa.int32()),
        ("frames_decoded", pa.int64()),
        ("frames_used", pa.int64()),
        ("config_key", pa.string()),  # what decides the rows: model versions + sampling in use
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

SHOTS = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("shot_index", pa.int32()),  # 0-based, in time order
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("transition_score", pa.float32()),  # the model's score of the cut that opens the shot
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("run_id", pa.string()),
    ]
)

RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("status", pa.string()),  # running | ok | failed
        ("error", pa.string()),
        ("config_key", pa.string()),
        ("config", pa.string()),  # the job config as JSON, secrets redacted
        ("models", pa.map_(pa.string(), pa.string())),  # name -> version
        ("listed", pa.int64()),
        ("planned", pa.map_(pa.string(), pa.int64())),  # reason -> videos
        ("ok", pa.int64()),
        ("failed", pa.int64()),
        ("skipped", pa.int64()),
        ("failures", pa.map_(pa.string(), pa.int64())),  # failure stage -> videos
        ("clips", pa.int64()),
        ("detections", pa.int64()),
        ("shots", pa.int64()),
        ("segments", pa.int64()),
        ("video_seconds", pa.float64()),
        ("frames_decoded", pa.int64()),
        ("frames_used", pa.int64()),
        ("timings", pa.map_(pa.string(), pa.float64())),  # stage -> seconds
        ("wall_s", pa.float64()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "videos": VIDEOS,
    "clips": CLIPS,
    "detections": DETECTIONS,
    "shots": SHOTS,
    "runs": RUNS,
}
# Rows of one video under one model: what a re-index replaces.
MODEL_TABLES = ("clips", "detections", "shots")
# Which model task writes which table.
TASK_TABLES = {"classify": "clips", "detect": "detections", "shots": "shots"}

# Hive partition columns, outermost first.
PARTITIONS: dict[str, tuple[str, ...]] = {
    "videos": (),
    "clips": ("model",),
    "detections": ("model",),
    "shots": ("model",),
    "runs": (),
}


def file_schema(name: str) -> pa.Schema:
    """Columns stored inside the Parquet files: everything but the partition columns."""
    schema = TABLES[name]
    for column in PARTITIONS[name]:
        schema = schema.remove(schema.get_field_index(column))
    return schema


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
