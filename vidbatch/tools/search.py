"""`vidbatch search`: the time ranges where a label appears.

Clip rows tile a video back to back and detection rows are point samples, so a label shows up
as runs of rows. Runs are merged into intervals in DuckDB (gaps and islands: a row starts a new
interval when it begins more than the gap after everything before it has ended), per video,
model, source and label, so overlapping rows from reruns merge instead of doubling.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from vidbatch.storage import options_for

if TYPE_CHECKING:  # imported where used: `vidbatch --help` should not load DuckDB and Arrow
    import duckdb
    import pyarrow as pa

# Detectors sample frames at `sampling.frames.fps` (1 by default): 1.5 frame periods bridge
# one sample step with slack for rounding but not a missed frame.
DETECTION_GAP_S = 1.5
# Clips tile back to back (end of one == start of the next); this absorbs rounding only.
CLIP_GAP_S = 0.05
_EPS = 1e-6

RESULT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("uri", "string"),
    ("start_s", "float64"),
    ("end_s", "float64"),
    ("max_score", "float32"),
    ("model", "string"),
    ("source", "string"),  # clips | detections
    ("label", "string"),
    ("video_id", "string"),
    ("hits", "int64"),  # clips or detection frames merged into the interval
)

_INTERVALS_SQL = """
WITH hits AS (
    SELECT video_id, uri, model, 'clips' AS source, label,
           clip_start_s AS start_s, clip_end_s AS end_s, score
    FROM clips WHERE {where}
    UNION ALL
    SELECT video_id, uri, model, 'detections' AS source, label,
           frame_time_s AS start_s, frame_time_s AS end_s, max(score) AS score
    FROM detections WHERE {where}
    GROUP BY video_id, uri, model, label, frame_time_s
),
marked AS (
    SELECT *, coalesce(
        start_s - max(end_s) OVER (
            PARTITION BY source, video_id, uri, model, label ORDER BY start_s, end_s
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
        ) > CASE source WHEN 'clips' THEN $clip_gap ELSE $frame_gap END,
        true
    )::INTEGER AS opens
    FROM hits
),
islands AS (
    SELECT *, sum(opens) OVER (
        PARTITION BY source, video_id, uri, model, label ORDER BY start_s, end_s
        ROWS UNBOUNDED PRECEDING
    ) AS island
    FROM marked
)
SELECT uri, min(start_s) AS start_s, max(end_s) AS end_s, max(score) AS max_score,
       model, source, label, video_id, count(*) AS hits
FROM islands
GROUP BY source, video_id, uri, model, label, island
ORDER BY uri, start_s, model, source, label
"""


def find_intervals(
    con: duckdb.DuckDBPyConnection,
    *,
    label: str | None = None,
    min_score: float = 0.0,
    model: str | None = None,
    since: str | date | None = None,
    uri_glob: str | None = None,
    gap_s: float | None = None,
) -> pa.Table:
    """Merged intervals of one label (or of every label when `label` is None) on a connection
    from `query.connect`; the report draws its timelines from the same function."""
    import duckdb

    if gap_s is not None and gap_s < 0:
        raise ValueError(f"gap must be >= 0 seconds, got {gap_s}")
    predicates = ["score >= CAST($min_score AS FLOAT)"]  # scores are float32: 0.7f < 0.7
    params: dict[str, Any] = {
        "min_score": float(min_score),
        "clip_gap": (CLIP_GAP_S if gap_s is None else gap_s) + _EPS,
        "frame_gap": (DETECTION_GAP_S if gap_s is None else gap_s) + _EPS,
    }
    # Only the filters given become predicates, so DuckDB can push them into the scan
    # (model prunes the `model=` partitions).
    for column, op, name, value in (
        ("label", "=", "label", label),
        ("model", "=", "model", model),
        ("uri", "GLOB", "uri_glob", uri_glob),
    ):
        if value is not None:
            predicates.append(f"{column} {op} ${name}")
            params[name] = value
    if since is not None:  # videos (re)indexed on or after that day
        predicates.append(
            "video_id IN (SELECT video_id FROM videos "
            "WHERE CAST(processed_at AS DATE) >= CAST($since AS DATE))"
        )
        params["since"] = parse_date(since)
    sql = _INTERVALS_SQL.format(where=" AND ".join(predicates))
    try:
        table = con.sql(sql, params=params).to_arrow_table()
    except duckdb.Error as exc:
        from vidbatch.tools.query import one_line

        raise ValueError(f"search failed: {one_line(str(exc))}") from exc
    return table.cast(result_schema())


def result_schema() -> pa.Schema:
    """Columns of `search` results."""
    import pyarrow as pa

    return pa.schema([(name, pa.type_for_alias(kind)) for name, kind in RESULT_COLUMNS])


def search(
    output_uri: str,
    label: str,
    *,
    min_score: float = 0.0,
    model: str | None = None,
    since: str | date | None = None,
    uri_glob: str | None = None,
    gap_s: float | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Intervals (uri, start_s, end_s, max_score, model, source, ...) where `label` appears.

    Clips match on their top-1 label, detections on theirs; both need score >= `min_score`.
    `since` keeps rows of videos indexed on or after that day (`videos.processed_at`, UTC). `uri_glob`
    matches the whole URI, `*` crossing `/`. Rows merge when the next starts at most `gap_s`
    after the interval ends (default: 0.05 s for clips, 1.5 s between detection frames).
    """
    from vidbatch.tools.query import connect

    con = connect(output_uri, storage_options)
    try:
        return find_intervals(
            con,
            label=label,
            min_score=min_score,
            model=model,
            since=since,
            uri_glob=uri_glob,
            gap_s=gap_s,
        )
    finally:
        con.close()


