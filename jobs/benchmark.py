"""vidbatch benchmarks: ratios measured side by side in one run, on files this program makes.

    python jobs/benchmark.py                 # every section, full size (about 25 min on 2 cores)
    python jobs/benchmark.py --quick         # smoke run on small files (once media are cached)
    python jobs/benchmark.py --only decode --only memory
    python jobs/benchmark.py --only realistic  # issue 14: real-looking archive, side by side
    python jobs/benchmark.py --only realistic-decode   # or -e2e: one half of it
    python jobs/benchmark.py --only index    # issue 12: planning after 1 and N nights, commits
    python jobs/benchmark.py --only scale    # issue 13: 1k/4k/16k videos, per-video overhead
                                             # (these two: only when named; hours in full)

Media are generated with PyAV into --cache (default .bench-cache/, git-ignored by its own
.gitignore). No figure is hard-coded: every ratio comes from numbers measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from subprocess import PIPE
from typing import Any

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_media as media  # noqa: E402
import bench_realistic  # noqa: E402

from vidbatch.config import Resources  # noqa: E402
from vidbatch.job.plan import clip_starts, frame_times, in_segment, plan_segments  # noqa: E402
from vidbatch.media.decode import decode_samples, probe  # noqa: E402
from vidbatch.media.isolation import worker_sandbox  # noqa: E402
from vidbatch.specs import ClipSpec, FrameSpec  # noqa: E402

CLIP, FRAMES = ClipSpec(16, 8.0, 112), FrameSpec(1.0, 320)


@dataclass(frozen=True)
class Scale:
    seconds: float  # each decode / read_videos / inference file
    width: int
    height: int
    files: int  # read_videos files
    long_seconds: float
    segment_seconds: float
    memory_seconds: tuple[float, float]  # (long, short) videos at 320x240
    amp_seconds: float
    rounds: int  # decode timings: median of N interleaved rounds
    predict_clips: int
    variants: bool  # secondary comparisons and warm-ups (each a Ray Data job: seconds)
    hang_s: float  # a decode that has not ended by then (it takes < 1 s) is called a hang


FULL = Scale(60, 1280, 720, 4, 1200, 120, (3600, 60), 60, 5, 64, True, 30)
QUICK = Scale(6, 640, 360, 2, 36, 12, (48, 12), 12, 1, 16, False, 8)


@dataclass
class Row:
    name: str
    value: str
    target: str = "-"
    result: str = "info"


ROWS: list[Row] = []


def say(text: str = "") -> None:
    print(text, flush=True)


def record(name: str, value: float | None, fmt: str = "{:.2f}", op: str = "", limit: float = 0):
    """Print a figure and keep it for the summary; with `op` and `limit` it is a target."""
    shown = "error" if value is None else fmt.format(value)
    say(f"  -> {name}: {shown}")
    if not op:
        ROWS.append(Row(name, shown))
        return
    ok = value is not None and (value >= limit if op == ">=" else value <= limit)
    ROWS.append(Row(name, shown, f"{op} {limit:g}", "PASS" if ok else "FAIL"))


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    cpu = models[0] if models else platform.processor()
    return f"nproc {len(os.sched_getaffinity(0))}, CPU {cpu}, load average {loadavg()} (1/5/15 min)"


# ---------------------------------------------------------------- vidbatch side helpers


def work_units(path: Path, segment_seconds: float, clips: tuple[ClipSpec, ...]) -> list[dict]:
    """The rows the job plans for one video (probe + plan_segments), as DecodeStage takes them."""
    duration = probe(str(path)).duration_s
    segs = plan_segments(duration, segment_seconds, clips)
    return [
        {
            "video_id": path.stem,
            "source": str(path),
            "segment_index": s.index,
            "segment_count": len(segs),
            "start_s": s.start_s,
            "end_s": s.end_s,
            "duration_s": duration,
            "error": "",
        }
        for s in segs
    ]


def two_files(root: Path, sc: Scale) -> list[Path]:
    """The decode and inference sections' files: keyframe every 2 s."""
    return [
        media.get_video(root, sc.seconds, sc.width, sc.height, keyint=60, seed=s) for s in (0, 1)
    ]


