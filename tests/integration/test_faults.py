"""Faults on a real multi-node Ray cluster: during one submitted index job, SIGKILL a decode
worker, remove a worker node (SIGKILL all its processes, as a lost machine) and SIGKILL the
inference actor. Ray retries and restarts; the job must finish with every expected row
exactly once (DESIGN.md, "Failure rules": a killed worker, actor or node is retried by Ray).

The cluster is head + 2 workers with one CPU each (tests/support/ray_cluster.py), private to this
module. The job decodes in two decode actors (`resources.decode_actors: 2`, so decoding is not
fused into the inference worker; `MapWorker(MapBatches(DecodeStage))`) and infers in one actor
(`MapWorker(MapBatches(InferenceStage))`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.index import expected_clips
from tests.support.index import read as read_index
from tests.support.ray_cluster import (
    REPO,
    LocalCluster,
    alive,
    cmdline,
    local_cluster,
    needs_ray_cli,
    proc_table,
    submit_command,
)

INFERENCE = "ray::MapWorker(MapBatches(InferenceStage))"  # + ".submit" etc. while it works
BUSY_ACTOR = INFERENCE + ".submit"  # running a batch
DECODE = "ray::MapWorker(MapBatches(DecodeStage)).submit"  # a decode actor running a batch
VIDEOS, COMMIT_EVERY = 16, 2
CHUNKS = VIDEOS // COMMIT_EVERY

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420), *needs_ray_cli]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with local_cluster(workers=2, cpus=1) as local:
        yield local


@dataclass
class Fault:
    what: str
    pid: int
    started: str
    title: str
    node: str
    chunks_before: int  # committed chunks when it was injected
    children: dict[int, str] = field(default_factory=dict)


def ray_processes(cluster: LocalCluster) -> list[tuple[str, int, str, str]]:
    """(node, pid, start time, title) of every process of the cluster's live nodes."""
    found = []
    for name in list(cluster.nodes):
        for pid, started in cluster.node_processes(name).items():
            found.append((name, pid, started, cmdline(pid)))
    return found


def committed_chunks(output: Path) -> int:
    """Chunks committed so far: each ends with one videos commit (version 0: the empty table)."""
    return max(0, len(list((output / "videos" / "_delta_log").glob("*.json"))) - 1)


