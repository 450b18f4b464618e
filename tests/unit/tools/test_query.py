"""`vidbatch query` over a real index written by TableSink; other readers see the same tables."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_bucket
from vidbatch.index import tables
from vidbatch.index.sink import TableSink
from vidbatch.tools.query import query, write_table

TODAY = datetime.now(timezone.utc).date()
YESTERDAY = (TODAY - timedelta(days=1)).isoformat()
LAST_WEEK = (TODAY - timedelta(days=7)).isoformat()
SCHEMA_DOC = Path(__file__).resolve().parents[3] / "docs" / "schema.md"


def video(uri: str, *, status: str = "ok", error: str | None = None, **extra) -> dict:
    row = {
        "video_id": f"id-{uri.rsplit('/', 1)[-1]}",
        "uri": uri,
        "size_bytes": 1000,
        "duration_s": 30.0,
        "fps": 25.0,
        "width": 320,
        "height": 240,
        "codec": "h264",
        "status": status,
        "error": error,
        "run_id": "run-1",
        "processed_at": datetime.now(timezone.utc),
        "date": YESTERDAY,
    }
    if status == "failed":
        row.update(duration_s=None, fps=None, width=None, height=None, codec=None)
    return {**row, **extra}


def clip(uri: str, start: float, end: float, label: str, score: float = 0.9, **extra) -> dict:
    row = {
        "video_id": f"id-{uri.rsplit('/', 1)[-1]}",
        "uri": uri,
        "clip_start_s": start,
        "clip_end_s": end,
        "model": "motion-cnn",
        "model_version": "1",
        "label": label,
        "score": score,
        "labels": [label, "static"],
        "scores": [score, 1 - score],
        "run_id": "run-1",
        "date": YESTERDAY,
    }
    return {**row, **extra}


def detection(uri: str, t: float, label: str, score: float = 0.8, **extra) -> dict:
    row = {
        "video_id": f"id-{uri.rsplit('/', 1)[-1]}",
        "uri": uri,
        "frame_time_s": t,
        "model": "ssdlite",
        "model_version": "1",
        "label": label,
        "score": score,
        "x1": 0.1,
        "y1": 0.2,
        "x2": 0.5,
        "y2": 0.6,
        "run_id": "run-1",
        "date": YESTERDAY,
    }
    return {**row, **extra}


def write_index(
    output_uri: str,
    *,
    videos: list[dict] = (),
    clips: list[dict] = (),
    detections: list[dict] = (),
    storage_options: dict | None = None,
    run_id: str = "fixture",
) -> str:
    """Commit hand-made rows through the job's own sink, one file per partition."""
    sink = TableSink(output_uri, storage_options, run_id)
    for name, rows in (("videos", videos), ("clips", clips), ("detections", detections)):
        groups: dict[tuple, list[dict]] = {}
        for row in rows:
            key = tuple(row[p] for p in tables.PARTITIONS[name])
            groups.setdefault(key, []).append(row)
        for key, group in groups.items():
            table = pa.Table.from_pylist(group, schema=tables.TABLES[name])
            partitions = dict(zip(tables.PARTITIONS[name], key, strict=True))
            sink.stage(name, table, partitions, part=f"{run_id}-{len(sink.staged)}")
    sink.commit()
    return output_uri


A, B, C = "/archive/cam1/a.mp4", "/archive/cam1/b.mp4", "/archive/cam2/c.mp4"
FAILED_ERROR = "decode: stream ends at 1.20s but the container says 4.00s: truncated or corrupt"


def sample_rows() -> dict[str, list[dict]]:
    """a.mp4 moves left for 14 s and b.mp4 for 6 s (indexed yesterday); c.mp4 failed today."""
    clips = [clip(A, 2.0 * k, 2.0 * k + 2, "moving_left") for k in range(7)]
    clips += [clip(A, 2.0 * k, 2.0 * k + 2, "static", 0.6) for k in range(7, 15)]
    clips += [clip(B, 2.0 * k, 2.0 * k + 2, "moving_left") for k in range(3)]
    clips += [clip(A, 0.0, 2.0, "moving_left", 0.7, model="my.pkg:factory", date=LAST_WEEK)]
    return {
        "videos": [
            video(A),
            video(B, duration_s=12.0),
            video(C, status="failed", error=FAILED_ERROR, date=TODAY.isoformat()),
        ],
        "clips": clips,
        "detections": [detection(A, float(t), "circle") for t in range(6)]
        + [detection(B, 1.0, "square", date=LAST_WEEK)],
    }


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> str:
    return write_index(str(tmp_path_factory.mktemp("q") / "index"), **sample_rows())