def run_stage(rows: list[dict], clips: tuple[ClipSpec, ...], frames: FrameSpec | None, mode: str):
    """(frames decoded, frames used, seconds) of vidbatch's DecodeStage over work units."""
    from vidbatch.job.stages import DecodeStage

    # Isolated, as the job decodes (a child process per worker, made in setup).
    stage = DecodeStage(clips, frames, mode=mode, timeout_s=Resources().decode_timeout_s)
    stage.setup()
    decoded, used = 0, 0
    start = time.perf_counter()
    try:
        for row in rows:
            out = stage.decode(row)
            if out["error"]:
                raise RuntimeError(out["error"])
            decoded, used = decoded + out["frames_decoded"], used + out["frames_used"]
            del out  # hand the output on, as Ray would: not kept while the next unit decodes
    finally:
        stage.teardown()
    return decoded, used, time.perf_counter() - start


def job(source: str, models: list[dict], mode: str = "seek", segment: float = 120, **res: Any):
    """run_job on a config built from plain data, like `vidbatch run`; returns the summary."""
    from vidbatch.config import config_from_dict
    from vidbatch.job.run import run_job

    sampling = {"clips": asdict(CLIP), "frames": asdict(FRAMES), "decode_mode": mode}
    with tempfile.TemporaryDirectory() as out:
        data = {"source": {"uri": source}, "output": {"uri": out}, "models": models}
        sampling["segment_seconds"] = segment
        data.update(sampling=sampling, resources=res, incremental=False)
        summary = run_job(config_from_dict(data), log=lambda _line: None)
    if summary.failed:
        raise RuntimeError(f"{summary.failed} videos failed: {summary.failures}")
    return summary


def spawn(task: dict) -> subprocess.Popen:
    """Start `task` (see `_worker`) in a fresh interpreter, in its own process group.

    Through `sh`: Linux carries a parent's RSS high-water mark into ru_maxrss across fork+exec,
    so a child forked straight from this (big) process would report our peak, not its own.
    """
    cmd = ["/bin/sh", "-c", '"$0" "$1" --worker "$2"; exit $?', sys.executable, __file__]
    return subprocess.Popen(
        [*cmd, json.dumps(task)], stdout=PIPE, stderr=PIPE, start_new_session=True
    )


