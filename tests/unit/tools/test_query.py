"""`vidbatch query` over a real Delta index written through IndexStore; other readers see
the same tables."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_bucket
from vidbatch.index import tables
from vidbatch.index.store import ChunkCommit, IndexStore
from vidbatch.tools.query import query, write_table

NOW = datetime.now(timezone.utc)
YESTERDAY = NOW - timedelta(days=1)
LAST_MONTH = NOW - timedelta(days=30)
SCHEMA_DOC = Path(__file__).resolve().parents[3] / "docs" / "schema.md"


def _id(uri: str) -> str:
    return f"id-{uri.rsplit('/', 1)[-1]}"


def video(uri: str, *, status: str = "ok", error: str | None = None, **extra) -> dict:
    row = {
        "video_id": _id(uri),
        "uri": uri,
        "size_bytes": 1000,
        "duration_s": 30.0,
        "fps": 25.0,
        "width": 320,
        "height": 240,
        "codec": "h264",
        "status": status,
        "error": error,
        "attempts": 1 if status == "failed" else 0,
        "config_key": "k1",
        "run_id": "run-1",
        "processed_at": YESTERDAY,
    }
    if status == "failed":
        row.update(duration_s=None, fps=None, width=None, height=None, codec=None)
    return {**row, **extra}


def clip(uri: str, start: float, end: float, label: str, score: float = 0.9, **extra) -> dict:
    row = {
        "video_id": _id(uri),
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
    }
    return {**row, **extra}


def detection(uri: str, t: float, label: str, score: float = 0.8, **extra) -> dict:
    row = {
        "video_id": _id(uri),
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
    }
    return {**row, **extra}


def shot(uri: str, index: int, start: float, end: float, **extra) -> dict:
    row = {
        "video_id": _id(uri),
        "uri": uri,
        "shot_index": index,
        "start_s": start,
        "end_s": end,
        "transition_score": 0.9,
        "model": "transnetv2",
        "model_version": "1",
        "run_id": "run-1",
    }
    return {**row, **extra}


def run_row(run_id: str, started: datetime, **extra) -> dict:
    """A `runs` row as the job writes it when a run ends."""
    row = {
        "run_id": run_id,
        "started_at": started,
        "finished_at": started + timedelta(minutes=3, seconds=12),
        "status": "ok",
        "config_key": "k1",
        "config": "{}",
        "models": {"motion-cnn": "1"},
        "listed": 0,
        "planned": {},
        "ok": 0,
        "failed": 0,
        "skipped": 0,
        "failures": {},
        "timings": {},
    }
    return {**row, **extra}


def write_index(
    output_uri: str,
    *,
    videos: Sequence[dict] = (),
    clips: Sequence[dict] = (),
    detections: Sequence[dict] = (),
    shots: Sequence[dict] = (),
    runs: Sequence[dict] = (),
    storage_options: dict | None = None,
    run_id: str = "fixture",
    replace: bool = False,
) -> str:
    """Commit hand-made rows as one chunk, through the store the job commits with.

    `replace`: the chunk re-indexes its videos (their earlier rows go in the same commit);
    each call needs its own `run_id` (a run's chunk 1 commits once)."""
    store = IndexStore(output_uri, storage_options)
    store.ensure_tables()
    files = []
    for name, rows in (("clips", clips), ("detections", detections), ("shots", shots)):
        files += store.write_rows(
            name, pa.Table.from_pylist(list(rows), schema=tables.TABLES[name])
        )
    chunk = pa.Table.from_pylist(list(videos), schema=tables.VIDEOS)
    uris = sorted(set(chunk.column("uri").to_pylist())) if replace else ()
    store.commit_chunk(
        ChunkCommit(sequence=1, run_id=run_id, videos=chunk, files=files, replace_uris=uris)
    )
    for row in runs:
        store.write_run(row)
    return output_uri


A, B, C = "/archive/cam1/a.mp4", "/archive/cam1/b.mp4", "/archive/cam2/c.mp4"
FAILED_ERROR = "decode: stream ends at 1.20s but the container says 4.00s: truncated or corrupt"


def sample_rows() -> dict[str, list[dict]]:
    """a.mp4 moves left for 14 s and b.mp4 for 6 s (indexed yesterday); c.mp4 failed today."""
    clips = [clip(A, 2.0 * k, 2.0 * k + 2, "moving_left") for k in range(7)]
    clips += [clip(A, 2.0 * k, 2.0 * k + 2, "static", 0.6) for k in range(7, 15)]
    clips += [clip(B, 2.0 * k, 2.0 * k + 2, "moving_left") for k in range(3)]
    clips += [clip(A, 0.0, 2.0, "moving_left", 0.7, model="my.pkg:factory")]
    return {
        "videos": [
            video(A),
            video(B, duration_s=12.0),
            video(C, status="failed", error=FAILED_ERROR, processed_at=NOW),
        ],
        "clips": clips,
        "detections": [detection(A, float(t), "circle") for t in range(6)]
        + [detection(B, 1.0, "square")],
        "shots": [shot(A, 0, 0.0, 14.0), shot(A, 1, 14.0, 30.0)],
        "runs": [run_row("run-1", YESTERDAY, listed=3, ok=2, failed=1)],
    }


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> str:
    return write_index(str(tmp_path_factory.mktemp("q") / "index"), **sample_rows())


def test_sql_over_views_sees_rows_and_partition_columns(index):
    table = query(index, "SELECT model, count(*) AS n FROM clips GROUP BY ALL ORDER BY model")
    assert table.to_pylist() == [
        {"model": "motion-cnn", "n": 18},
        {"model": "my.pkg:factory", "n": 1},
    ]
    failed = query(index, "SELECT uri, error FROM videos WHERE status = 'failed'").to_pylist()
    assert failed == [{"uri": C, "error": FAILED_ERROR}]
    assert query(index, "SELECT count(*) AS n FROM detections").column("n").to_pylist() == [7]
    assert query(index, "SELECT count(*) AS n FROM shots").column("n").to_pylist() == [2]
    runs = query(index, "SELECT run_id, ok, failed, models['motion-cnn'] AS v FROM runs")
    assert runs.to_pylist() == [{"run_id": "run-1", "ok": 2, "failed": 1, "v": "1"}]


def test_a_reindex_replaces_rows_and_as_of_reads_the_earlier_version(tmp_path, capsys):
    """Current state: a re-indexed video's rows are replaced, not added; --as-of reads the
    version before (a `videos` table version or a timestamp), in Python and on the CLI."""
    from vidbatch.cli import main

    uri = write_index(
        str(tmp_path / "index"),
        videos=[video(A)],
        clips=[clip(A, 0.0, 2.0, "static")],
        run_id="r1",
    )
    before = datetime.now(timezone.utc)
    write_index(
        uri,
        videos=[video(A, run_id="r2")],
        clips=[
            clip(A, 0.0, 2.0, "walking", run_id="r2"),
            clip(A, 2.0, 4.0, "walking", run_id="r2"),
        ],
        run_id="r2",
        replace=True,
    )
    sql = "SELECT label, run_id, count(*) AS n FROM clips GROUP BY ALL ORDER BY ALL"
    assert query(uri, sql).to_pylist() == [{"label": "walking", "run_id": "r2", "n": 2}]
    first = IndexStore(uri).snapshot().videos_version - 1
    then = [{"label": "static", "run_id": "run-1", "n": 1}]
    assert query(uri, sql, as_of=first).to_pylist() == then
    assert query(uri, sql, as_of=before.isoformat()).to_pylist() == then
    assert main(["query", uri, sql, "--as-of", str(first), "--format", "json"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == then
    assert main(["query", uri, sql, "--as-of", "last tuesday"]) == 2
    assert "--as-of 'last tuesday': expected a table version" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_every_output_format_round_trips(index, tmp_path, fmt):
    sql = "SELECT uri, clip_start_s, label, score, labels, model FROM clips ORDER BY ALL"
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


def test_sql_error_keeps_duckdbs_hints(index):
    """What DuckDB suggests after its first line (a close table or column name) is kept."""
    with pytest.raises(ValueError) as info:
        query(index, "SELECT * FROM clip")
    assert 'Did you mean "clips"' in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError) as info:
        query(index, "SELECT lable FROM clips")
    assert "label" in str(info.value).split("lable", 1)[1]


def test_missing_output_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no index at .*nowhere: no videos table there"):
        query(str(tmp_path / "nowhere"), "SELECT 1")


def test_empty_index_has_every_table_and_no_rows(tmp_path):
    store = IndexStore(str(tmp_path / "index"))
    store.ensure_tables()  # what a run does first: tables at version 0, nothing committed
    for name in tables.TABLES:
        assert query(store.uri, f"SELECT count(*) AS n FROM {name}").to_pylist() == [{"n": 0}]


def test_cli_prints_a_table_and_one_line_errors(index, capsys):
    from vidbatch.cli import main

    sql = "SELECT label, count(*) AS n FROM clips GROUP BY 1 ORDER BY 1"
    assert main(["query", index, sql]) == 0
    out = capsys.readouterr().out
    assert re.search(r"moving_left\s+11", out) and re.search(r"static\s+8", out)
    assert main(["query", index, "SELEC 1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vidbatch: error: SQL error: Parser Error") and err.count("\n") == 1


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_cli_writes_csv_and_json_to_stdout_without_out(index, capsys, fmt):
    from vidbatch.cli import main

    sql = "SELECT label, count(*) AS n, list(clip_start_s ORDER BY clip_start_s)[1:2] AS first "
    sql += "FROM clips WHERE model = 'motion-cnn' GROUP BY 1 ORDER BY 1"
    assert main(["query", index, sql, "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "csv":
        rows = pacsv.read_csv(pa.py_buffer(out.encode())).to_pylist()
        assert [(r["label"], r["n"], json.loads(r["first"])) for r in rows] == [
            ("moving_left", 10, [0.0, 0.0]),
            ("static", 8, [14.0, 16.0]),
        ]
    else:
        rows = [json.loads(line) for line in out.splitlines()]
        assert rows == [
            {"label": "moving_left", "n": 10, "first": [0.0, 0.0]},
            {"label": "static", "n": 8, "first": [14.0, 16.0]},
        ]
    assert "wrote" not in out  # nothing but the data on stdout
    assert main(["query", index, sql, "--format", "parquet"]) == 2
    assert "--format parquet needs --out FILE" in capsys.readouterr().err


def test_cli_version_is_the_package_version(capsys):
    from importlib.metadata import version

    from vidbatch.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"vidbatch {version('vidbatch')}"


def test_query_over_s3_with_storage_options(s3, s3_server, tmp_path, capsys):
    fs, options = s3
    make_bucket(s3_server, "index-query")
    uri = write_index("s3://index-query/out", storage_options=options, **sample_rows())
    table = query(uri, "SELECT model, count(*) AS n FROM clips GROUP BY 1 ORDER BY 1", options)
    assert table.column("n").to_pylist() == [18, 1]
    with pytest.raises(FileNotFoundError, match="no index at s3://index-query/elsewhere"):
        query("s3://index-query/elsewhere", "SELECT 1", options)
    write_table(table, "parquet", "s3://index-query/results/n.parquet", options)
    assert pq.read_table(fs.open("index-query/results/n.parquet", "rb")).equals(table)
    # The CLI takes the same options as JSON, for the index and for an --out on the same store.
    from vidbatch.cli import main

    sql = "SELECT count(*) AS n FROM clips"
    args = ["query", uri, sql, "--storage-options", json.dumps(options), "--format", "csv"]
    assert main([*args, "--out", str(tmp_path / "n.csv")]) == 0
    assert (tmp_path / "n.csv").read_text().splitlines() == ['"n"', "19"]
    assert main([*args, "--out", "s3://index-query/results/n.csv"]) == 0
    assert fs.cat_file("index-query/results/n.csv").decode().splitlines() == ['"n"', "19"]
    assert "wrote 1 rows to s3://index-query/results/n.csv" in capsys.readouterr().out
    assert not Path("s3:").exists()  # nothing written to a local folder named after the URI


def _keys(table_rows: list[dict], columns: Sequence[str]) -> list[tuple]:
    """Rows as sorted tuples of text, for comparing readers with different type mappings."""
    return sorted(tuple(str(r[c]) for c in columns) for r in table_rows)


def test_other_readers_see_the_same_rows(index):
    """deltalake, Polars (scan_delta) and PyArrow (the files the Delta log lists, Hive
    partitions) read the same rows as `vidbatch query`, without vidbatch code."""
    import polars as pl
    import pyarrow.dataset as pds
    from deltalake import DeltaTable

    for name in ("videos", "clips", "detections", "shots"):
        root = f"{index}/{name}"
        ours = query(index, f"SELECT * FROM {name}")
        flat = [f.name for f in ours.schema if not pa.types.is_nested(f.type)]
        by_polars = pl.scan_delta(root).collect()
        files = DeltaTable(root).file_uris()
        by_arrow = pds.dataset(files, format="parquet", partitioning="hive").to_table()
        expected = _keys(ours.to_pylist(), ["video_id", *tables.PARTITIONS[name]])
        assert by_polars.height == by_arrow.num_rows == ours.num_rows > 0
        assert _keys(by_polars.to_dicts(), ["video_id", *tables.PARTITIONS[name]]) == expected
        assert _keys(by_arrow.to_pylist(), ["video_id", *tables.PARTITIONS[name]]) == expected
        assert set(ours.column_names) == set(by_polars.columns) == set(by_arrow.column_names)
        assert flat  # every table has flat columns to compare


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
    import shlex

    from vidbatch.cli import main

    monkeypatch.chdir(tmp_path)
    for block in _doc_blocks("bash", index):
        for line in block.splitlines():
            argv = shlex.split(line)[1:]
            assert main(argv) == 0, (line, capsys.readouterr().err)
    assert (tmp_path / "hits.parquet").exists() and (tmp_path / "circle.csv").exists()
    for block in _doc_blocks("python", index):
        exec(compile(block, str(SCHEMA_DOC), "exec"), {})


def test_documented_columns_match_the_tables(index):
    """Each table's section lists every column with its DuckDB type (and Arrow type where the
    table has that column); `runs` may name several columns in one row."""
    text = SCHEMA_DOC.read_text()
    for name in tables.TABLES:
        section = text.split(f"## `{name}`", 1)[1].split("\n## ", 1)[0]
        described = {
            r["column_name"]: r["column_type"] for r in query(index, f"DESCRIBE {name}").to_pylist()
        }
        schema = tables.TABLES[name]
        if name != "runs":
            documented = re.findall(
                r"^\| `(\w+)` \| `([^`]+)` \| `([^`]+)` \|", section, flags=re.M
            )
            expected = [(c, t, str(schema.field(c).type)) for c, t in described.items()]
            assert sorted(documented) == sorted(expected), name
            continue
        seen = set()
        for cells, kind in re.findall(r"^\| ((?:`\w+`(?:, )?)+) \| (`[^`]+`)? ?\|", section, re.M):
            for column in re.findall(r"`(\w+)`", cells):
                seen.add(column)
                if kind:
                    assert described[column] == kind.strip("`"), column
        assert seen == set(described), name