def test_sql_over_views_sees_rows_and_partition_columns(index):
    table = query(index, "SELECT model, date, count(*) AS n FROM clips GROUP BY ALL ORDER BY model")
    assert table.to_pylist() == [
        {"model": "motion-cnn", "date": YESTERDAY, "n": 18},
        {"model": "my.pkg:factory", "date": LAST_WEEK, "n": 1},
    ]
    failed = query(index, "SELECT uri, error FROM videos WHERE status = 'failed'").to_pylist()
    assert failed == [{"uri": C, "error": FAILED_ERROR}]
    assert query(index, "SELECT count(*) AS n FROM detections").column("n").to_pylist() == [7]


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_every_output_format_round_trips(index, tmp_path, fmt):
    sql = "SELECT uri, clip_start_s, label, score, labels, date FROM clips ORDER BY ALL"
    table = query(index, sql)
    out = tmp_path / "results" / f"clips.{fmt}"
    write_table(table, fmt, str(out))
    if fmt == "parquet":
        back = pq.read_table(out)
        assert back.equals(table)
        return
    if fmt == "csv":
        back = pacsv.read_csv(out).to_pylist()
        assert [json.loads(r["labels"]) for r in back] == table.column("labels").to_pylist()
    else:
        back = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["labels"] for r in back] == table.column("labels").to_pylist()
    assert len(back) == table.num_rows == 19
    assert [r["uri"] for r in back] == table.column("uri").to_pylist()
    assert not list(out.parent.glob(".*partial"))


def test_json_writes_timestamps_as_iso_text(index, tmp_path):
    out = tmp_path / "videos.json"
    write_table(query(index, "SELECT uri, processed_at FROM videos"), "json", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(datetime.fromisoformat(r["processed_at"]).tzinfo for r in rows)


def test_write_table_needs_a_file_and_a_known_format(index):
    table = pa.table({"a": [1]})
    with pytest.raises(ValueError, match="needs --out"):
        write_table(table, "csv", None)
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        write_table(table, "xml", "x.xml")


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC * FROM clips", 'SQL error: Parser Error: syntax error at or near "SELEC"'),
        ("SELECT nope FROM clips", 'SQL error: Binder Error: Referenced column "nope" not found'),
        ("SELECT * FROM frames", "SQL error: Catalog Error: Table with name frames does not exist"),
        ("SELECT CAST(uri AS INTEGER) FROM videos", "SQL error: Conversion Error: Could not"),
    ],
)
def test_sql_error_is_duckdbs_message_on_one_line(index, sql, message):
    with pytest.raises(ValueError) as info:
        query(index, sql)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, duckdb.Error)


def test_missing_output_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no index at .*nothing exists there"):
        query(str(tmp_path / "nowhere"), "SELECT 1")


def test_empty_index_says_so(tmp_path):
    (tmp_path / "clips").mkdir()  # a table folder without files is still empty
    with pytest.raises(FileNotFoundError, match=r"empty index at .*no Parquet files"):
        query(str(tmp_path), "SELECT * FROM clips")


