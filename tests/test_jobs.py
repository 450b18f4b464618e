"""The job as a Ray Job, for real: a two-node local cluster made with `ray start` (token auth on,
as on our clusters), the repo submitted as the working dir with `ray job submit`, and a second,
incremental submission after two videos are added to the archive.

The cluster is private to this module: own ports, own temp dirs, own token. It is stopped by
ending its `ray start --block` processes and, failing that, killing their process trees by PID:
`ray stop` would also kill the test session's own Ray and anyone else's on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.dataset as pds
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Job drivers run `python` from the PATH of the `ray start` that made the head node: start Ray
# from this interpreter's bin so the job gets the same environment as the tests.
BIN = Path(sys.executable).parent
RAY = BIN / "ray"
WEIGHTS = REPO / "vidbatch" / "assets" / "motion-cnn.safetensors"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not RAY.is_file(), reason=f"no ray CLI next to {sys.executable}"),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc"),
]


def free_ports(count: int) -> list[int]:
    """Distinct free ports (all held open at once, so no duplicates)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, start time) for every process we can see."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # the name may contain spaces
        table[int(entry)] = (int(fields[1]), int(fields[3]), fields[19])
    return table


def process_tree(roots: set[int]) -> dict[int, str]:
    """pid -> start time of the roots, their descendants, and anything left in their sessions."""
    table = proc_table()
    members = {pid for pid, (_, sid, _) in table.items() if sid in roots} | (roots & set(table))
    grew = True
    while grew:
        children = {pid for pid, (ppid, _, _) in table.items() if ppid in members} - members
        members |= children
        grew = bool(children)
    return {pid: table[pid][2] for pid in members}


