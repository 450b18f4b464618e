"""Nightly runs against the Delta index: current state, no-op nights without Ray, re-indexing
replaces rows in one commit, bounded retries, the failure budget, pruning, time travel, a
SIGKILLed driver and a second writer."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save as save_safetensors

from tests.conftest import job_config
from tests.support.index import expected_clips, read
from vidbatch.config import config_from_dict
from vidbatch.index.store import IndexStore
from vidbatch.job.run import plan_run, run_job
from vidbatch.media.synth import synthesize
from vidbatch.models.checkpoint import METADATA_KEY, read_checkpoint

CLIP_SECONDS = 2.0  # motion-cnn: 16 frames at 8 fps


def clip_keys(output: Path) -> Counter:
    return Counter((c["uri"], c["model"], c["clip_start_s"]) for c in read(output, "clips"))


@pytest.fixture
def archive(tmp_path, small_archive):
    source = tmp_path / "videos"
    source.mkdir()
    for uri in small_archive.uris[:4]:
        shutil.copy(uri, source)
    return source


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_no_op_nights_keep_one_row_per_uri_and_start_no_ray(ray_session, tmp_path, archive):
    out = tmp_path / "out"
    config = job_config(str(archive), str(out), incremental=True)
    first = run_job(config_from_dict(config))
    assert (first.ok, first.skipped) == (4, 0)
    clips = clip_keys(out)
    assert clips and max(clips.values()) == 1

    # Four more nights in fresh processes without RAY_ADDRESS: nothing to do, so Ray must not
    # even start (a started local Ray would leave ray.is_initialized() true).
    path = write_config(tmp_path / "job.yaml", config)
    script = (
        "import sys, ray\n"
        "from vidbatch.config import load_config\n"
        "from vidbatch.job.run import run_job\n"
        "s = run_job(load_config(sys.argv[1]), show_progress=False)\n"
        "assert (s.ok, s.failed, s.skipped) == (0, 0, 4), s\n"
        "assert not ray.is_initialized(), 'a no-op run started Ray'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for _ in range(4):
        done = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]

    videos = read(out, "videos")
    assert len(videos) == 4 and len({v["uri"] for v in videos}) == 4
    assert clip_keys(out) == clips
    runs = sorted(read(out, "runs"), key=lambda r: r["started_at"])
    assert [(r["status"], r["ok"], r["skipped"]) for r in runs] == [("ok", 4, 0)] + [
        ("ok", 0, 4)
    ] * 4
    # The plan of a sixth night reads only the current videos table: four rows, not twenty.
    assert IndexStore(str(out)).current_videos().num_rows == 4


def test_reindex_replaces_rows_in_place_and_the_old_index_stays_readable(
    ray_session, tmp_path, archive, small_archive
):
    out = tmp_path / "out"
    first = job_config(str(archive), str(out), incremental=True)
    run_job(config_from_dict(first))
    before_version = IndexStore(str(out)).snapshot().videos_version
    before = {(c["uri"], c["clip_start_s"]): c for c in read(out, "clips")}

    # One video changes content at the same uri, and the config changes how rows look.
    changed = sorted(archive.glob("vid-*.mp4"))[0]
    shutil.copy(small_archive.uris[6], changed)
    second = job_config(str(archive), str(out), incremental=True)
    second["models"] = [{"name": "motion-cnn", "top_k": 2}]
    reasons = Counter(plan_run(config_from_dict(second)).listed.column("reason").to_pylist())
    assert reasons == {"changed": 1, "upgrade": 3}
    summary = run_job(config_from_dict(second))
    assert (summary.ok, summary.failed) == (4, 0)

    videos = {v["uri"]: v for v in read(out, "videos")}
    clips = read(out, "clips")
    assert len(videos) == 4
    # Exactly one run's rows per video and model, and that run is the second one.
    assert {c["run_id"] for c in clips} == {summary.run_id}
    assert all(len(c["labels"]) == 2 for c in clips)
    assert max(clip_keys(out).values()) == 1
    for uri, video in videos.items():
        rows = [c for c in clips if c["uri"] == uri]
        assert {c["video_id"] for c in rows} == {video["video_id"]}
        assert len(rows) == expected_clips(uri, CLIP_SECONDS)
    # Time travel: the index as it was before the upgrade, whole.
    old = {(c["uri"], c["clip_start_s"]): c for c in read(out, "clips", as_of=before_version)}
    assert old.keys() == before.keys()
    assert all(len(c["labels"]) == 3 for c in old.values())
    assert len(read(out, "videos", as_of=before_version)) == 4


def test_a_new_model_version_reprocesses_and_unread_sampling_does_not(
    ray_session, tmp_path, archive
):
    out = tmp_path / "out"
    base = job_config(str(archive), str(out), incremental=True)
    run_job(config_from_dict(base))

    # sampling.clips is what a model without its own clip spec would see: motion-cnn's
    # checkpoint carries its own, so changing it changes no row and re-indexes nothing.
    unread = {**base, "sampling": {"clips": {"frames": 8, "fps": 4, "size": 64}}}
    assert Counter(plan_run(config_from_dict(unread)).listed.column("reason").to_pylist()) == {
        "skipped": 4
    }

    # New weights for the same model name are a new model version: every video is upgraded.
    from vidbatch.models.registry import get_model_spec

    state, meta = read_checkpoint(get_model_spec("motion-cnn").default_weights)
    retrained = tmp_path / "motion-cnn-v2.safetensors"
    note = dataclasses.replace(meta, metrics={"note": "v2"})  # other bytes: another version
    retrained.write_bytes(save_safetensors(state, metadata={METADATA_KEY: note.to_json()}))
    upgraded = {**base, "models": [{"name": "motion-cnn", "top_k": 3, "weights": str(retrained)}]}
    plan = plan_run(config_from_dict(upgraded))
    assert Counter(plan.listed.column("reason").to_pylist()) == {"upgrade": 4}
    assert any(k.endswith("version") for k in plan.changed), plan.changed


def test_failed_videos_are_retried_a_bounded_number_of_times(ray_session, tmp_path, archive):
    out = tmp_path / "out"
    (archive / "zero.mp4").write_bytes(b"")
    config = config_from_dict(
        job_config(str(archive), str(out), incremental=True, max_retries=2, max_failed_fraction=1.0)
    )

    def night() -> dict:
        run_job(config)
        return next(v for v in read(out, "videos") if v["uri"].endswith("zero.mp4"))

    assert (night()["attempts"], night()["attempts"]) == (1, 2)
    listed = plan_run(config).listed.select(["uri", "reason"]).to_pylist()
    reasons = {row["uri"].rsplit("/", 1)[-1]: row["reason"] for row in listed}
    assert reasons["zero.mp4"] == "exhausted"
    third = run_job(config)
    assert (third.ok, third.failed, third.skipped) == (0, 0, 5)
    # --retry-failed forces it, and new content at the same uri starts the count afresh.
    assert run_job(config, retry_failed=True).failed == 1
    (archive / "zero.mp4").write_bytes(b"still not a video")
    run_job(config)
    assert next(v for v in read(out, "videos") if v["uri"].endswith("zero.mp4"))["attempts"] == 1


def test_failure_budget_counts_processed_videos_not_skipped_ones(ray_session, tmp_path, archive):
    from vidbatch.cli import main

    out = tmp_path / "out"
    path = write_config(
        tmp_path / "job.yaml",
        job_config(str(archive), str(out), incremental=True, max_failed_fraction=0.4),
    )
    assert main(["run", str(path), "-q"]) == 0
    # Tonight: the 4 indexed videos are skipped and 2 new ones both fail. 2 of 6 listed would
    # pass a 0.4 budget; 2 of 2 processed must not.
    (archive / "broken-a.mp4").write_bytes(b"not a video")
    (archive / "broken-b.mp4").write_bytes(b"not a video either")
    assert main(["run", str(path), "-q"]) == 1
    latest = max(read(out, "runs"), key=lambda r: r["started_at"])
    assert (latest["status"], latest["ok"], latest["failed"], latest["skipped"]) == (
        "failed",
        0,
        2,
        4,
    )


def test_prune_removes_vanished_videos_only_when_asked(ray_session, tmp_path, archive):
    out = tmp_path / "out"
    config = job_config(str(archive), str(out), incremental=True)
    run_job(config_from_dict(config))
    gone = sorted(archive.glob("*.mp4"))[0]
    gone.unlink()
    run_job(config_from_dict(config))
    assert any(c["uri"] == str(gone) for c in read(out, "clips"))  # kept by default
    run_job(config_from_dict({**config, "prune": True}))
    assert not any(c["uri"] == str(gone) for c in read(out, "clips"))
    assert {v["uri"] for v in read(out, "videos")} == {str(p) for p in archive.glob("*.mp4")}


def test_dry_run_counts_reasons_and_names_changed_keys(ray_session, tmp_path, archive, capsys):
    from vidbatch.cli import main

    out = tmp_path / "out"
    path = write_config(tmp_path / "job.yaml", job_config(str(archive), str(out), incremental=True))
    assert main(["run", str(path), "-q"]) == 0
    (archive / "new.mp4").write_bytes((archive / sorted(os.listdir(archive))[0]).read_bytes())
    capsys.readouterr()
    assert main(["run", str(path), "--dry-run", "--set", "models.0.top_k=2"]) == 0
    printed = capsys.readouterr().out
    assert "5 videos listed (1 new, 4 upgrade)" in printed
    assert "models[0].top_k" in printed
    assert main(["run", str(path), "--dry-run", "--limit", "2"]) == 0
    assert "1 new, 4 skipped); 1 to index" in capsys.readouterr().out
    assert main(["run", str(path), "--limit", "-1"]) == 2


def test_sigkilled_driver_then_rerun_finishes_with_every_row_once(
    ray_session, tmp_path, small_archive
):
    source = tmp_path / "videos"
    source.mkdir()
    for uri in small_archive.uris:
        shutil.copy(uri, source)
    # A long video listed last, in short segments, keeps the job busy after the first commits.
    long = synthesize(tmp_path / "long", 1, seed=5, min_seconds=160.0, max_seconds=160.0)
    shutil.copy(long.uris[0], source / "zz-long.mp4")
    out = tmp_path / "out"
    config = job_config(str(source), str(out), incremental=True)
    config["resources"] = {"commit_every": 1, "actors": 1}
    config["sampling"] = {"segment_seconds": 8.0}
    path = write_config(tmp_path / "job.yaml", config)
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    command = [sys.executable, "-m", "vidbatch.cli", "run", str(path), "-q"]

    driver = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # The event: the videos table's first chunk commit (version 0 is the empty table).
    first_commit = out / "videos" / "_delta_log" / f"{1:020d}.json"
    deadline = time.monotonic() + 300
    while not first_commit.exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first_commit.exists(), "the job never committed a chunk"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    partial = read(out, "videos")
    assert 0 < len(partial) < 9, (
        "the kill came after the last commit: the long video should prevent it"
    )

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    videos = read(out, "videos")
    assert len(videos) == 9 and {v["status"] for v in videos} == {"ok"}
    assert max(clip_keys(out).values()) == 1
    for video in videos:
        local = source / video["uri"].rsplit("/", 1)[-1]
        assert sum(1 for c in read(out, "clips") if c["uri"] == video["uri"]) == expected_clips(
            local, CLIP_SECONDS
        )


def test_a_second_writer_is_refused_and_the_first_finishes(ray_session, tmp_path, small_archive):
    source = tmp_path / "videos"
    source.mkdir()
    long = synthesize(tmp_path / "long", 1, seed=6, min_seconds=120.0, max_seconds=120.0)
    shutil.copy(long.uris[0], source / "long.mp4")
    out = tmp_path / "out"
    config = job_config(str(source), str(out), incremental=True)
    config["sampling"] = {"segment_seconds": 8.0}
    path = write_config(tmp_path / "job.yaml", config)
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    command = [sys.executable, "-m", "vidbatch.cli", "run", str(path), "-q"]

    first = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lease = out / "_vidbatch" / "writer.json"
    deadline = time.monotonic() + 120
    while not lease.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lease.exists()
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1
    message = second.stderr.strip().splitlines()[-1]
    assert f"output {out} is being written by run" in message and "one writer per output" in message
    stdout, stderr = first.communicate(timeout=900)
    assert first.returncode == 0, stderr[-2000:]
    assert [v["status"] for v in read(out, "videos")] == ["ok"]
    assert len(read(out, "runs")) == 1  # the refused run wrote nothing
    assert not lease.exists()