def test_cli_prints_a_table_and_one_line_errors(index, capsys):
    from vidbatch.cli import main

    sql = "SELECT label, count(*) AS n FROM clips GROUP BY 1 ORDER BY 1"
    assert main(["query", index, sql]) == 0
    out = capsys.readouterr().out
    assert re.search(r"moving_left\s+11", out) and re.search(r"static\s+8", out)
    assert main(["query", index, "SELEC 1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vidbatch: error: SQL error: Parser Error") and err.count("\n") == 1


def test_query_over_s3_with_storage_options(s3, s3_server, tmp_path):
    fs, options = s3
    make_bucket(s3_server, "index-query")
    uri = write_index("s3://index-query/out", storage_options=options, **sample_rows())
    table = query(uri, "SELECT model, count(*) AS n FROM clips GROUP BY 1 ORDER BY 1", options)
    assert table.column("n").to_pylist() == [18, 1]
    with pytest.raises(FileNotFoundError, match="no index at s3://index-query/elsewhere"):
        query("s3://index-query/elsewhere", "SELECT 1", options)
    write_table(table, "parquet", "s3://index-query/results/n.parquet", options)
    assert pq.read_table(fs.open("index-query/results/n.parquet", "rb")).equals(table)
    # The CLI takes the same options as JSON.
    from vidbatch.cli import main

    sql = "SELECT count(*) AS n FROM clips"
    args = ["query", uri, sql, "--storage-options", json.dumps(options), "--format", "csv"]
    assert main([*args, "--out", str(tmp_path / "n.csv")]) == 0
    assert (tmp_path / "n.csv").read_text().splitlines() == ['"n"', "19"]


def _keys(parts: list[str], rows: list[dict]) -> list[tuple]:
    """Sorted partition values per row, as text (DuckDB and Polars read `date` as DATE)."""
    return sorted(tuple(str(r[p]) for p in parts) for r in rows)


def test_other_readers_see_the_same_rows_and_partitions(index):
    """pyarrow (hive), DuckDB's own read_parquet and Polars need no vidbatch code."""
    import polars as pl

    for name in tables.TABLES:
        root = f"{index}/{name}"
        ours = query(index, f"SELECT * FROM {name}")
        parts = list(tables.PARTITIONS[name])
        by_arrow = pds.dataset(root, format="parquet", partitioning="hive").to_table()
        by_duckdb = duckdb.sql(
            f"SELECT * FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true)"
        ).to_arrow_table()
        by_polars = pl.scan_parquet(f"{root}/", hive_partitioning=True).collect()

        expected = _keys(parts, ours.to_pylist())
        assert by_arrow.num_rows == by_duckdb.num_rows == by_polars.height == ours.num_rows > 0
        assert _keys(parts, by_arrow.to_pylist()) == expected
        assert (
            _keys(parts, by_duckdb.to_pylist()) == expected
        )  # DuckDB and Polars read date as DATE
        assert _keys(parts, by_polars.to_dicts()) == expected
        assert set(ours.column_names) == set(by_duckdb.column_names) == set(by_polars.columns)


def _doc_blocks(language: str, index: str) -> list[str]:
    """Fenced blocks of docs/schema.md, with the docs' example path pointing at `index`."""
    blocks = re.findall(rf"```{language}\n(.*?)```", SCHEMA_DOC.read_text(), flags=re.S)
    return [block.replace("/data/index", index) for block in blocks]


def test_every_documented_query_runs(index):
    queries = _doc_blocks("sql", index)
    assert len(queries) >= 8
    for sql in queries:
        query(index, sql)  # raises ValueError("SQL error: ...") if a documented query is wrong


def test_documented_label_for_10_seconds_yesterday(index):
    sql = next(q for q in _doc_blocks("sql", index) if "more than 10 s" in q and "yesterday" in q)
    assert query(index, sql).column("uri").to_pylist() == [A]


def test_documented_commands_and_python_run(index, tmp_path, monkeypatch, capsys):
    import argparse
    import shlex

    from vidbatch.cli import main
    from vidbatch.tools.search import add_search_parser

    monkeypatch.chdir(tmp_path)
    search_cli = argparse.ArgumentParser()
    add_search_parser(search_cli.add_subparsers())
    for block in _doc_blocks("bash", index):
        for line in block.splitlines():
            argv = shlex.split(line)[1:]
            if argv[0] == "search":
                args = search_cli.parse_args(argv)
                assert args.func(args) == 0, line
            else:
                assert main(argv) == 0, (line, capsys.readouterr().err)
    assert (tmp_path / "hits.parquet").exists() and (tmp_path / "circle.csv").exists()
    for block in _doc_blocks("python", index):
        exec(compile(block, str(SCHEMA_DOC), "exec"), {})


def test_documented_columns_match_the_tables(index):
    """Each table's section lists every column with its DuckDB and Arrow type, in order."""
    text = SCHEMA_DOC.read_text()
    for name in tables.TABLES:
        section = text.split(f"## `{name}`", 1)[1].split("\n## ", 1)[0]
        documented = re.findall(r"^\| `(\w+)` \| `([^`]+)` \| `([^`]+)` \|", section, flags=re.M)
        described = query(index, f"DESCRIBE {name}").to_pylist()
        schema = tables.read_schema(name)
        expected = [
            (r["column_name"], r["column_type"], str(schema.field(r["column_name"]).type))
            for r in described
        ]
        assert sorted(documented) == sorted(expected)