@dataclass
class LocalCluster:
    dashboard: str
    gcs: str
    env: dict[str, str]
    token: str
    root: Path
    nodes: list[subprocess.Popen] = field(default_factory=list)

    def ray(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(RAY), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def api(self, path: str) -> Any:
        request = urllib.request.Request(
            self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def start_node(self, name: str, args: list[str]) -> None:
        log = self.root / f"{name}.log"
        with log.open("wb") as out:  # the child keeps its own descriptor
            node = subprocess.Popen(
                [str(RAY), "start", "--block", "--disable-usage-stats", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # its own session: found and stopped as a group
            )
        self.nodes.append(node)
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if node.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"ray start ({name}) failed:\n{log.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(0.5)

    def wait_for(self, what: str, ready: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except (OSError, urllib.error.URLError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(1)

    def alive_nodes(self) -> int:
        nodes = self.api("/api/v0/nodes?limit=100")["data"]["result"]["result"]
        return sum(1 for n in nodes if n["state"] == "ALIVE")

    def stop(self) -> None:
        # Before signalling: afterwards a reaped root's pid may already belong to someone else.
        tree = process_tree({n.pid for n in self.nodes if n.poll() is None})
        for node in self.nodes:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)  # `ray start --block` then stops its node
        deadline = time.monotonic() + 10  # it can hang after jobs ran; then we kill
        for node in self.nodes:
            try:
                node.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        table = proc_table()
        for pid, started in tree.items():  # stragglers: same pid *and* same start time
            if pid in table and table[pid][2] == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for node in self.nodes:
            if node.poll() is None:
                node.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    # Short root: Ray puts unix sockets under it, and those paths are limited to ~107 bytes.
    root = Path(tempfile.mkdtemp(prefix="vbray-", dir="/tmp" if Path("/tmp").is_dir() else None))
    token = secrets.token_hex(32)
    token_file = root / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    # One environment for every ray command: token auth on and the same token everywhere (mixed
    # settings fail with "Missing authentication token"). Inherited RAY_* settings (RAY_ADDRESS,
    # the session Ray's auth mode) must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",  # 2 shared cores: no thread oversubscription
    )
    gcs, dashboard, client, *agent_ports = free_ports(11)
    local = LocalCluster(f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}", env, token, root)
    common = ["--num-cpus=1", "--object-store-memory=400000000"]
    try:
        local.start_node(
            "head",
            [
                "--head",
                f"--port={gcs}",
                f"--dashboard-port={dashboard}",
                f"--ray-client-server-port={client}",
                "--include-dashboard=true",
                f"--temp-dir={root / 'head'}",
                *node_ports(agent_ports[:4]),
                *common,
            ],
        )
        # Its own temp dir too: nodes sharing one unpack the job's working dir into the same
        # folder, deleting it under the running driver.
        local.start_node(
            "worker",
            [
                f"--address={local.gcs}",
                f"--temp-dir={root / 'worker'}",
                *node_ports(agent_ports[4:]),
                *common,
            ],
        )
        local.wait_for("2 alive nodes", lambda: local.alive_nodes() == 2)
        yield local
    finally:
        local.stop()
        shutil.rmtree(root, ignore_errors=True)


def node_ports(ports: list[int]) -> list[str]:
    """Per-node agent ports: the defaults are fixed numbers two nodes on one machine share."""
    agent, grpc, runtime_env, metrics = ports[:4]
    return [
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
    ]


def submit(cluster: LocalCluster, config: Path) -> str:
    """`ray job submit` the index job with the repo as working dir; returns its output."""
    result = cluster.ray(
        "job",
        "submit",
        "--address",
        cluster.dashboard,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps({"excludes": [".venv", ".git"]}),  # never upload the multi-GB venv
        "--",
        "python",
        "jobs/index_archive.py",
        str(config),
        timeout=150,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "succeeded" in output, output[-6000:]
    return output


def read(output: Path, table: str) -> list[dict[str, Any]]:
    return pds.dataset(str(output / table), partitioning="hive").to_table().to_pylist()


def run_records(output: Path) -> list[dict[str, Any]]:
    records = [json.loads(p.read_text()) for p in (output / "_runs").glob("*.json")]
    return sorted(records, key=lambda r: r["started_at"])


def test_cluster_requires_the_token(cluster: LocalCluster) -> None:
    """Token auth is really on: clients without the token are turned away."""
    assert cluster.api("/api/version")["ray_version"]  # with the token: fine
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(cluster.dashboard + "/api/version", timeout=10)
    assert excinfo.value.code == 401
    denied = cluster.ray(
        "job", "list", "--address", cluster.dashboard, RAY_AUTH_MODE="disabled", timeout=30
    )
    assert denied.returncode != 0
    assert "Missing authentication token" in denied.stdout + denied.stderr


def test_submitted_job_indexes_then_reindexes_only_new_videos(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    from vidbatch.synth import synthesize

    assert WEIGHTS.is_file(), f"the shipped model is missing: {WEIGHTS}"
    made = synthesize(tmp_path / "synth", 6, seed=5, min_seconds=2.0, max_seconds=4.0)
    source, output = tmp_path / "archive", tmp_path / "index"
    source.mkdir()
    first, later = made.uris[:4], made.uris[4:]
    for uri in first:
        shutil.copy(uri, source)
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"uri": str(source)},
                "output": {"uri": str(output)},
                "models": [{"name": "motion-cnn"}],
                "incremental": True,
            }
        )
    )

    submit(cluster, config)
    videos = read(output, "videos")
    assert sorted(Path(v["uri"]).name for v in videos) == sorted(Path(u).name for u in first)
    assert {v["status"] for v in videos} == {"ok"}
    clips = read(output, "clips")
    assert {c["video_id"] for c in clips} == {v["video_id"] for v in videos}
    assert {c["model"] for c in clips} == {"motion-cnn"}
    (record,) = run_records(output)
    assert record["status"] == "ok" and record["counts"]["ok"] == 4

    for uri in later:
        shutil.copy(uri, source)
    submit(cluster, config)
    records = run_records(output)
    assert len(records) == 2
    second = records[-1]
    assert second["status"] == "ok"
    assert second["planned"] == {"new": 2, "skipped": 4}
    assert {k: second["counts"][k] for k in ("videos", "ok", "skipped", "failed")} == {
        "videos": 6,
        "ok": 2,
        "skipped": 4,
        "failed": 0,
    }
    rows = [v for v in read(output, "videos") if v["run_id"] == second["run_id"]]
    done = sorted(Path(v["uri"]).name for v in rows if v["status"] == "ok")
    assert done == sorted(Path(u).name for u in later)
    assert Counter(v["status"] for v in rows) == {"ok": 2, "skipped": 4}
    new_ids = {v["video_id"] for v in rows if v["status"] == "ok"}
    clips = read(output, "clips")
    assert {c["video_id"] for c in clips if c["run_id"] == second["run_id"]} == new_ids
    keys = Counter((c["video_id"], c["model"], c["clip_start_s"]) for c in clips)
    assert max(keys.values()) == 1, "a rerun must not duplicate clips"
