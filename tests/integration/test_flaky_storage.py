"""Flaky storage: S3 (moto) behind tests/support/flaky_proxy.py, which fails requests on purpose.

- Through a proxy failing a quarter of all requests (500, 503, dropped connections, lost
  responses), listing, reads and the commit retry and the job's output is complete and exact.
- When output storage goes down in the middle of a chunk's commit (after its clips commit,
  before its videos commit), the job fails with one line naming the output URI; readers see
  only whole chunks, and the rerun restores the half-done commit and gives every row once.

What the job relies on per request is botocore's own retry (vidbatch asks for `standard` mode,
8 attempts, unless storage_options say otherwise); on top of that, `vidbatch.storage.retrying`
retries whole listing / read / commit steps. The first test turns the client's retries off to
show vidbatch's own retries carry the operations alone.
"""

from __future__ import annotations

import http.client
import io
import logging
from collections import Counter
from datetime import datetime, timezone
from types import SimpleNamespace
from urllib.parse import urlsplit

import pyarrow as pa
import pytest
import s3fs

from tests.conftest import job_config, make_bucket
from tests.support.flaky_proxy import FlakyProxy
from tests.support.index import expected_clips
from tests.support.index import read as read_index
from vidbatch import storage
from vidbatch.config import config_from_dict
from vidbatch.errors import ConfigError
from vidbatch.index import tables
from vidbatch.index.store import ChunkCommit, IndexStore
from vidbatch.job.catalog import list_videos
from vidbatch.job.run import run_job
from vidbatch.media.decode import probe
from vidbatch.storage import RetryPolicy, StorageError, open_input

VIDEOS = 4
KEY, SECRET = "testing-key-id", "testing-secret-value"
FAST = RetryPolicy(attempts=3, base_s=0.01, cap_s=0.05)


def options(endpoint: str, **extra) -> dict:
    return {
        "key": KEY,
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        **extra,
    }


def direct(s3_server: str) -> s3fs.S3FileSystem:
    """A fresh client straight to moto (no proxy, no cached listings): what a reader sees."""
    return s3fs.S3FileSystem(skip_instance_cache=True, **options(s3_server))


def rows(s3_server: str, output: str, name: str) -> list[dict]:
    """What a reader going straight to moto sees (one snapshot of the index)."""
    return read_index(output, name, options(s3_server))


def clip_key(c: dict) -> tuple:
    scores = tuple(round(s, 4) for s in c["scores"])
    return (
        c["video_id"],
        c["model"],
        c["clip_start_s"],
        c["clip_end_s"],
        c["label"],
        tuple(c["labels"]),
        scores,
    )


@pytest.fixture(scope="module")
def archive(s3_server, small_archive) -> str:
    """VIDEOS short videos in a bucket; every run below lists the same URIs (same video ids)."""
    make_bucket(s3_server, "flaky-src")
    fs = direct(s3_server)
    for uri in small_archive.uris[:VIDEOS]:
        fs.put(uri, f"flaky-src/videos/{uri.rsplit('/', 1)[-1]}")
    return "s3://flaky-src/videos/"


def test_proxy_passes_s3_traffic_through_faithfully(s3_server):
    """No faults: multipart and single PUTs (chunked too), ranged GETs, HEAD and LIST intact."""
    import boto3
    from boto3.s3.transfer import TransferConfig

    make_bucket(s3_server, "flaky-pass")
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB: three 5 MiB-or-less parts
    with FlakyProxy(s3_server) as proxy:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options(proxy.url))
        with fs.open("flaky-pass/multi.bin", "wb", block_size=5 * 2**20) as handle:
            handle.write(data)
        client = boto3.client(
            "s3",
            endpoint_url=proxy.url,
            region_name="us-east-1",
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
        )
        client.upload_fileobj(
            io.BytesIO(data),
            "flaky-pass",
            "boto.bin",
            Config=TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20),
        )
        chunked = http.client.HTTPConnection(urlsplit(proxy.url).netloc)
        chunked.request(
            "PUT", "/flaky-pass/chunked.bin", body=iter([b"abc", b"defg"]), encode_chunked=True
        )
        assert chunked.getresponse().status == 200
        chunked.close()
        assert (
            fs.cat_file("flaky-pass/multi.bin", start=4_999_990, end=5_000_010)
            == data[4_999_990:5_000_010]
        )
        assert fs.cat_file("flaky-pass/boto.bin") == data
        assert fs.info("flaky-pass/boto.bin")["size"] == len(data)  # HEAD
        assert sorted(fs.ls("flaky-pass")) == [
            "flaky-pass/boto.bin",
            "flaky-pass/chunked.bin",
            "flaky-pass/multi.bin",
        ]
    assert direct(s3_server).cat_file("flaky-pass/chunked.bin") == b"abcdefg"
    assert proxy.faults_injected == 0 and proxy.counts["forwarded"] > 10