def wait(what: str, probe: Callable[[], Any], job: subprocess.Popen, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if job.poll() is not None:
            pytest.fail(f"the job ended (rc {job.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def children_of(pid: int) -> dict[int, str]:
    return {p: s for p, (ppid, _, s) in proc_table().items() if ppid == pid}


def read(output: Path, table: str) -> list[dict[str, Any]]:
    return read_index(output, table)


def retries(cluster: LocalCluster, pids: set[int]) -> tuple[list[dict], list[dict]]:
    """Task attempts that failed in a worker process of `pids`, and the later attempts of the
    same tasks that finished (Ray's state API keeps one entry per task attempt). A worker is
    matched by its Ray worker id, which the raylet records with its pid when it starts: the
    attempt's own `worker_pid` is reported by the worker itself, and is lost when it is killed
    before it flushed its task events (or, for tasks queued on an actor, never set)."""
    workers = cluster.api("/api/v0/workers?limit=10000")["data"]["result"]["result"]
    ids = {w["worker_id"] for w in workers if w["pid"] in pids}
    attempts = cluster.api("/api/v0/tasks?limit=10000")["data"]["result"]["result"]
    failed = [
        a
        for a in attempts
        if a["state"] == "FAILED" and (a.get("worker_id") in ids or a.get("worker_pid") in pids)
    ]
    finished = [
        a
        for a in attempts
        if a["state"] == "FINISHED"
        and any(
            a["task_id"] == f["task_id"] and a["attempt_number"] > f["attempt_number"]
            for f in failed
        )
    ]
    return failed, finished


@pytest.mark.timeout(900)
def test_probe_and_write_run_on_worker_nodes_and_match_a_one_node_run(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Scale-out: the probe and write stages run as tasks on the worker nodes (Ray's state
    API says where each finished), and the index equals one a single-node Ray makes."""
    from vidbatch.media.synth import synthesize

    made = synthesize(tmp_path / "archive", 12, seed=31, min_seconds=3.0, max_seconds=5.0)

    def config(output: Path) -> Path:
        path = output.with_suffix(".yaml")
        path.write_text(
            yaml.safe_dump(
                {
                    "source": {"uri": str(Path(made.uris[0]).parent)},
                    "output": {"uri": str(output)},
                    "models": [{"name": "motion-cnn"}],
                    "incremental": False,
                    "resources": {"commit_every": 3},
                }
            )
        )
        return path

    spread = tmp_path / "spread"
    done = subprocess.run(
        submit_command(cluster, config(spread)),
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0 and "succeeded" in done.stdout + done.stderr, done.stdout[-3000:]
    nodes = cluster.api("/api/v0/nodes?limit=100")["data"]["result"]["result"]
    head = {n["node_id"] for n in nodes if n["is_head_node"]}
    tasks = cluster.api("/api/v0/tasks?limit=10000&detail=1")["data"]["result"]["result"]

    def ran_on(stage: str) -> set[str]:
        return {t["node_id"] for t in tasks if stage in t["name"] and t["state"] == "FINISHED"}

    assert ran_on("ProbeStage") - head, {t["name"] for t in tasks}
    assert ran_on("WriteStage") - head, {t["name"] for t in tasks}

    # The same job on a one-node Ray (a fresh local one: RAY_ADDRESS unset).
    alone = tmp_path / "alone"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    local = subprocess.run(
        [sys.executable, "-m", "vidbatch.cli", "run", str(config(alone)), "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert local.returncode == 0, local.stderr[-3000:]

    def rows(output: Path) -> tuple[list, list]:
        videos = sorted(
            (v["video_id"], v["status"], v["segments"], v["duration_s"])
            for v in read(output, "videos")
        )
        clips = sorted(
            (c["video_id"], c["clip_start_s"], c["label"], round(c["score"], 4))
            for c in read(output, "clips")
        )
        return videos, clips

    assert rows(spread) == rows(alone) and len(rows(alone)[0]) == 12


def test_job_survives_killed_decode_worker_lost_node_and_killed_actor(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    from vidbatch.media.synth import synthesize

    t0 = time.monotonic()
    made = synthesize(tmp_path / "archive", VIDEOS, seed=21, min_seconds=6.0, max_seconds=8.0)
    clip_seconds = 2.0  # the model's clips: 4 frames at 2 fps
    expected = {Path(u).name: expected_clips(u, clip_seconds) for u in made.uris}
    output = tmp_path / "index"
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"uri": str(tmp_path / "archive")},
                "output": {"uri": str(output)},
                # Brightness with a 0.25 s pause per call: the inference worker is caught busy.
                "models": [{"name": "tests.support.custom_model:build_slow"}],
                "incremental": False,
                "sampling": {"segment_seconds": clip_seconds},  # one clip per work unit
                "resources": {
                    "actors": 1,
                    "decode_actors": 2,
                    "decode_cpus": 0.5,
                    "commit_every": COMMIT_EVERY,
                    "probe_timeout_s": 0,  # probe unisolated: faster; decode stays isolated
                },
            }
        )
    )
    log_path = tmp_path / "submit.log"
    with log_path.open("w") as log:
        job = subprocess.Popen(
            submit_command(cluster, config), env=cluster.env, stdout=log, stderr=subprocess.STDOUT
        )

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-8000:]

    def say(message: str) -> None:
        print(f"{time.monotonic() - t0:6.1f}s {message}", flush=True)

    def kill(what: str, probe: Callable[[], Any], timeout: float) -> Fault:
        """SIGKILL the process `probe` finds, if it is still doing that (same title) an
        instant later; otherwise look again."""
        while True:
            node, pid, started, title = wait(what, probe, job, timeout)
            fault = Fault(what, pid, started, title, node, committed_chunks(output))
            fault.children = children_of(pid)
            if alive(pid, started) and cmdline(pid) == title:
                os.kill(pid, signal.SIGKILL)
                break
        say(f"{what}: SIGKILL {pid} {title!r} on {node}, {fault.chunks_before} chunks committed")
        return fault

    def running(predicate: Callable[[str, int, str], bool]) -> Callable[[], Any]:
        return lambda: next(
            (p for p in ray_processes(cluster) if predicate(p[0], p[1], p[3])), None
        )

    try:
        # 1. A decode worker while it decodes: titled as running a DecodeStage batch, with its
        # isolation child (vidbatch.media.isolation) started.
        decoding = running(lambda node, pid, title: title == DECODE and bool(children_of(pid)))
        decoder = kill("a decode worker running a batch", decoding, 240)

        # 2. A worker node while it decodes or infers: every process of it at once, as a lost
        # machine (its raylet, workers, and object store with their decoded blocks).
        working = (DECODE, BUSY_ACTOR)
        on_worker = running(lambda node, pid, title: node != "head" and title in working)
        while True:
            node, pid, started, _ = wait("a busy worker on a worker node", on_worker, job, 120)
            lost = Fault(f"node {node}", 0, "", node, node, committed_chunks(output))
            hosted = [t for n, _, _, t in ray_processes(cluster) if n == node]
            if alive(pid, started) and cmdline(pid) in working:  # still at it
                killed = cluster.kill_node(node)
                break
        hosted = [t for t in hosted if t.startswith("ray::")]
        say(f"node {node}: SIGKILL {len(killed)} processes, hosting {hosted}")

        # 3. The inference actor while it infers a batch, once it has committed work.
        def busy_actor():
            if committed_chunks(output) < 1:
                return None
            return next((p for p in ray_processes(cluster) if p[3] == BUSY_ACTOR), None)

        actor = kill("the inference actor running a batch", busy_actor, 180)
        assert job.poll() is None, "the job ended before the last fault"

        cluster.wait_for("the lost node to be dead", lambda: cluster.alive_nodes() == 2, 90)
        say("cluster down to 2 alive nodes")
        rc = job.wait(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    say(f"job ended, rc {rc}")
    print(log_tail()[-3000:], flush=True)

    # The faults hit the right processes, mid-run, and they died: with the decode worker its
    # isolation child, with the node every process of it.
    assert decoder.title == DECODE and actor.title == BUSY_ACTOR
    assert actor.chunks_before >= 1, "the actor was killed before it committed work"
    for fault in (decoder, lost, actor):
        assert fault.chunks_before < CHUNKS, f"{fault.what} was killed after the last commit"
    gone = {(f.pid, f.started) for f in (actor, decoder)}
    gone |= set(decoder.children.items()) | set(killed.items())
    deadline = time.monotonic() + 15
    while (left := {p for p in gone if alive(*p)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"still alive: {[(pid, cmdline(pid)) for pid, _ in left]}"
    assert cluster.alive_nodes() == 2

    # Ray's own view: the task attempts each fault killed failed, and were retried until they
    # finished; the actor was restarted once per death (the SIGKILL, and the node's if it was
    # there).
    for what, pids in (
        (decoder.what, {decoder.pid}),
        (lost.what, set(killed)),
        (actor.what, {actor.pid}),
    ):
        failed, finished = retries(cluster, pids)
        causes = [(a["name"], a["error_type"]) for a in failed]
        say(f"{what}: failed attempts {causes}, {len(finished)} retried and finished")
        assert failed and len(finished) >= len({f["task_id"] for f in failed}), (what, failed)
    actors = cluster.api("/api/v0/actors?limit=1000&detail=1")["data"]["result"]["result"]
    (inference,) = [a for a in actors if a.get("class_name", "") == INFERENCE[5:]]
    deaths = 1 + any(t.startswith(INFERENCE) for t in hosted)
    assert int(inference["num_restarts"]) >= deaths, inference

    # The job: success, and every expected row exactly once.
    assert rc == 0 and "succeeded" in log_tail(), log_tail()
    (record,) = read(output, "runs")
    assert record["status"] == "ok"
    assert record["ok"] == VIDEOS and record["failed"] == 0
    videos = read(output, "videos")
    assert Counter(Path(v["uri"]).name for v in videos) == Counter(expected.keys())
    assert {v["status"] for v in videos} == {"ok"}
    assert {v["run_id"] for v in videos} == {record["run_id"]}
    clips = read(output, "clips")
    keys = Counter((c["video_id"], c["model"], c["clip_start_s"]) for c in clips)
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1]
    names = {v["video_id"]: Path(v["uri"]).name for v in videos}
    assert Counter(names[c["video_id"]] for c in clips) == Counter(expected)
    assert record["clips"] == sum(expected.values())
