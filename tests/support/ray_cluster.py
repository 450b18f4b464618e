"""A private multi-node Ray cluster on this machine, made of `ray start --block` processes.

Own ports, own temp dirs, own token (token auth on, as on our clusters). Each node runs in its
own session, so its processes (raylet, workers, actors) are found by session id and a node can
be stopped, or killed outright, without touching anything else. The cluster is stopped by
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# Job drivers run `python` from the PATH of the `ray start` that made the head node: start Ray
# from this interpreter's bin so the job gets the same environment as the tests.
BIN = Path(sys.executable).parent
RAY = BIN / "ray"

needs_ray_cli = [
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


def cmdline(pid: int) -> str:
    """The process's command line as one string ("" once it is gone). Ray workers rewrite theirs
    to their title, e.g. `ray::MapWorker(MapBatches(InferenceStage))`."""
    try:
        raw = Path("/proc", str(pid), "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def alive(pid: int, started: str) -> bool:
    """Is the process with this pid *and* start time still there (and not a zombie)?"""
    try:
        stat = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] == started and fields[0] != "Z"


def kill_tree(tree: dict[int, str]) -> None:
    """SIGKILL every process of `tree` that is still the same process (pid and start time)."""
    table = proc_table()
    for pid, started in tree.items():
        if pid in table and table[pid][2] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def node_ports(ports: list[int]) -> list[str]:
    """Per-node agent ports: the defaults are fixed numbers two nodes on one machine share."""
    agent, grpc, runtime_env, metrics = ports[:4]
    return [
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
    ]


@dataclass
class LocalCluster:
    dashboard: str
    gcs: str
    env: dict[str, str]
    token: str
    root: Path
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)

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
        self.nodes[name] = node
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if node.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"ray start ({name}) failed:\n{log.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(0.5)

    def node_processes(self, name: str) -> dict[int, str]:
        """pid -> start time of every process of one node (its raylet, workers, actors...)."""
        node = self.nodes[name]
        return process_tree({node.pid}) if node.poll() is None else {}

    def kill_node(self, name: str) -> dict[int, str]:
        """Remove a node the hard way, as a lost machine: SIGKILL all of its processes at once.
        Returns what was killed."""
        tree = self.node_processes(name)
        kill_tree(tree)
        self.nodes[name].wait(timeout=10)
        return tree

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
        running = [n for n in self.nodes.values() if n.poll() is None]
        # Before signalling: afterwards a reaped root's pid may already belong to someone else.
        tree = process_tree({n.pid for n in running})
        for node in running:
            node.send_signal(signal.SIGTERM)  # `ray start --block` then stops its node
        deadline = time.monotonic() + 10  # it can hang after jobs ran; then we kill
        for node in running:
            try:
                node.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        kill_tree(tree)  # stragglers: same pid *and* same start time
        for node in running:
            if node.poll() is None:
                node.wait(timeout=10)


@contextmanager
def local_cluster(workers: int = 1, cpus: int = 1) -> Iterator[LocalCluster]:
    """A head node and `workers` worker nodes named "head", "worker1", ... with `cpus` each."""
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
    gcs, dashboard, client, *agent_ports = free_ports(3 + 4 * (1 + workers))
    local = LocalCluster(f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}", env, token, root)
    common = [f"--num-cpus={cpus}", "--object-store-memory=400000000"]
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
        for i in range(1, workers + 1):
            # Its own temp dir too: nodes sharing one unpack the job's working dir into the
            # same folder, deleting it under the running driver.
            local.start_node(
                f"worker{i}",
                [
                    f"--address={local.gcs}",
                    f"--temp-dir={root / f'worker{i}'}",
                    *node_ports(agent_ports[4 * i : 4 * i + 4]),
                    *common,
                ],
            )
        local.wait_for(f"{1 + workers} alive nodes", lambda: local.alive_nodes() == 1 + workers)
        yield local
    finally:
        local.stop()
        shutil.rmtree(root, ignore_errors=True)


def submit_command(cluster: LocalCluster, config: Path, *extra: str) -> list[str]:
    """`ray job submit` of the index job with the repo as working dir (without the venv)."""
    return [
        str(RAY),
        "job",
        "submit",
        "--address",
        cluster.dashboard,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps({"excludes": [".venv", ".git"]}),  # never upload the multi-GB venv
        *extra,
        "--",
        "python",
        "jobs/index_archive.py",
        str(config),
    ]