def test_vidbatch_retries_listing_reads_and_commit_on_its_own(
    s3_server, archive, monkeypatch, caplog
):
    """Client retries off (botocore 1 attempt, s3fs 1 try): every fault of listing and reads
    reaches vidbatch, whose own retries carry them. Commits go through delta-rs, which retries
    requests itself (a few times, vidbatch.index.delta.OBJECT_STORE_RETRIES) under vidbatch's
    whole-step retries: they must still land each chunk exactly once."""
    monkeypatch.setattr(storage, "POLICY", RetryPolicy(attempts=12, base_s=0.005, cap_s=0.02))
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)  # a class setting, not an option
    make_bucket(s3_server, "flaky-unit")
    caplog.set_level(logging.WARNING, logger="vidbatch.storage")
    clean = direct(s3_server)
    with FlakyProxy(s3_server, fail_rate=0.3, seed=3) as proxy:
        opts = options(
            proxy.url, config_kwargs={"retries": {"mode": "standard", "total_max_attempts": 1}}
        )
        listed = list_videos(archive, opts)
        assert [r.uri for r in listed] == [r.uri for r in list_videos(archive, options(s3_server))]
        assert [r.etag for r in listed] == [
            r.etag for r in list_videos(archive, options(s3_server))
        ]

        first = listed[0].uri
        with open_input(first, {**opts, "default_block_size": 64 * 1024}) as handle:
            data = handle.read()
        assert data == clean.cat_file(first)
        assert probe(first, opts) == probe(first, options(s3_server))
        fsspec_faults = proxy.counts["500"] + proxy.counts["503"]
        fsspec_retries = sum("retrying in" in r.getMessage() for r in caplog.records)

        store = IndexStore("s3://flaky-unit/idx", opts)
        store.ensure_tables()
        for sequence, part in enumerate(("p0", "p1", "p2"), start=1):
            row = {
                "video_id": part,
                "uri": f"s3://x/{part}.mp4",
                "status": "ok",
                "processed_at": datetime.now(timezone.utc),
            }
            table = pa.Table.from_pylist([row], schema=tables.VIDEOS)
            store.commit_chunk(ChunkCommit(sequence, "unit", table))
    committed = rows(s3_server, "s3://flaky-unit/idx", "videos")
    assert sorted(v["video_id"] for v in committed) == ["p0", "p1", "p2"]
    log = [
        v for v in direct(s3_server).ls("flaky-unit/idx/videos/_delta_log") if v.endswith(".json")
    ]
    assert len(log) == 4  # the empty table and one commit per chunk, none twice
    assert all(proxy.counts[k] > 0 for k in ("500", "503", "drop", "lost")), proxy.counts
    # 500s and 503s of listing and reads reach vidbatch directly (aiohttp itself redoes a
    # dropped keep-alive request once).
    assert fsspec_retries >= fsspec_faults // 2 > 0, (fsspec_retries, fsspec_faults)
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert not any(SECRET in m or KEY in m for m in retries)


def test_storage_down_is_a_one_line_error_naming_the_uri(s3_server, archive, monkeypatch):
    monkeypatch.setattr(storage, "POLICY", FAST)
    with FlakyProxy(s3_server, down_fault="503") as proxy:
        opts = options(
            proxy.url, config_kwargs={"retries": {"mode": "standard", "total_max_attempts": 1}}
        )
        proxy.down = True
        with pytest.raises(ConfigError) as listing:
            list_videos(archive, opts)
        with pytest.raises(StorageError) as reading:
            open_input(f"{archive}nothing.mp4", opts)
    for error, uri in ((listing.value, archive), (reading.value, f"{archive}nothing.mp4")):
        message = str(error)
        assert "\n" not in message and uri in message and "unreachable after 3 attempts" in message
        assert SECRET not in message and KEY not in message, message


