"""The IndexStore on real Delta tables (local and moto S3): what a commit replaces, snapshots
and time travel, recovery of a half-done chunk, the writer lease, compaction, and the same
rows through DuckDB, Polars and PyArrow."""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.dataset as pds
import pytest

from tests.conftest import make_bucket
from vidbatch.errors import IndexBusyError
from vidbatch.index import tables
from vidbatch.index.delta import delta_options
from vidbatch.index.store import ChunkCommit, IndexStore


def videos(*ids: str, run: str = "r", status: str = "ok") -> pa.Table:
    """Video `x7` lives at uri `ux` (same uri, new content: a new id)."""
    return pa.Table.from_pylist(
        [
            {
                "video_id": i,
                "uri": f"u{i[0]}",
                "status": status,
                "attempts": 0,
                "config_key": "k",
                "run_id": run,
                "processed_at": datetime.now(timezone.utc),
            }
            for i in ids
        ],
        schema=tables.VIDEOS,
    )


def clips(ids: list[str], model: str, run: str = "r", per_video: int = 3) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "video_id": i,
                "uri": f"u{i[0]}",
                "clip_start_s": 2.0 * k,
                "clip_end_s": 2.0 * k + 2,
                "model": model,
                "model_version": "1",
                "label": "x",
                "score": 0.5,
                "labels": ["x"],
                "scores": [0.5],
                "run_id": run,
            }
            for i in ids
            for k in range(per_video)
        ],
        schema=tables.CLIPS,
    )


def counts(store: IndexStore, **snapshot) -> dict[tuple[str, str], int]:
    rows = store.read("clips", snapshot=store.snapshot(**snapshot)).to_pylist()
    found: dict[tuple[str, str], int] = {}
    for row in rows:
        found[(row["video_id"], row["model"])] = found.get((row["video_id"], row["model"]), 0) + 1
    return found


@pytest.fixture
def store(tmp_path) -> IndexStore:
    store = IndexStore(str(tmp_path / "index"))
    store.ensure_tables()
    return store


def commit(
    store: IndexStore, sequence: int, run: str, vids: pa.Table, *parts: pa.Table, **kw
) -> None:
    files = [f for part in parts for f in store.write_rows("clips", part)]
    store.commit_chunk(ChunkCommit(sequence, run, vids, files, **kw))


def test_reindex_replaces_rows_in_the_same_commit(store):
    commit(
        store, 1, "r1", videos("a1", "b1"), clips(["a1", "b1"], "m1"), clips(["a1", "b1"], "m/2")
    )
    assert counts(store) == {("a1", "m1"): 3, ("b1", "m1"): 3, ("a1", "m/2"): 3, ("b1", "m/2"): 3}
    first = store.snapshot().videos_version

    # b changed content (b2) and the run has model m1 only: b's m1 rows are replaced, its m/2
    # rows (of content no longer there) go too; a is untouched.
    commit(
        store,
        1,
        "r2",
        videos("b2", run="r2"),
        clips(["b2"], "m1", "r2", per_video=2),
        replace_uris=["ub"],
        models=frozenset({"m1"}),
    )
    assert counts(store) == {("a1", "m1"): 3, ("a1", "m/2"): 3, ("b2", "m1"): 2}
    assert sorted(v["video_id"] for v in store.read("videos").to_pylist()) == ["a1", "b2"]
    # The earlier index is whole at its version.
    assert counts(store, as_of=first) == {
        ("a1", "m1"): 3,
        ("b1", "m1"): 3,
        ("a1", "m/2"): 3,
        ("b1", "m/2"): 3,
    }

    # Same content, model m1 re-run: only m1 rows of a are replaced; m/2 stays.
    commit(
        store,
        1,
        "r3",
        videos("a1", run="r3"),
        clips(["a1"], "m1", "r3", per_video=1),
        replace_uris=["ua"],
        models=frozenset({"m1"}),
    )
    assert counts(store) == {("a1", "m1"): 1, ("a1", "m/2"): 3, ("b2", "m1"): 2}