def parse_date(value: str | date) -> str:
    """'YYYY-MM-DD'; `today`/`yesterday` in UTC."""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    today = datetime.now(timezone.utc).date()
    relative = {"today": today, "yesterday": today - timedelta(days=1)}
    if value.strip().lower() in relative:
        return relative[value.strip().lower()].isoformat()
    try:
        return date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        raise ValueError(
            f"not a date: {value!r} (expected YYYY-MM-DD, today or yesterday)"
        ) from None


def storage_options_arg(text: str) -> dict[str, Any]:
    """argparse type for --storage-options: a JSON object passed to fsspec as is."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"anon\": true}'")
    return value


def add_storage_options(parser: argparse.ArgumentParser, help: str = "fsspec options") -> None:
    parser.add_argument("--storage-options", type=storage_options_arg, metavar="JSON", help=help)


def add_results_arguments(parser: argparse.ArgumentParser) -> None:
    """--format, --out and --storage-options, as `query` and `search` take them."""
    parser.add_argument(
        "--format",
        choices=["table", "csv", "json", "parquet"],
        default="table",
        help="table (default) prints for reading; csv and json go to stdout without --out",
    )
    parser.add_argument(
        "--out", metavar="FILE|URI", help="file or URI (s3://...) to write; needed for parquet"
    )
    add_storage_options(parser)


def _cmd_search(args: argparse.Namespace) -> int:
    from vidbatch.tools.query import to_text

    table = search(
        args.output,
        args.label,
        min_score=args.min_score,
        model=args.model,
        since=args.since,
        uri_glob=args.uri_glob,
        gap_s=args.gap_s,
        storage_options=args.storage_options,
    )
    if args.format != "table":
        write_results(table, args.format, args.out, args.output, args.storage_options)
        if args.out:
            print(f"wrote {table.num_rows} intervals to {args.out}")
    elif table.num_rows:
        shown = table.select(["uri", "start_s", "end_s", "max_score", "model", "source", "hits"])
        print(to_text(shown))
    else:
        print(_nothing_found(args.output, args.label, args.model, args.storage_options))
    return 0


def write_results(
    table: pa.Table,
    fmt: str,
    out: str | None,
    index_uri: str,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Results of `query` or `search` as `fmt`: to `out` (a local path or any fsspec URI,
    written whole), or to stdout when there is no `out` (CSV and JSON Lines only).

    `out` on the same kind of store as the index (both s3://, say) is written with the
    index's storage_options; elsewhere with none, so a local file never gets S3 options."""
    import sys

    from vidbatch.tools.query import FORMATS, encode, write_table

    if out:
        write_table(table, fmt, out, options_for(out, index_uri, storage_options))
        return
    if fmt not in FORMATS or fmt == "parquet":
        raise ValueError(f"--format {fmt} needs --out FILE (only csv and json go to stdout)")
    sys.stdout.flush()
    sys.stdout.buffer.write(encode(table, fmt))
    sys.stdout.buffer.flush()


def closest(name: str, known: list[str], what: str) -> str:
    """`what 'x' is not in this index; ` and the closest known names, or a short list of them."""
    import difflib

    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if close:
        return (
            f"{what} {name!r} is not in this index; did you mean {' or '.join(map(repr, close))}?"
        )
    shown = ", ".join(known[:20]) + (f" ... ({len(known)} in all)" if len(known) > 20 else "")
    return f"{what} {name!r} is not in this index; {what}s: {shown or '(none)'}"


def _nothing_found(
    output_uri: str, label: str, model: str | None, storage_options: Mapping[str, Any] | None
) -> str:
    """Say whether the label (and model) exist at all: a typo and a strict filter need
    different fixes."""
    from vidbatch.tools.query import connect

    con = connect(output_uri, storage_options)
    try:
        labels = [
            row[0]
            for row in con.sql(
                "SELECT label FROM clips UNION SELECT label FROM detections ORDER BY 1"
            ).fetchall()
        ]
        models = [
            row[0]
            for row in con.sql(
                "SELECT model FROM clips UNION SELECT model FROM detections ORDER BY 1"
            ).fetchall()
        ]
    finally:
        con.close()
    if label not in labels:
        return closest(label, labels, "label")
    if model is not None and model not in models:
        return closest(model, models, "model")
    return f"no intervals of {label!r} pass these filters"


def add_search_parser(verbs: Any) -> argparse.ArgumentParser:
    """Register `vidbatch search` on the CLI's subparsers."""
    p = verbs.add_parser(
        "search",
        help="time ranges where a label appears",
        description="Time ranges where a label appears: adjacent clips and detection frames "
        "merged into intervals (uri, start_s, end_s, max_score, model, source).",
    )
    p.add_argument("output", help="the job's output.uri")
    p.add_argument("--label", required=True, help="label to find (exact match)")
    p.add_argument("--min-score", type=float, default=0.0, help="ignore rows scoring below this")
    p.add_argument("--model", help="only this model's rows")
    p.add_argument(
        "--since",
        metavar="DATE",
        help="only videos indexed on or after DATE (YYYY-MM-DD, today, yesterday; UTC)",
    )
    p.add_argument(
        "--uri-glob", metavar="GLOB", help="only videos whose URI matches, e.g. '*/cam1/*'"
    )
    p.add_argument(
        "--gap",
        type=float,
        dest="gap_s",
        metavar="SECONDS",
        help=f"merge rows at most this far apart (default {CLIP_GAP_S} s between clips, "
        f"{DETECTION_GAP_S} s between detection frames; use 1.5/fps for other frame rates)",
    )
    add_results_arguments(p)
    p.set_defaults(func=_cmd_search)
    return p