@pytest.fixture(scope="module")
def interrupted(ray_session, s3_server, archive):
    """A nightly-style job whose output storage goes down right after the second chunk's clips
    commit, before its videos commit; then the same job again."""
    make_bucket(s3_server, "flaky-down")
    output = "s3://flaky-down/idx"
    with FlakyProxy(s3_server, down_fault="503") as proxy, pytest.MonkeyPatch.context() as mp:
        mp.setattr(storage, "POLICY", FAST)
        config = job_config(
            archive, output, incremental=True, resources={"commit_every": 2, "actors": 1}
        )
        config["source"]["storage_options"] = options(s3_server)
        config["output"]["storage_options"] = options(
            proxy.url, config_kwargs={"retries": {"mode": "standard", "total_max_attempts": 2}}
        )
        config = config_from_dict(config)

        def second_clips_commit(method: str, path: str, headers: dict) -> bool:
            # Version 0 is the empty table, 1 the first chunk, 2 the second.
            return method == "PUT" and path.endswith(f"/idx/clips/_delta_log/{2:020d}.json")

        proxy.trip_when(second_clips_commit)
        with pytest.raises(StorageError) as failure:
            run_job(config)
        clips_log = direct(s3_server).ls("flaky-down/idx/clips/_delta_log")
        after_failure = SimpleNamespace(
            videos=rows(s3_server, output, "videos"),
            clips=rows(s3_server, output, "clips"),
            latest_clips=IndexStore(output, options(s3_server)).read("clips").to_pylist(),
            clips_versions=sorted(p.rsplit("/", 1)[-1] for p in clips_log if p.endswith(".json")),
        )
        assert proxy.counts["tripped"] == 1 and proxy.counts["503"] > 0, proxy.counts
        proxy.down = False  # storage is back
        rerun = run_job(config)
    return SimpleNamespace(
        output=output,
        error=failure.value,
        after_failure=after_failure,
        rerun=rerun,
        videos=rows(s3_server, output, "videos"),
        clips=rows(s3_server, output, "clips"),
    )


def test_storage_down_during_commit_fails_cleanly_and_the_rerun_completes(
    interrupted, small_archive
):
    message = str(interrupted.error)
    assert "\n" not in message and message.startswith("storage: s3://flaky-down/idx"), message
    assert "unreachable after 3 attempts" in message
    assert SECRET not in message and KEY not in message

    # The second chunk's clips commit landed (clips version 2), its videos commit did not.
    seen = interrupted.after_failure
    assert seen.clips_versions[-1] == f"{2:020d}.json"
    assert len({c["video_id"] for c in seen.latest_clips}) == 4
    # A reader sees the first chunk whole and nothing of the second.
    assert len(seen.videos) == 2 and {v["status"] for v in seen.videos} == {"ok"}
    assert {c["video_id"] for c in seen.clips} == {v["video_id"] for v in seen.videos}
    local = {uri.rsplit("/", 1)[-1]: uri for uri in small_archive.uris}

    def clips_of(video: dict, clips: list[dict]) -> int:
        return sum(1 for c in clips if c["video_id"] == video["video_id"])

    for video in seen.videos:
        assert clips_of(video, seen.clips) == expected_clips(
            local[video["uri"].rsplit("/", 1)[-1]], 2.0
        )

    # The same command again: the half-done commit is undone, the rest is indexed, once.
    assert (interrupted.rerun.ok, interrupted.rerun.skipped, interrupted.rerun.failed) == (2, 2, 0)
    assert len(interrupted.videos) == VIDEOS and {v["status"] for v in interrupted.videos} == {"ok"}
    keys = Counter((c["video_id"], c["model"], c["clip_start_s"]) for c in interrupted.clips)
    assert max(keys.values()) == 1
    for video in interrupted.videos:
        local_path = local[video["uri"].rsplit("/", 1)[-1]]
        assert clips_of(video, interrupted.clips) == expected_clips(local_path, 2.0)