def test_rows_of_failed_videos_are_never_added(store):
    mixed = clips(["a1", "c1"], "m1")  # one file holding a failed and an ok video
    commit(store, 1, "r1", videos("a1", "c1"), mixed, failed_ids=frozenset({"a1"}))
    assert counts(store) == {("c1", "m1"): 3}
    # The dropped file was rewritten, not left live with the failed rows.
    live = store.read("clips")
    assert set(live.column("video_id").to_pylist()) == {"c1"}


def test_time_travel_by_timestamp(store):
    commit(store, 1, "r1", videos("a1"), clips(["a1"], "m1"))
    between = datetime.now(timezone.utc)
    commit(store, 1, "r2", videos("b1"), clips(["b1"], "m1"))
    assert counts(store, as_of=between.isoformat()) == {("a1", "m1"): 3}
    assert counts(store) == {("a1", "m1"): 3, ("b1", "m1"): 3}
    with pytest.raises(ValueError, match="expected a table version"):
        store.snapshot("last tuesday")


def test_a_driver_killed_between_commits_leaves_nothing_visible_and_recover_undoes_it(store):
    commit(store, 1, "r1", videos("a1"), clips(["a1"], "m1"))
    # What a killed driver leaves: a clips commit that no videos commit names.
    orphan = store.write_rows("clips", clips(["b1"], "m1", "r2"))
    store._commit("clips", [f.add_action() for f in orphan], ChunkCommit(1, "r2", videos()))
    assert store.read("clips").num_rows == 6  # the latest clips version has them
    assert counts(store) == {("a1", "m1"): 3}  # readers of the snapshot do not
    assert store.recover() == ["clips"]
    assert store.read("clips").num_rows == 3 and counts(store) == {("a1", "m1"): 3}
    assert store.recover() == []


def test_a_retried_commit_is_not_applied_twice(store):
    files = store.write_rows("clips", clips(["a1"], "m1"))
    chunk = ChunkCommit(1, "r1", videos("a1"), files)
    store.commit_chunk(chunk)
    version = store.snapshot().videos_version
    store.commit_chunk(chunk)  # the reply was lost; the driver tries again
    assert store.snapshot().videos_version == version and counts(store) == {("a1", "m1"): 3}


def test_hostile_model_names_stay_inside_their_table(store, tmp_path):
    name = "../../escape"
    commit(store, 1, "r1", videos("a1"), clips(["a1"], name))
    assert counts(store) == {("a1", name): 3}
    outside = [
        p for p in tmp_path.rglob("*.parquet") if "index" not in p.relative_to(tmp_path).parts[0]
    ]
    assert not outside and (tmp_path / "index" / "clips" / "model=%2E.%2F..%2Fescape").is_dir()


def test_duckdb_polars_and_pyarrow_read_the_same_rows(store):
    import polars as pl
    from deltalake import DeltaTable

    commit(store, 1, "r1", videos("a1", "b1"), clips(["a1", "b1"], "m1"), clips(["a1"], "m2"))
    commit(
        store,
        1,
        "r2",
        videos("b2", run="r2"),
        clips(["b2"], "m1", "r2"),
        replace_uris=["ub"],
        models=frozenset({"m1"}),
    )
    sql = "SELECT video_id, model, count(*) AS n FROM clips GROUP BY ALL ORDER BY ALL"
    duck = store.connect().sql(sql).fetchall()
    uri = store.table_uri("clips")
    polars = (
        pl.scan_delta(uri)
        .group_by("video_id", "model")
        .len()
        .sort("video_id", "model")
        .collect()
        .rows()
    )
    # PyArrow alone, over the files the Delta log lists (what any Parquet engine given the
    # log's file list reads); partition values come from the log.
    files = pa.table(DeltaTable(uri).get_add_actions(flatten=True))
    parts = []
    for path, model in zip(
        files.column("path").to_pylist(), files.column("partition.model").to_pylist(), strict=True
    ):
        body = pds.dataset(os.path.join(uri, _unquote(path))).to_table()
        parts.append(body.append_column("model", pa.array([model] * body.num_rows)))
    table = (
        pa.concat_tables(parts).group_by(["video_id", "model"]).aggregate([("video_id", "count")])
    )
    arrow = sorted((r["video_id"], r["model"], r["video_id_count"]) for r in table.to_pylist())
    assert duck == polars == arrow == [("a1", "m1", 3), ("a1", "m2", 3), ("b2", "m1", 3)]


