"""Crash and hang isolation: a native crash or a hang costs one call, never the worker.

The crash is a real native abort in the child (os.abort raises SIGABRT from C); the hang is a
real one too: opening a FIFO that nobody writes blocks in the kernel, as a stalled network
mount or a decoder stuck in a loop would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vidbatch.errors import StageError
from vidbatch.job.stages import UNIT, DecodeStage
from vidbatch.media.decode import probe
from vidbatch.media.isolation import Sandbox, SandboxError, SandboxPool, run_isolated
from vidbatch.specs import ClipSpec

CLIP = ClipSpec(4, 4.0, 32)


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(timeout_s=3.0)
    yield box
    box.close()


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "stuck.mp4"
    os.mkfifo(path)
    return str(path)


def test_calls_return_values_and_python_errors(sandbox):
    assert sandbox.call(sum, [1, 2, 3]) == 6
    with pytest.raises(StageError) as info:  # pickled back with its stage and message
        sandbox.call(probe, "/nonexistent/video.mp4")
    assert info.value.stage == "probe" and "/nonexistent/video.mp4" in str(info.value)


def test_native_crash_is_reported_and_the_next_call_gets_a_fresh_child(sandbox):
    with pytest.raises(SandboxError, match=r"crashed \(SIGABRT\)") as info:
        sandbox.call(os.abort)
    assert info.value.kind == "crash"
    assert sandbox.call(os.getpid) != os.getpid()


def test_hang_is_cut_at_the_deadline(sandbox):
    began = time.monotonic()
    with pytest.raises(SandboxError, match=r"timed out after 3 s") as info:
        sandbox.call(time.sleep, 60)
    assert info.value.kind == "timeout"
    assert time.monotonic() - began < 20
    assert sandbox.call(abs, -2) == 2


def test_a_driver_script_without_main_guard_is_not_run_again(tmp_path):
    """The child is a fresh interpreter, not multiprocessing's spawn, which would re-run the
    script that started it (a user's `python my_job.py` would start a second job)."""
    script, log = tmp_path / "job.py", tmp_path / "runs.txt"
    script.write_text(
        "from vidbatch.media.isolation import Sandbox\n"
        f"open({str(log)!r}, 'a').write('ran\\n')\n"
        "box = Sandbox(30)\n"
        "assert box.call(abs, -3) == 3\n"
        "box.close()\n"
    )
    repo = str(Path(__file__).resolve().parents[3])
    subprocess.run([sys.executable, str(script)], check=True, timeout=120, cwd=repo)
    assert log.read_text() == "ran\n"


def test_twice_failing_call_becomes_a_stage_error(sandbox):
    with pytest.raises(StageError) as info:
        run_isolated(sandbox, "decode", os.abort)
    assert str(info.value) == (
        "decode: isolated decode failed twice: crashed (SIGABRT); crashed (SIGABRT)"
    )


def test_probe_of_a_stuck_file_times_out(fifo):
    with SandboxPool(2, timeout_s=1.0) as pool:
        with pytest.raises(StageError, match=r"^probe: isolated probe failed twice: timed out"):
            pool.run("probe", probe, fifo)


def test_decode_hang_inside_ray_fails_that_segment_only(ray_session, fifo, small_archive):
    """Through Ray Data, as the job runs it (one decode worker, its sandbox made in setup): the
    stuck segment gets an error row, the good one its clips, and the worker survives to
    decode it."""
    import pyarrow as pa
    import ray.data

    from vidbatch.job.ray import apply_stage

    good = small_archive.uris[0]
    duration = probe(good).duration_s

    def unit(video_id: str, source: str, seconds: float) -> dict:
        return {
            "video_id": video_id,
            "uri": source,
            "source": source,
            "chunk": 0,
            "segment_index": 0,
            "segment_count": 1,
            "start_s": 0.0,
            "end_s": seconds,
            "duration_s": seconds,
            "fps": 25.0,
            "error": "",
        }

    units = pa.Table.from_pylist(
        [unit("stuck", str(fifo), 4.0), unit("good", good, duration)], schema=UNIT
    )
    stage = DecodeStage((CLIP,), timeout_s=2.0)
    ds = apply_stage(ray.data.from_arrow(units), stage, actors=1)
    rows = {r["video_id"]: r for r in ds.take_all()}
    assert rows["stuck"]["error"].startswith("decode: isolated decode failed twice: timed out")
    assert rows["good"]["error"] == ""
    assert rows["good"]["frames_used"] > 0