def test_job_through_flaky_storage_writes_the_same_rows(
    ray_session, s3_server, archive, interrupted
):
    """A quarter of all requests fail; the output equals the fault-free reference exactly."""
    make_bucket(s3_server, "flaky-out")
    output = "s3://flaky-out/idx"
    with FlakyProxy(s3_server, fail_rate=0.25, seed=8) as proxy:
        config = job_config(archive, output, resources={"actors": 1})
        config["source"]["storage_options"] = config["output"]["storage_options"] = options(
            proxy.url
        )
        summary = run_job(config_from_dict(config))
    assert (summary.videos, summary.ok, summary.failed) == (VIDEOS, VIDEOS, 0)
    assert all(proxy.counts[k] > 0 for k in ("500", "503", "drop", "lost")), proxy.counts
    assert proxy.faults_injected >= 0.1 * (proxy.faults_injected + proxy.counts["forwarded"])

    videos = rows(s3_server, output, "videos")
    reference = {v["video_id"]: v for v in interrupted.videos if v["status"] == "ok"}
    assert sorted(v["video_id"] for v in videos) == sorted(reference)
    for v in videos:
        ref = reference[v["video_id"]]
        assert v["status"] == "ok" and v["error"] is None
        assert (v["duration_s"], v["segments"], v["frames_used"]) == (
            ref["duration_s"],
            ref["segments"],
            ref["frames_used"],
        )
    clips = Counter(clip_key(c) for c in rows(s3_server, output, "clips"))
    assert clips == Counter(clip_key(c) for c in interrupted.clips)
    assert max(clips.values()) == 1
    assert [r["status"] for r in rows(s3_server, output, "runs")] == ["ok"]
    print(f"flaky proxy: {dict(proxy.counts)}")


class LosesFirstReply(FlakyProxy):
    """Forwards everything, but drops the reply to the first request matching `match` after
    the store did the work (a lost response): the client cannot know its commit landed."""

    def __init__(self, upstream: str, match) -> None:
        super().__init__(upstream)
        self.match, self.lost = match, []

    def decide(self, method: str, path: str, headers: dict) -> str | None:
        if not self.lost and self.match(method, path):
            self.lost.append(path)
            self.counts["lost"] += 1
            return "lost"
        return super().decide(method, path, headers)


@pytest.mark.parametrize("table", ["runs", "videos"])
def test_a_commit_whose_reply_is_lost_lands_once(s3_server, table):
    """delta-rs retries the commit's PUT, finds its own commit there and calls it a concurrent
    one; vidbatch, the only writer under its lease, knows it is its own: the row lands once."""
    bucket = f"flaky-lost-{table}"
    make_bucket(s3_server, bucket)
    store = IndexStore(f"s3://{bucket}/idx", options(s3_server))
    store.ensure_tables()

    def first_commit(method: str, path: str) -> bool:
        return method == "PUT" and path.endswith(f"/idx/{table}/_delta_log/{1:020d}.json")

    with LosesFirstReply(s3_server, first_commit) as proxy:
        through = IndexStore(f"s3://{bucket}/idx", options(proxy.url))
        now = datetime.now(timezone.utc)
        if table == "runs":
            through.write_run({"run_id": "r1", "started_at": now, "status": "ok"})
        else:
            row = {"video_id": "v1", "uri": "s3://x/v1.mp4", "status": "ok", "processed_at": now}
            chunk = ChunkCommit(1, "r1", pa.Table.from_pylist([row], schema=tables.VIDEOS))
            through.commit_chunk(chunk)
    assert proxy.lost, "the commit's reply was never dropped"
    assert len(rows(s3_server, f"s3://{bucket}/idx", table)) == 1
    log = direct(s3_server).ls(f"{bucket}/idx/{table}/_delta_log")
    commits = sum(1 for p in log if p.endswith(".json")) - 1  # version 0 is the empty table
    # A chunk commit carries its run's sequence number, so it is recognised and not redone;
    # the run record is written again (it replaces its own row).
    assert commits == (2 if table == "runs" else 1)