def _unquote(path: str) -> str:
    from urllib.parse import unquote

    return unquote(path)


def test_one_writer_per_output(store, tmp_path):
    with store.lease("run-1"):
        with pytest.raises(IndexBusyError, match=r"output .*index is being written by run run-1"):
            store.lease("run-2").acquire()
    store.lease("run-2").acquire().release()  # free again after release
    # A lease left by a process that is gone (a SIGKILLed driver) is taken over.
    lease_file = tmp_path / "index" / "_vidbatch" / "writer.json"
    lease_file.write_text(
        json.dumps(
            {
                "run_id": "dead",
                "host": os.uname().nodename,
                "pid": 2**22 + 7,
                "at": datetime.now(timezone.utc).isoformat(),
            }
        )
    )
    taken = store.lease("run-3").acquire()
    assert json.loads(lease_file.read_text())["run_id"] == "run-3"
    taken.check()
    lease_file.write_text(
        json.dumps(
            {
                "run_id": "thief",
                "host": "elsewhere",
                "pid": 1,
                "at": datetime.now(timezone.utc).isoformat(),
            }
        )
    )
    with pytest.raises(IndexBusyError, match="lost the writer lease to thief"):
        taken.check()


def test_compact_merges_files_and_keeps_rows(store):
    for i in range(6):
        commit(store, 1, f"r{i}", videos(f"{chr(97 + i)}1"), clips([f"{chr(97 + i)}1"], "m1"))
    before = counts(store)
    live_before = store.read("clips").num_rows
    report = store.compact(retention_hours=0)
    assert report["clips"]["files_removed"] == 6 and report["clips"]["files_added"] == 1
    assert counts(store) == before and store.read("clips").num_rows == live_before
    assert store.recover() == []  # compaction named its new versions: nothing to undo


def test_concurrent_commits_on_s3_never_share_a_version(s3, s3_server):
    """Six writers append to one table on S3 at once: Delta's conditional put gives each its
    own version; none overwrites another's commit."""
    fs, options = s3
    make_bucket(s3_server, "delta-race")
    IndexStore("s3://delta-race/idx", options).ensure_tables()
    errors = []

    def write(i: int) -> None:
        store = IndexStore("s3://delta-race/idx", options)  # its own handles, as another process
        video = f"{chr(97 + i)}1"
        try:
            files = store.write_rows("clips", clips([video], "m1", f"run-{i}"))
            store._commit(
                "clips", [f.add_action() for f in files], ChunkCommit(1, f"run-{i}", videos())
            )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    log = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("delta-race/idx/clips/_delta_log"))
    assert log == [f"{v:020d}.json" for v in range(7)]  # one version each, none lost
    rows = IndexStore("s3://delta-race/idx", options).read("clips").to_pylist()
    assert sorted({r["video_id"] for r in rows}) == [f"{chr(97 + i)}1" for i in range(6)]
    assert len(rows) == 18


def test_delta_options_translate_s3fs_options_and_keep_secrets_out_of_repr():
    options = {
        "key": "AKIA",
        "secret": "shh",
        "client_kwargs": {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1"},
    }
    translated = delta_options("s3://b/i", options)
    assert (
        translated["AWS_ACCESS_KEY_ID"] == "AKIA" and translated["AWS_SECRET_ACCESS_KEY"] == "shh"
    )
    assert (
        translated["AWS_ENDPOINT_URL"] == "http://minio:9000"
        and translated["AWS_ALLOW_HTTP"] == "true"
    )
    assert translated["AWS_REGION"] == "eu-west-1" and translated["conditional_put"] == "etag"
    assert "shh" not in repr(IndexStore("s3://b/i", options))
