"""`vidbatch search`: hand-made rows whose intervals are known, merged by DuckDB windows, over
a real Delta index."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.unit.tools.test_query import LAST_MONTH, clip, detection, video, write_index
from vidbatch.tools.search import add_search_parser, parse_date, result_schema, search

A, B, C = "/archive/cam1/a.mp4", "/archive/cam1/b.mp4", "/archive/cam2/c.mp4"


def spans(table) -> list[tuple]:
    """(uri, start, end, model, source) of each interval, rounded for comparison."""
    return [
        (r["uri"], round(r["start_s"], 3), round(r["end_s"], 3), r["model"], r["source"])
        for r in table.to_pylist()
    ]


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> str:
    clips = [
        # a.mp4: walking 0-6 (three adjacent clips), a 4 s hole, walking 10-12
        clip(A, 0.0, 2.0, "walking", 0.6),
        clip(A, 2.0, 4.0, "walking", 0.95),
        clip(A, 4.0, 6.0, "walking", 0.7),
        clip(A, 6.0, 8.0, "running", 0.8),
        clip(A, 8.0, 10.0, "running", 0.8),
        clip(A, 10.0, 12.0, "walking", 0.9),
        # b.mp4: walking 0-4 but the middle clip is weak; the same video by a second model
        clip(B, 0.0, 2.0, "walking", 0.9),
        clip(B, 2.0, 4.0, "walking", 0.3),
        clip(B, 4.0, 6.0, "walking", 0.9),
        clip(B, 0.0, 2.0, "walking", 0.5, model="motion-rnn"),
        clip(B, 2.0, 3.5, "walking", 0.5, model="motion-rnn"),  # last clip ends at the video end
        # c.mp4 (indexed a month ago) by a model whose clips overlap: they merge, not double
        clip(C, 0.0, 2.0, "walking", 0.8, model="motion-overlap"),
        clip(C, 1.0, 3.0, "walking", 0.8, model="motion-overlap"),
        clip(C, 2.0, 4.0, "walking", 0.85, model="motion-overlap"),
    ]
    detections = [
        # a.mp4: a person in frames 0, 1, 2 (two boxes in frame 1) then 5, 6
        detection(A, 0.0, "person", 0.5),
        detection(A, 1.0, "person", 0.6),
        detection(A, 1.0, "person", 0.99),
        detection(A, 2.0, "person", 0.7),
        detection(A, 5.0, "person", 0.8),
        detection(A, 6.0, "person", 0.8),
        detection(A, 3.0, "dog", 0.9),
    ]
    videos = [video(A), video(B, duration_s=3.5), video(C, processed_at=LAST_MONTH)]
    return write_index(
        str(tmp_path_factory.mktemp("s") / "index"),
        videos=videos,
        clips=clips,
        detections=detections,
    )


def test_adjacent_clips_merge_and_a_hole_splits(index):
    table = search(index, "walking", uri_glob=A)
    assert table.schema == result_schema()
    assert spans(table) == [
        (A, 0.0, 6.0, "motion-cnn", "clips"),
        (A, 10.0, 12.0, "motion-cnn", "clips"),
    ]
    first = table.to_pylist()[0]
    assert first["hits"] == 3 and first["max_score"] == pytest.approx(0.95)
    assert first["label"] == "walking" and first["video_id"] == "id-a.mp4"


def test_gap_bridges_holes_up_to_it(index):
    assert spans(search(index, "walking", uri_glob=A, gap_s=3.9)) == spans(
        search(index, "walking", uri_glob=A)
    )
    merged = search(index, "walking", uri_glob=A, gap_s=4.0)
    assert spans(merged) == [(A, 0.0, 12.0, "motion-cnn", "clips")]
    assert merged.column("hits").to_pylist() == [4]


def test_detection_frames_merge_within_one_and_a_half_seconds(index):
    table = search(index, "person")
    assert spans(table) == [
        (A, 0.0, 2.0, "ssdlite", "detections"),
        (A, 5.0, 6.0, "ssdlite", "detections"),
    ]
    assert table.column("hits").to_pylist() == [3, 2]  # frames, not boxes
    assert table.column("max_score").to_pylist()[0] == pytest.approx(0.99)
    assert spans(search(index, "person", gap_s=3.0)) == [(A, 0.0, 6.0, "ssdlite", "detections")]
    assert len(search(index, "person", gap_s=0.5)) == 5


def test_min_score_drops_weak_rows_and_splits_intervals(index):
    table = search(index, "walking", uri_glob=B, model="motion-cnn", min_score=0.5)
    assert spans(table) == [
        (B, 0.0, 2.0, "motion-cnn", "clips"),
        (B, 4.0, 6.0, "motion-cnn", "clips"),
    ]
    # float32 0.7 is below the double 0.7: the threshold is compared as float32
    assert spans(search(index, "walking", uri_glob=A, min_score=0.7)) == [
        (A, 2.0, 6.0, "motion-cnn", "clips"),
        (A, 10.0, 12.0, "motion-cnn", "clips"),
    ]
    assert len(search(index, "walking", min_score=0.99)) == 0


def test_models_never_merge_and_model_filters(index):
    assert spans(search(index, "walking", uri_glob=B)) == [
        (B, 0.0, 6.0, "motion-cnn", "clips"),
        (B, 0.0, 3.5, "motion-rnn", "clips"),
    ]
    assert spans(search(index, "walking", uri_glob=B, model="motion-rnn")) == [
        (B, 0.0, 3.5, "motion-rnn", "clips")
    ]
    assert len(search(index, "walking", model="no-such-model")) == 0


def test_overlapping_rows_merge_into_one_interval(index):
    everything = search(index, "walking", uri_glob=C)
    assert spans(everything) == [(C, 0.0, 4.0, "motion-overlap", "clips")]
    assert everything.column("hits").to_pylist() == [3]


def test_since_keeps_videos_indexed_on_or_after_a_day(index):
    """`since` reads `videos.processed_at` (UTC): c.mp4 was indexed a month ago."""
    yesterday = (datetime.now(timezone.utc).date() - timedelta(days=1)).isoformat()
    assert {r["uri"] for r in search(index, "walking", since="yesterday").to_pylist()} == {A, B}
    assert len(search(index, "walking", since=yesterday)) == 4
    month_ago = (LAST_MONTH.date() - timedelta(days=1)).isoformat()
    assert {r["uri"] for r in search(index, "walking", since=month_ago).to_pylist()} == {A, B, C}
    assert len(search(index, "walking", since="2999-01-01")) == 0


def test_uri_glob_matches_whole_uris(index):
    assert {r["uri"] for r in search(index, "walking", uri_glob="*/cam1/*").to_pylist()} == {A, B}
    assert {r["uri"] for r in search(index, "walking", uri_glob="*c.mp4").to_pylist()} == {C}
    assert len(search(index, "walking", uri_glob="cam1/*")) == 0  # a glob matches the whole URI


def test_bad_arguments_are_value_errors(index):
    with pytest.raises(ValueError, match="not a date: 'last week'"):
        search(index, "walking", since="last week")
    with pytest.raises(ValueError, match="gap must be >= 0"):
        search(index, "walking", gap_s=-1)
    assert parse_date(datetime(2026, 3, 4, 5, 6)) == "2026-03-04"


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vidbatch")
    add_search_parser(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_prints_intervals_or_says_why_none(index, capsys):
    assert _cli(["search", index, "--label", "person", "--gap", "3"]) == 0
    out = capsys.readouterr().out
    assert "ssdlite" in out and "detections" in out and len(out.strip().splitlines()) == 2
    assert _cli(["search", index, "--label", "walking", "--min-score", "0.99"]) == 0
    assert "no intervals of 'walking' pass these filters" in capsys.readouterr().out
    assert _cli(["search", index, "--label", "walkin"]) == 0
    assert "label 'walkin' is not in this index; did you mean 'walking'?" in capsys.readouterr().out
    assert _cli(["search", index, "--label", "xyz"]) == 0
    out = capsys.readouterr().out
    assert "label 'xyz' is not in this index; labels: dog, person, running, walking" in out
    assert _cli(["search", index, "--label", "walking", "--model", "motion-cn"]) == 0
    assert "model 'motion-cn' is not in this index; did you mean 'motion-cnn'" in (
        capsys.readouterr().out
    )


def test_cli_writes_json_lines(index, tmp_path, capsys):
    out = tmp_path / "walking.json"
    argv = ["search", index, "--label", "walking", "--format", "json"]
    assert _cli([*argv, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [
        (A, 0.0, 6.0),
        (A, 10.0, 12.0),
        (B, 0.0, 6.0),
        (B, 0.0, 3.5),
        (C, 0.0, 4.0),
    ]
    assert [(r["uri"], r["start_s"], r["end_s"]) for r in rows] == expected
    assert "wrote 5 intervals" in capsys.readouterr().out
    # Without --out the rows go to stdout, and nothing else does.
    assert _cli(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["uri"], r["start_s"], r["end_s"]) for r in rows] == expected


def test_cli_writes_csv_to_stdout(index, capsys):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    assert _cli(["search", index, "--label", "person", "--format", "csv"]) == 0
    rows = pacsv.read_csv(pa.py_buffer(capsys.readouterr().out.encode())).to_pylist()
    assert [(r["uri"], r["start_s"], r["end_s"], r["hits"]) for r in rows] == [
        (A, 0.0, 2.0, 3),
        (A, 5.0, 6.0, 2),
    ]
    with pytest.raises(ValueError, match="--format parquet needs --out FILE"):
        _cli(["search", index, "--label", "person", "--format", "parquet"])


def test_search_over_s3_writes_results_there(s3, s3_server, capsys):
    from tests.conftest import make_bucket

    fs, options = s3
    make_bucket(s3_server, "index-search")
    uri = write_index(
        "s3://index-search/out",
        storage_options=options,
        videos=[video(A)],
        clips=[clip(A, 0.0, 2.0, "walking"), clip(A, 2.0, 4.0, "walking")],
    )
    table = search(uri, "walking", storage_options=options)
    assert spans(table) == [(A, 0.0, 4.0, "motion-cnn", "clips")]
    out = "s3://index-search/results/walking.json"
    argv = ["search", uri, "--label", "walking", "--format", "json", "--out", out]
    assert _cli([*argv, "--storage-options", json.dumps(options)]) == 0
    rows = [json.loads(line) for line in fs.cat_file(out).decode().splitlines()]
    assert [(r["uri"], r["start_s"], r["end_s"]) for r in rows] == [(A, 0.0, 4.0)]
    assert f"wrote 1 intervals to {out}" in capsys.readouterr().out


def test_registering_the_verbs_loads_no_heavy_modules():
    """`vidbatch --help` must stay quick: DuckDB, Arrow and NumPy load only when a verb runs."""
    import subprocess
    import sys

    code = (
        "import sys, vidbatch.tools.search, vidbatch.tools.report; "
        "print(sorted(m for m in ('duckdb', 'pyarrow', 'numpy', 'fsspec') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