def collect(proc: subprocess.Popen, timeout: float) -> dict | None:
    """The worker's result; None (and the worker killed) when it ran past `timeout`."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the shell and the interpreter under it
        proc.communicate()
        return None
    lines = out.decode().strip().splitlines()
    return json.loads(lines[-1]) if lines else {"error": err.decode()[-300:]}


def worker(task: dict, timeout: float) -> dict | None:
    return collect(spawn(task), timeout)


def _worker(task: dict) -> None:
    start, result = time.perf_counter(), {}
    try:
        if task["kind"] == "memory":
            rows = work_units(Path(task["path"]), task["segment_seconds"], (CLIP,))
            result = {"segments": len(rows), "decoded": run_stage(rows, (CLIP,), FRAMES, "seek")[0]}
            worker_sandbox(Resources().decode_timeout_s).close()  # reaped: its peak is counted
        elif task["kind"] == "decode":  # single-threaded decode of the first N frames
            with av.open(task["path"]) as container:
                stream = container.streams.video[0]
                stream.thread_count = 1
                frames = zip(range(task["frames"]), container.decode(stream), strict=False)
                result = {"decoded": sum(1 for _ in frames)}
        else:  # one decode_samples call at 1 fps over the whole file
            times = frame_times(probe(task["path"]).duration_s, FRAMES)
            out = decode_samples(
                task["path"], frame_spec=FRAMES, frame_times=times, mode=task["mode"]
            )
            result = {"decoded": out.frames_decoded}
    except Exception as exc:
        result = {"error": str(exc)}
    status = Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the decode child
    result.update(
        rss_mb=rss, child_mb=child, hwm_mb=int(status) / 1024, seconds=time.perf_counter() - start
    )
    print(json.dumps(result))


# ---------------------------------------------------------------- sections


def section_decode(root: Path, sc: Scale) -> None:
    files = two_files(root, sc)
    rows = [r for f in files for r in work_units(f, 120, (CLIP,))]
    say(
        f"{len(files)} x {sc.seconds:g}s {sc.width}x{sc.height} H.264 (keyframe every 2s), "
        f"{len(rows)} work units; clips {CLIP.frames}@{CLIP.fps:g}fps {CLIP.size}px + frames "
        f"{FRAMES.fps:g}fps {FRAMES.size}px; thread_type AUTO; {sc.rounds} interleaved rounds"
    )
    runs: dict[str, Callable[[], list[tuple[int, int, float]]]] = {
        "bare PyAV": lambda: [media.bare_decode(f, CLIP, FRAMES) for f in files],
        "vidbatch all": lambda: [run_stage(rows, (CLIP,), FRAMES, "all")],
        "vidbatch seek": lambda: [run_stage(rows, (CLIP,), FRAMES, "seek")],
    }
    # Both sides produce the same samples; the ratio is of seconds for that work. (Before
    # issue 14 it was of decoded frames/s: `seek` now decodes fewer frames for the same work.)
    ratios: dict[str, list[float]] = {"vidbatch all": [], "vidbatch seek": []}
    for r in range(sc.rounds):  # a ratio per round: neighbours in time share the machine's load
        secs: dict[str, float] = {}
        for name in [*runs][r % 3 :] + [*runs][: r % 3]:  # each variant goes first in turn
            parts = runs[name]()
            decoded, used, secs[name] = (sum(part[k] for part in parts) for k in range(3))
            say(
                f"  {name:14s} {decoded} decoded, {used} used in {secs[name]:.2f}s: "
                f"{decoded / secs[name]:6.1f} decoded frames/s"
            )
        for name, values in ratios.items():
            values.append(secs["bare PyAV"] / secs[name])
            say(f"  bare PyAV s / {name} s this round: {values[-1]:.3f}")
    for name, values in ratios.items():
        ratio = float(np.median(values))
        record(f"decode: bare PyAV s / {name} s, same samples (median)", ratio, "{:.3f}", ">=", 0.9)


def section_amplification(root: Path, sc: Scale) -> None:
    for keyint in (30, 60):
        rows = work_units(media.get_video(root, sc.amp_seconds, 640, 360, keyint=keyint), 120, ())
        for mode in ("all", "seek", "keyframes"):
            target = ("{:.2f}", "<=", 1.5) if mode == "keyframes" else ()
            try:
                decoded, used, secs = run_stage(rows, (), FRAMES, mode)
                say(f"  {decoded} frames decoded, {used} used in {secs:.2f}s")
            except RuntimeError as exc:
                say(f"  ERROR {exc}")
                decoded, used = None, 1
            name = f"amplification: 1fps frames, GOP {keyint // 30}s, {mode}"
            record(name, None if decoded is None else decoded / used, *target)
    rows = work_units(media.get_video(root, sc.amp_seconds, 640, 360, keyint=30), 120, (CLIP,))
    for mode in ("all", "seek"):
        decoded, used, _ = run_stage(rows, (CLIP,), None, mode)
        record(f"amplification: {CLIP.fps:g}fps clips, GOP 1s, {mode}", decoded / used)
    # Keyframes only at 0, 0.5 and 10 s (a scene cut just after the start), 1 fps detector.
    odd = media.make_irregular(root / "irregular-gop.mp4", seconds=20, keys=(0, 0.5, 10))
    for mode in ("seek", "keyframes"):
        res = worker({"kind": "samples", "path": str(odd), "mode": mode}, sc.hang_s)
        if res is None:
            text = f"no end in {sc.hang_s:g}s"
        else:
            text = res["error"][:30] if "error" in res else f"{res['seconds']:.2f}s"
        say(f"  irregular GOP (keyframes at 0, 0.5, 10 s of 20 s), 1fps {mode}: {text}")
        ok = res is not None and "error" not in res
        result = "PASS" if ok else "FAIL"
        ROWS.append(Row(f"amplification: irregular GOP, {mode}", text, "ends ok", result))


def section_read_videos(root: Path, sc: Scale) -> None:
    import ray.data

    from vidbatch.job.stages import DecodeStage

    files = [
        media.get_video(root, sc.seconds, sc.width, sc.height, keyint=30, seed=10 + i)
        for i in range(sc.files)
    ]
    (model, weights, registered), fps = media.detector(), probe(str(files[0])).fps
    media.ray_start()
    say(
        f"{len(files)} x {sc.seconds:g}s {sc.width}x{sc.height} (keyframe every 1s); model {model}"
        f"{' (random weights, seed 0)' if weights or not registered else ''}; 2 actors each side"
    )
    actor: dict[str, Any] = {"compute": ray.data.ActorPoolStrategy(size=2)}
    actor["fn_constructor_kwargs"] = {"model": model, "weights": weights, "source_fps": fps}

    def write(ds: Any) -> int:
        with tempfile.TemporaryDirectory(prefix="bench-rv-") as out:
            ds.write_parquet(out)
            return ray.data.read_parquet(out).count()

    def baseline(read_fps: int | None) -> int:
        ds = ray.data.read_videos([str(f) for f in files], include_paths=True, fps=read_fps)
        sampling = {"stride": round(fps / FRAMES.fps), "size": FRAMES.size}
        ds = ds.map_batches(media.keep_and_resize, batch_size=32, fn_kwargs=sampling)
        # num_cpus=0: the read tasks (which decode) keep both cores, as vidbatch's fused actors do.
        return write(ds.map_batches(media.DetectActor, batch_size=16, num_cpus=0, **actor))

    def vidbatch(mode: str) -> int:
        if registered:  # the real job end to end
            models = [{"name": model, "weights": weights}]
            return job(media.manifest(root, "rv", files), models, mode, actors=2).frames_used
        rows = [r for f in files for r in work_units(f, 120, ())]  # plan_run's units
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map(DecodeStage(frame_spec=FRAMES, mode=mode).decode, num_cpus=1)
        return write(ds.map_batches(media.DetectActor, batch_size=4, num_cpus=1, **actor))

    if not registered:
        say("  no detector registered: vidbatch side = job's units -> DecodeStage -> 2 actors")
    runs: dict[str, Callable[[], int]] = {
        "read_videos + filter": lambda: baseline(None),
        "read_videos(fps=1)": lambda: baseline(1),
        "vidbatch keyframes": lambda: vidbatch("keyframes"),
        "vidbatch seek": lambda: vidbatch("seek"),
    }
    if not sc.variants:
        runs = {
            k: v for k, v in runs.items() if k in ("read_videos + filter", "vidbatch keyframes")
        }
    wall: dict[str, float] = {}
    for name, fn in runs.items():
        start = time.perf_counter()
        count = fn()
        wall[name] = time.perf_counter() - start
        say(f"  {name:22s} {wall[name]:7.1f}s  ({count} frames through the model)")
    stage = media.DetectActor(model, weights, fps)  # the floor both sides share: the model alone
    height = round(sc.height * FRAMES.size / max(sc.width, sc.height))
    batch = {
        "frame": np.zeros((32, height, FRAMES.size, 3), np.uint8),
        "frame_index": np.arange(32),
    }
    stage({**batch, "path": np.array(["x"] * 32)})  # warm-up
    start = time.perf_counter()
    stage({**batch, "path": np.array(["x"] * 32)})
    floor = count * (time.perf_counter() - start) / 32
    say(f"  the model alone, in this process (2 threads): {floor:.1f}s for {count} frames")
    for base in [k for k in wall if k.startswith("read_videos")]:
        for mode in [k.split()[1] for k in wall if k.startswith("vidbatch")]:
            target = (">=", 5) if mode == "keyframes" else ()
            name = f"read_videos: {base} / vidbatch {mode}"
            record(name, wall[base] / wall[f"vidbatch {mode}"], "{:.2f}x", *target)


def section_long(root: Path, sc: Scale) -> None:
    path = media.get_video(root, sc.long_seconds, sc.width, sc.height, keyint=60)
    weights, note = media.classifier_weights("motion-cnn", root, CLIP)
    models = [{"name": "motion-cnn", "weights": weights}]
    media.ray_start()
    say(
        f"1 x {sc.long_seconds:g}s {sc.width}x{sc.height} (keyframe every 2s), segments "
        f"{sc.segment_seconds:g}s, motion-cnn ({note} weights), decode_mode seek, batch 8"
    )
    if sc.variants:  # warm-up, not timed: the first job in a Ray session pays one-off costs
        job(str(media.get_video(root, 6, 640, 360, keyint=60)), models, actors=1)
    task = {"kind": "decode", "path": str(path), "frames": 900}

    def decode_rate(n: int) -> float:  # frames/s of n concurrent single-thread decode processes
        procs = [spawn(task) for _ in range(n)]
        return sum(r["decoded"] / r["seconds"] for r in (collect(p, 600) for p in procs) if r)

    capacity = decode_rate(2) / decode_rate(1)
    say("  2 concurrent single-thread decode processes vs 1: the most 2 actors can gain here, now")
    record("long: machine capacity, 2 vs 1 concurrent decode processes", capacity, "{:.2f}x")
    wall = {}
    for actors in (1, 2):
        s = job(str(path), models, segment=sc.segment_seconds, actors=actors, batch_size=8)
        wall[actors] = s.wall_s
        say(
            f"  actors {actors}: {s.wall_s:6.1f}s  {s.segments} segments, {s.clips} clips, "
            f"{s.frames_decoded} frames decoded, {s.video_seconds / s.wall_s:.1f}x realtime"
        )
    record("long: run_job actors 2 vs 1 speed-up", wall[1] / wall[2], "{:.2f}x", ">=", 1.8)
    duration = probe(str(path)).duration_s
    segs = plan_segments(duration, sc.segment_seconds, (CLIP,))
    seg = segs[len(segs) // 2]
    starts = in_segment(clip_starts(duration, CLIP), seg, last=False)
    with media.s3_counting(path) as (uri, options, fetched):
        decode_samples(uri, clips={CLIP: starts}, storage_options=options)
    size, got = path.stat().st_size, sum(fetched)
    say(
        f"  S3 (moto), segment {seg.index} of {len(segs)} [{seg.start_s:g}, {seg.end_s:g})s: "
        f"{got / 1e6:.1f} MB in {len(fetched)} ranged GETs of a {size / 1e6:.1f} MB file = "
        f"{got / size:.3f} of it (the segment is {(seg.end_s - seg.start_s) / duration:.3f})"
    )
    record("long: S3 bytes fetched for 1 middle segment / file", got / size, "{:.3f}")


def section_memory(root: Path, sc: Scale) -> None:
    """Peak RSS of a decode worker (the worker process + its isolated decode child) over a long
    and a short video. Like for like where every segment is full-length in both videos (the
    segment no longer than the short video); the longer segment is shown for information."""
    long_s, short_s = sc.memory_seconds
    for segment in (sc.segment_seconds, sc.segment_seconds / 2):
        rss = {}
        for seconds in (long_s, short_s):
            path = media.get_video(root, seconds, 320, 240, keyint=60)
            res = worker({"kind": "memory", "path": str(path), "segment_seconds": segment}, 3600)
            if res is None or "error" in res:
                raise RuntimeError(f"memory worker failed: {res}")
            rss[seconds] = res["rss_mb"] + res["child_mb"]
            say(
                f"  {seconds:5g}s 320x240, {res['segments']:3d} x {segment:g}s segments: peak RSS "
                f"worker {res['rss_mb']:6.1f} MB + decode child {res['child_mb']:6.1f} MB, "
                f"{res['decoded']} frames decoded in {res['seconds']:.1f}s"
            )
        name = f"memory: peak RSS {long_s / 60:g} / {short_s / 60:g} min, {segment:g}s segments"
        target = ("<=", 1.1) if segment <= short_s else ()
        record(name, rss[long_s] / rss[short_s], "{:.3f}", *target)


def section_inference(root: Path, sc: Scale) -> None:
    import torch

    from vidbatch.models import load_model

    say(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads")
    rate: dict[tuple[str, int], float] = {}
    for name in ("motion-cnn", "motion-rnn", "motion-transformer"):
        weights, note = media.classifier_weights(name, root, CLIP)
        model, n = load_model(name, weights, device="cpu"), sc.predict_clips
        c = model.clip  # the checkpoint's own clip spec
        clips = np.random.default_rng(0).integers(
            0, 256, (n, c.frames, c.size, c.size, 3), np.uint8
        )
        for batch in (8, 32):
            model.batch_size = batch
            model.predict(clips[:batch])  # warm-up
            start = time.perf_counter()
            model.predict(clips)
            rate[name, batch] = n / (time.perf_counter() - start)
            label = f"inference: {name} ({note}, {c.frames}x{c.size}px) batch {batch}"
            record(label, rate[name, batch], "{:.1f} clips/s")
    files = two_files(root, sc)
    media.ray_start()
    weights, _ = media.classifier_weights("motion-cnn", root, CLIP)
    s = job(media.manifest(root, "inference", files), [{"name": "motion-cnn", "weights": weights}])
    e2e = s.clips / s.wall_s
    ratio = e2e / rate["motion-cnn", 8]
    say(
        f"  run_job motion-cnn, {len(files)} x {sc.seconds:g}s, 2 actors: {s.clips} clips in "
        f"{s.wall_s:.1f}s = {e2e:.2f} clips/s = {ratio:.3f} of the model stage alone (batch 8)"
    )
    record("inference: end-to-end / model-stage clips/s, motion-cnn", ratio, "{:.3f}")
    gpu = "not measured (CUDA present)" if torch.cuda.is_available() else "skipped: no CUDA"
    say(f"  GPU utilization: {gpu}")
    ROWS.append(Row("inference: GPU utilization", gpu))


def section_realistic(root: Path, sc: Scale) -> None:
    bench_realistic.section(root, sc, say, record)


def section_realistic_decode(root: Path, sc: Scale) -> None:
    """The realistic section without its end-to-end (Ray) part."""
    bench_realistic.section(root, sc, say, record, parts=("probe", "decode"))


def section_realistic_e2e(root: Path, sc: Scale) -> None:
    """The realistic section's end-to-end (Ray) part alone."""
    bench_realistic.section(root, sc, say, record, parts=("e2e",))


