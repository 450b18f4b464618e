"""The job as a Ray Job, for real: a two-node local cluster made with `ray start` (token auth on,
as on our clusters), the repo submitted as the working dir with `ray job submit`, and a second,
incremental submission after two videos are added to the archive.

The cluster (tests/support/ray_cluster.py) is private to this module: own ports, own temp dirs, own
token, stopped without `ray stop`.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.index import read as read_index
from tests.support.ray_cluster import (
    REPO,
    LocalCluster,
    local_cluster,
    needs_ray_cli,
    submit_command,
)

WEIGHTS = REPO / "vidbatch" / "assets" / "motion-cnn.safetensors"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), *needs_ray_cli]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with local_cluster(workers=1) as local:
        yield local


def submit(cluster: LocalCluster, config: Path) -> str:
    """`ray job submit` the index job with the repo as working dir; returns its output."""
    command = submit_command(cluster, config)
    result = cluster.ray(*command[1:], timeout=150)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "succeeded" in output, output[-6000:]
    return output


def read(output: Path, table: str) -> list[dict[str, Any]]:
    return read_index(output, table)


def run_records(output: Path) -> list[dict[str, Any]]:
    return sorted(read(output, "runs"), key=lambda r: r["started_at"])


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
    from vidbatch.media.synth import synthesize

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
    assert record["status"] == "ok" and record["ok"] == 4

    for uri in later:
        shutil.copy(uri, source)
    submit(cluster, config)
    records = run_records(output)
    assert len(records) == 2
    second = records[-1]
    assert second["status"] == "ok"
    assert dict(second["planned"]) == {"new": 2, "skipped": 4}
    assert {k: second[k] for k in ("listed", "ok", "skipped", "failed")} == {
        "listed": 6,
        "ok": 2,
        "skipped": 4,
        "failed": 0,
    }
    videos = read(output, "videos")
    assert len(videos) == 6 and {v["status"] for v in videos} == {"ok"}  # one row per uri
    rows = [v for v in videos if v["run_id"] == second["run_id"]]
    done = sorted(Path(v["uri"]).name for v in rows)
    assert done == sorted(Path(u).name for u in later)
    new_ids = {v["video_id"] for v in rows}
    clips = read(output, "clips")
    assert {c["video_id"] for c in clips if c["run_id"] == second["run_id"]} == new_ids
    keys = Counter((c["video_id"], c["model"], c["clip_start_s"]) for c in clips)
    assert max(keys.values()) == 1, "a rerun must not duplicate clips"