SECTIONS: dict[str, Callable[[Path, Scale], None]] = {
    "decode": section_decode,
    "amplification": section_amplification,
    "read_videos": section_read_videos,
    "long": section_long,
    "memory": section_memory,
    "inference": section_inference,
    "realistic": section_realistic,
    "realistic-decode": section_realistic_decode,
    "realistic-e2e": section_realistic_e2e,
}


def own_program(script: str, *quick: str) -> Callable[[Path, Scale], None]:
    """A section that is its own program (fresh processes, an hour or more in full): run only
    when named with --only; --quick passes it `quick`'s arguments."""

    def section(root: Path, sc: Scale) -> None:
        args = quick if sc is QUICK else ()
        command = [sys.executable, str(Path(__file__).resolve().parent / script), *args]
        if subprocess.run(command).returncode:
            ROWS.append(Row(f"{script}: ran", "exit status not 0", "runs", "FAIL"))

    return section


# Issues 12 and 13: the index after many nights, the job on 1k-16k videos.
ON_REQUEST = {
    "index": own_program(
        "bench_index.py",
        *"--videos 5000 --nights 5 --s3-videos 1000 --list-s3 1000 --reps 1".split(),
    ),
    "scale": own_program("bench_scale.py", *"--sizes 200 400 --s3-size 0 --bare-videos 50".split()),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", action="append", choices=[*SECTIONS, *ON_REQUEST], help="repeatable"
    )
    parser.add_argument("--quick", action="store_true", help="small files: a smoke run")
    parser.add_argument("--cache", default=".bench-cache", help="generated media (kept, reused)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return 0
    scale, root = (QUICK if args.quick else FULL), media.cache_dir(args.cache)
    say(f"machine: {machine()}")
    size = "quick" if args.quick else "full"
    say(f"python {platform.python_version()}, av {av.__version__}, {size} run")
    started = time.perf_counter()
    for name in args.only or list(SECTIONS):
        say(f"\n== {name} (load average {loadavg()})")
        t0 = time.perf_counter()
        try:
            {**SECTIONS, **ON_REQUEST}[name](root, scale)
        except Exception as exc:  # a broken section is a FAIL row; the others still run
            traceback.print_exc()
            ROWS.append(Row(f"{name}: section ran", f"error: {exc}"[:40], "runs", "FAIL"))
        say(f"   ({time.perf_counter() - t0:.0f}s)")
    say(f"\n== summary ({time.perf_counter() - started:.0f}s; load average now {loadavg()})")
    if not ROWS:
        return 0
    width, value = max(len(r.name) for r in ROWS), max(len(r.value) for r in ROWS)
    say(f"{'':{width}s}  {'measured':>{value}s}  {'target':>9s}  result")
    for r in ROWS:
        say(f"{r.name:{width}s}  {r.value:>{value}s}  {r.target:>9s}  {r.result}")
    return 1 if any(r.result == "FAIL" for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
