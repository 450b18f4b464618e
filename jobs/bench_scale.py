"""Scale benchmark (issue 13): what the job costs per video beyond decoding and inference, how
the driver's memory grows with the archive, and how soon the first chunk is committed.

    python jobs/bench_scale.py                              # 1k, 4k, 16k local + 1k on moto S3
    python jobs/bench_scale.py --sizes 200 800 --s3-size 200 --bare-videos 100   # quick

Archives of small videos (copies of one 2-second clip, each its own file or S3 object) are
indexed by the real job (`vidbatch.run`, local Ray, the job's default resources), each run in a
fresh process. The model is `bench_scale:tiny_classifier` (a `module:factory` model defined
below): it takes the shipped motion-* models' input (16 frames at 8 fps, 64 px), so decoding is
the real work, but costs next to nothing itself, so the job's overhead is not lost in model time
(on this 2-core machine motion-cnn takes 60-400 ms per clip depending on load). `--model
motion-cnn` runs the shipped model instead.

Per run: wall time; the CPU time of the driver and every process under it (Ray's GCS, raylet,
workers, decode sandboxes; the driver is their subreaper and reaps them all after
`ray.shutdown()`, so processes Ray kills are counted too); the driver's own peak RSS (VmHWM of the driver process alone, and
the peak of its private part, RssAnon, sampled every 0.1 s: VmHWM also counts object-store pages
the driver maps); the time from the start of `vidbatch.run` until
`videos/_delta_log/00000000000000000001.json` exists (the first chunk's commit; version 0 is the
empty table); and, by wrapping the job's driver-side functions in that process, when work-unit
results reach the driver and how long the driver spends on them and on each commit.

The reference is a bare single-process loop doing the same work on the same files: probe,
decode the clip (vidbatch.media), run the model (load_model(...).predict), nothing else. From
these, per video (the marginal figures are slopes over the sizes, so start-up is apart):
- wall overhead = the job's marginal wall per video - the bare loop's wall per video / the job's
  worker count (the bare work spread perfectly over the job's workers);
- CPU overhead = the job's marginal CPU per video - the bare loop's CPU per video (core-ms: what
  the machinery costs on a cluster that is kept busy).
Then a breakdown of where overhead goes, each measured here: a Ray Data pipeline of the job's
shape with no-op stages (Ray's per-block cost), the decode sandbox's round trip, the Arrow
join that decides, and the per-chunk commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_common import Moto, status_kb  # noqa: E402

MODEL = "bench_scale:tiny_classifier"
FIRST_COMMIT = "videos/_delta_log/00000000000000000001.json"
TICKS = os.sysconf("SC_CLK_TCK")


def say(text: str = "") -> None:
    print(text, flush=True)


class MeanLevel(nn.Module):
    """A stand-in classifier: the clip's mean level, two logits. Next to no compute."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:  # (B, T, 3, H, W), normalized
        level = clips.mean(dim=(1, 2, 3, 4))
        return torch.stack([-level, level], dim=1) * self.scale


def tiny_classifier() -> tuple[nn.Module, dict]:
    return MeanLevel(), dict(tiny_classifier.metadata)


# The shipped motion-* models' input; declared here so the driver never builds the module.
tiny_classifier.metadata = {
    "labels": ["dark", "bright"],
    "clip": {"frames": 16, "fps": 8.0, "size": 64},
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "version": "bench-1",
}


# -- media -----------------------------------------------------------------------------------


def make_clip(path: Path, seconds: float = 2.0, fps: int = 16, size: tuple = (128, 96)) -> None:
    """One short H.264 clip: a bright square moving left over a gradient."""
    import av

    width, height = size
    frames = round(seconds * fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(fps), "preset": "veryfast"}
        base = np.tile(np.linspace(0, 120, width, dtype=np.uint8), (height, 1))
        for i in range(frames):
            image = np.stack([base, base, base], axis=-1).copy()
            x = int((width - 24) * (1 - i / max(1, frames - 1)))
            image[height // 2 - 12 : height // 2 + 12, x : x + 24] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_archive(clip: Path, folder: Path, count: int) -> Path:
    """`count` copies of the clip, each a file of its own."""
    videos = folder / "videos"
    if videos.is_dir() and len(list(videos.iterdir())) == count:
        return videos
    shutil.rmtree(videos, ignore_errors=True)
    videos.mkdir(parents=True)
    data = clip.read_bytes()
    for i in range(count):
        (videos / f"v{i:06d}.mp4").write_bytes(data)
    return videos


# -- measuring processes ---------------------------------------------------------------------


def become_subreaper() -> None:
    """Orphans of this process tree (a decode sandbox whose worker Ray killed) are re-parented
    here instead of to init, so their CPU time is collected when they are reaped."""
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_all(timeout_s: float = 60.0) -> None:
    """Wait for every process left in the tree (after ray.shutdown()) and reap it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.1)


def tree_cpu_s() -> float:
    """CPU seconds (user + system) of this process and every descendant it reaped."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def job_child(spec: dict[str, Any]) -> None:
    """A fresh driver process: the real job, timed; its own peak RSS; the tree's CPU time."""
    import ray

    import vidbatch

    become_subreaper()
    peak_anon = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak_anon[0] = max(peak_anon[0], status_kb("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    timeline = _watch_driver()
    Path(spec["started_file"]).write_text(repr(time.time()))
    began = time.perf_counter()
    timeline["t0"] = began
    summary = vidbatch.run(spec["config"])
    wall = time.perf_counter() - began
    done.set()
    sampler.join()
    driver_peak_kb = status_kb("VmHWM")
    anon_peak_kb = max(peak_anon[0], status_kb("RssAnon"))
    ray.shutdown()
    reap_all()
    cpu = tree_cpu_s()
    results, commits = timeline["results"], timeline["commits"]
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": cpu,
                "first_result_s": results[0] if results else None,
                "last_result_s": results[-1] if results else None,
                "results": len(results),
                "commits": len(commits),
                "commit_driver_s": sum(commits),
                "add_driver_s": timeline["add_s"],
                "driver_peak_kb": driver_peak_kb,
                "driver_anon_peak_kb": anon_peak_kb,
                "ok": summary.ok,
                "failed": summary.failed,
                "clips": summary.clips,
                "stage_s": summary.stage_s,
                "cpus": summary.cpus,
            }
        )
    )


def _watch_driver() -> dict[str, Any]:
    """Timestamps of the work-unit results reaching the driver and the time the driver spends
    per result and per chunk commit, by wrapping the job's own driver-side functions (this
    process only; the job's code is unchanged). Empty when those functions are renamed."""
    import vidbatch.job.run as job

    marks: dict[str, Any] = {"t0": time.perf_counter(), "results": [], "commits": [], "add_s": 0.0}
    results, commit = getattr(job, "_results", None), getattr(job, "_commit", None)
    tracker = getattr(job, "ChunkTracker", None)
    if not (results and commit and tracker):
        return marks

    def timed_results(*args: Any, **kwargs: Any) -> Any:
        for row in results(*args, **kwargs):
            marks["results"].append(time.perf_counter() - marks["t0"])
            yield row

    def timed_commit(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return commit(*args, **kwargs)
        finally:
            marks["commits"].append(time.perf_counter() - began)

    add = tracker.add

    def timed_add(self: Any, result: Any) -> Any:
        began = time.perf_counter()
        try:
            return add(self, result)
        finally:
            marks["add_s"] += time.perf_counter() - began

    job._results, job._commit, tracker.add = timed_results, timed_commit, timed_add
    return marks


def bare_child(spec: dict[str, Any]) -> None:
    """The reference: probe, decode and model in one process, one video after another."""
    from vidbatch.job.plan import clip_starts
    from vidbatch.media.decode import decode_samples
    from vidbatch.media.probe import probe
    from vidbatch.models import load_model

    model = load_model(spec["model"])
    paths = spec["paths"]
    warm = paths[: spec["warm"]]
    for path in warm:  # first calls build kernels and caches; the job's workers warm up too
        info = probe(path)
        clip = model.clip
        sampled = decode_samples(path, clips={clip: clip_starts(info.duration_s, clip)})
        model.predict(sampled.clips[clip])
    usage0, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    clips = 0
    for path in paths:
        info = probe(path)
        clip = model.clip
        sampled = decode_samples(path, clips={clip: clip_starts(info.duration_s, clip)})
        probs = model.predict(sampled.clips[clip])
        clips += len(probs)
    wall = time.perf_counter() - began
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime - usage0.ru_utime + usage.ru_stime - usage0.ru_stime
    print(json.dumps({"videos": len(paths), "clips": clips, "wall_s": wall, "cpu_s": cpu}))


def sandbox_child(spec: dict[str, Any]) -> None:
    """The decode sandbox's round trip: probe + decode in the job's isolated child (as the
    stages call them) against the same calls in-process, per video."""
    from vidbatch.job.plan import clip_starts
    from vidbatch.media.decode import decode_samples
    from vidbatch.media.isolation import Sandbox, run_isolated
    from vidbatch.media.probe import probe
    from vidbatch.models import describe_model

    clip = describe_model(spec["model"]).clip
    paths = spec["paths"]

    def work(box: Any) -> float:
        began = time.perf_counter()
        for path in paths:
            info = run_isolated(box, "probe", probe, path, {})
            starts = clip_starts(info.duration_s, clip)
            run_isolated(box, "decode", decode_samples, path, clips={clip: starts})
        return (time.perf_counter() - began) / len(paths)

    box = Sandbox(60.0)
    try:
        work(box)  # start the child, warm both
        work(None)
        isolated, direct = [], []
        for _ in range(3):
            isolated.append(work(box))
            direct.append(work(None))
    finally:
        box.close()
    print(json.dumps({"isolated_s": min(isolated), "direct_s": min(direct)}))


def raydata_child(spec: dict[str, Any]) -> None:
    """Ray Data's own cost in the job's shape, with stages that do nothing: blocks of videos ->
    a task per block emitting work units -> repartition -> an actor pool called per unit ->
    a write task per 16 units -> rows back to the driver."""
    import pyarrow as pa
    import ray

    from vidbatch.job.ray import start_ray

    start_ray()
    count, workers = spec["videos"], spec["workers"]
    videos = pa.table(
        {
            "video_id": [f"{i:020d}" for i in range(count)],
            "uri": [f"/archive/videos/v{i:06d}.mp4" for i in range(count)],
            "chunk": np.arange(count) // 64,
        }
    )

    class Passthrough:
        def __call__(self, batch: Any) -> Any:
            return batch

    def timed() -> float:
        began = time.perf_counter()
        step = max(1, min(64, count // (4 * workers)))
        blocks = [videos.slice(i, step) for i in range(0, count, step)]
        ds = ray.data.from_arrow(blocks)
        ds = ds.map_batches(lambda b: b, batch_size=None, batch_format="pyarrow", num_cpus=1)
        ds = ds.repartition(target_num_rows_per_block=max(1, min(16, count // (8 * workers))))
        ds = ds.map_batches(
            Passthrough,
            batch_size=1,
            batch_format="numpy",
            num_cpus=0.75 / workers,
            compute=ray.data.ActorPoolStrategy(min_size=workers, max_size=workers),
        )
        ds = ds.map_batches(lambda b: b, batch_size=16, batch_format="pyarrow", num_cpus=0.25)
        rows = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows += len(batch.to_pylist())
        assert rows == count, rows
        return time.perf_counter() - began

    timed()  # warm: worker processes, imports
    best = min(timed() for _ in range(2))
    print(json.dumps({"videos": count, "wall_s": best}))


def child(mode: str, spec: dict[str, Any], watch: Callable[[], bool] | None = None) -> Any:
    """Run a mode of this file in a fresh process; with `watch`, poll it while the child runs
    and return (result, epoch when it first held)."""
    process = subprocess.Popen(
        [sys.executable, __file__, f"--{mode}-child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set() and not seen:
            try:
                if watch():
                    seen.append(time.time())
                    return
            except Exception:
                pass
            stop.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True) if watch else None
    if poller:
        poller.start()
    out, err = process.communicate()
    stop.set()
    if poller:
        poller.join()
    if process.returncode:
        raise RuntimeError(f"{mode} child failed ({process.returncode}):\n{err[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return (result, seen[0] if seen else None) if watch else result


# -- the runs --------------------------------------------------------------------------------


def job_config(source: str, output: str, options: dict[str, Any], model: str) -> dict[str, Any]:
    return {
        "source": {"uri": source, "storage_options": options},
        "output": {"uri": output, "storage_options": options},
        "models": [{"name": model}],
    }


def run_job(
    workdir: Path,
    tag: str,
    source: str,
    output: str,
    options: dict[str, Any],
    exists: Any,
    model: str,
) -> dict[str, Any]:
    started_file = workdir / f"started-{tag}"
    config = job_config(source, output, options, model)
    spec = {
        "config": config,
        "started_file": str(started_file),
    }
    result, committed_at = child("job", spec, watch=exists)
    started = float(started_file.read_text())
    result["first_commit_s"] = committed_at - started if committed_at else float("nan")
    return result


def steady(run: dict[str, Any]) -> float:
    """Wall seconds per work unit once results flow: first result to last."""
    if run.get("results", 0) < 2:
        return float("nan")
    return (run["last_result_s"] - run["first_result_s"]) / (run["results"] - 1)


def slope(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares line through the points: (slope, intercept)."""
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(b), float(a)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--s3-size", type=int, default=1000, help="0: no moto S3 run")
    parser.add_argument("--bare-videos", type=int, default=400)
    parser.add_argument("--model", default=MODEL, help=f"default {MODEL}; e.g. motion-cnn")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    for mode in ("job", "bare", "sandbox", "raydata"):
        parser.add_argument(f"--{mode}-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for mode, run in (
        ("job", job_child),
        ("bare", bare_child),
        ("sandbox", sandbox_child),
        ("raydata", raydata_child),
    ):
        if getattr(args, f"{mode}_child"):
            run(json.loads(getattr(args, f"{mode}_child")))
            return 0
    if len(args.sizes) < 2:
        parser.error("--sizes needs at least two sizes (the figures are slopes)")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vidbatch-bench-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    from vidbatch.config import Resources

    say(
        f"scale benchmark: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    say(f"command: python jobs/bench_scale.py {' '.join(sys.argv[1:])}".rstrip())
    say(
        f"model {args.model}, job defaults (resources.commit_every={Resources().commit_every}, "
        f"actors auto); workdir {workdir}"
    )
    clip = workdir / "clip.mp4"
    make_clip(clip)
    say(f"clip: {clip.stat().st_size} bytes, 2 s at 16 fps, 128x96 H.264")
    sizes = sorted(args.sizes)
    archives = {n: make_archive(clip, workdir / f"archive-{n}", n) for n in sizes}

    bare_paths = [str(p) for p in sorted(archives[sizes[0]].iterdir())[: args.bare_videos]]
    bare_spec = {"paths": bare_paths, "warm": 20, "model": args.model}
    bare = [child("bare", bare_spec)]
    say(
        f"bare loop: {bare[0]['wall_s'] / len(bare_paths) * 1000:.1f} ms wall, "
        f"{bare[0]['cpu_s'] / len(bare_paths) * 1000:.1f} ms CPU per video"
    )

    runs: dict[int, dict[str, Any]] = {}
    for n in sizes:
        tag = f"{n}"
        output = workdir / f"index-{tag}"
        shutil.rmtree(output, ignore_errors=True)
        marker = output / FIRST_COMMIT
        runs[n] = got = run_job(
            workdir, tag, str(archives[n]), str(output), {}, marker.exists, args.model
        )
        say(
            f"job {n:>6} videos: {got['wall_s']:.1f} s wall, {got['cpu_s']:.1f} s CPU, driver "
            f"peak {got['driver_peak_kb'] / 1024:.0f} MiB (private "
            f"{got['driver_anon_peak_kb'] / 1024:.0f}), first commit at "
            f"{got['first_commit_s']:.1f} s ({got['ok']} ok, {got['failed']} failed, "
            f"stages {', '.join(f'{k} {v:.1f}s' for k, v in got['stage_s'].items())})"
        )
        if got["results"] > 1:
            say(
                f"             first result at {got['first_result_s']:.1f} s, then "
                f"{steady(got) * 1000:.2f} ms per work unit; driver busy "
                f"{got['add_driver_s'] / n * 1000:.2f} ms per video on results, "
                f"{got['commit_driver_s'] / max(1, got['commits']) * 1000:.0f} ms per chunk "
                f"commit ({got['commits']} chunks)"
            )
        if got["ok"] != n:
            raise RuntimeError(f"the job indexed {got['ok']} of {n} videos")
    bare.append(child("bare", bare_spec))  # again: the machine's load drifts
    say(
        f"bare loop again: {bare[1]['wall_s'] / len(bare_paths) * 1000:.1f} ms wall, "
        f"{bare[1]['cpu_s'] / len(bare_paths) * 1000:.1f} ms CPU per video"
    )

    s3_run = None
    if args.s3_size:
        moto = Moto()
        try:
            moto.bucket("bench-scale")
            fs = moto.fs()
            data = clip.read_bytes()
            batch = {}
            for i in range(args.s3_size):
                batch[f"bench-scale/videos/v{i:06d}.mp4"] = data
                if len(batch) == 200 or i == args.s3_size - 1:
                    fs.pipe(batch)
                    batch = {}
            marker = f"bench-scale/index/{FIRST_COMMIT}"
            s3_run = run_job(
                workdir,
                "s3",
                "s3://bench-scale/videos/",
                "s3://bench-scale/index",
                moto.options,
                lambda: moto.fs().exists(marker),
                args.model,
            )
            say(
                f"job {args.s3_size:>6} videos on moto S3: {s3_run['wall_s']:.1f} s wall, "
                f"{s3_run['cpu_s']:.1f} s CPU (moto_server's not included), driver peak "
                f"{s3_run['driver_peak_kb'] / 1024:.0f} MiB, first commit at "
                f"{s3_run['first_commit_s']:.1f} s ({s3_run['ok']} ok, {s3_run['failed']} failed)"
            )
        finally:
            moto.stop()

    say("breakdown: Ray Data with no-op stages, the decode sandbox, the decide join")
    workers = int(max(1, runs[sizes[-1]]["cpus"]))
    raydata = {
        n: child("raydata", {"videos": n, "workers": workers}) for n in (sizes[0], sizes[-1])
    }
    sandbox = child("sandbox", {"paths": bare_paths[:100], "model": args.model})
    decide_ms = measure_decide(sizes[-1])

    # -- figures ------------------------------------------------------------------------------
    per_bare_wall = statistics.mean(b["wall_s"] for b in bare) / len(bare_paths)
    per_bare_cpu = statistics.mean(b["cpu_s"] for b in bare) / len(bare_paths)
    wall_slope, wall_fixed = slope(sizes, [runs[n]["wall_s"] for n in sizes])
    cpu_slope, cpu_fixed = slope(sizes, [runs[n]["cpu_s"] for n in sizes])
    rss_slope, rss_fixed = slope(sizes, [runs[n]["driver_peak_kb"] for n in sizes])
    anon_slope, anon_fixed = slope(sizes, [runs[n]["driver_anon_peak_kb"] for n in sizes])
    ray_slope = (raydata[sizes[-1]]["wall_s"] - raydata[sizes[0]]["wall_s"]) / (
        sizes[-1] - sizes[0]
    )
    wall_overhead = wall_slope - per_bare_wall / workers
    cpu_overhead = cpu_slope - per_bare_cpu
    say()
    say(f"per video (sizes {', '.join(map(str, sizes))}; {workers} workers):")
    say(
        f"  bare loop: {per_bare_wall * 1000:.2f} ms wall, {per_bare_cpu * 1000:.2f} ms CPU "
        f"(mean of {len(bare)} runs of {len(bare_paths)} videos)"
    )
    say(
        f"  job, marginal: {wall_slope * 1000:.2f} ms wall, {cpu_slope * 1000:.2f} ms CPU; "
        f"fixed: {wall_fixed:.1f} s wall, {cpu_fixed:.1f} s CPU"
    )
    say(
        f"  wall overhead: {wall_overhead * 1000:.2f} ms per video "
        f"(marginal wall - bare wall / {workers}; target <= 3 ms: "
        f"{'met' if wall_overhead <= 0.003 else 'MISSED'})"
    )
    say(
        f"  CPU overhead: {cpu_overhead * 1000:.2f} core-ms per video (marginal CPU - bare CPU; "
        f"{cpu_slope / per_bare_cpu:.1f}x the bare work)"
    )
    big = runs[sizes[-1]]
    steady_overhead = steady(big) - per_bare_wall / workers
    say(
        f"  steady state at {sizes[-1]} (first result to last): {steady(big) * 1000:.2f} ms wall "
        f"per video, {steady_overhead * 1000:.2f} ms over the bare work spread on {workers} "
        f"workers; the driver is busy "
        f"{(big['add_driver_s'] + big['commit_driver_s']) / sizes[-1] * 1000:.2f} ms "
        f"per video (results {big['add_driver_s'] / sizes[-1] * 1000:.2f}, commits "
        f"{big['commit_driver_s'] / sizes[-1] * 1000:.2f})"
    )
    for n in sizes:
        naive = (runs[n]["wall_s"] - n * per_bare_wall / workers) / n
        say(
            f"  {n:>6} videos, whole run: {runs[n]['wall_s'] / n * 1000:.2f} ms wall per video, "
            f"{naive * 1000:.2f} ms over the bare work spread on {workers} workers (start-up included)"
        )
    say(
        f"  driver peak RSS: {rss_slope:.2f} KB per video (slope), {rss_fixed / 1024:.0f} MiB "
        f"fixed (target <= 2 KB: {'met' if rss_slope <= 2 else 'MISSED'}); private part "
        f"(RssAnon) {anon_slope:.2f} KB per video, {anon_fixed / 1024:.0f} MiB fixed"
    )
    say(
        "  start-up (run start to first result reaching the driver): "
        + ", ".join(f"{runs[n]['first_result_s']:.1f} s at {n}" for n in sizes)
    )
    say(
        "  first committed chunk: "
        + ", ".join(f"{runs[n]['first_commit_s']:.1f} s at {n}" for n in sizes)
        + (f", {s3_run['first_commit_s']:.1f} s at {args.s3_size} on moto S3" if s3_run else "")
    )
    say("where the overhead goes (each measured here):")
    say(
        f"  Ray Data, job-shaped pipeline with no-op stages: {ray_slope * 1000:.2f} ms wall per "
        f"video ({raydata[sizes[0]]['wall_s']:.1f} s at {sizes[0]}, "
        f"{raydata[sizes[-1]]['wall_s']:.1f} s at {sizes[-1]})"
    )
    say(
        f"  decode sandbox: probe + decode isolated {sandbox['isolated_s'] * 1000:.2f} ms vs "
        f"in-process {sandbox['direct_s'] * 1000:.2f} ms per video "
        f"(+{(sandbox['isolated_s'] - sandbox['direct_s']) * 1000:.2f} ms)"
    )
    say(f"  decide (Arrow join) for {sizes[-1]} new videos: {decide_ms:.1f} ms")
    say("projection to 1,000,000 videos on this machine (lines through the measured sizes):")
    say(
        f"  wall {(wall_fixed + wall_slope * 1e6) / 3600:.1f} h (bare work alone, spread on "
        f"{workers} workers: {per_bare_wall * 1e6 / workers / 3600:.1f} h; overhead "
        f"{wall_overhead * 1e6 / 3600:.1f} h), driver peak RSS "
        f"{(rss_fixed + rss_slope * 1e6) / 1024 / 1024:.2f} GiB"
    )
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def measure_decide(count: int) -> float:
    import pyarrow as pa

    from vidbatch.index import tables
    from vidbatch.job.plan import LISTING, decide

    listed = pa.table(
        {
            "video_id": [f"{i:020d}" for i in range(count)],
            "uri": [f"/archive/videos/v{i:06d}.mp4" for i in range(count)],
            "source": [f"/archive/videos/v{i:06d}.mp4" for i in range(count)],
            "size_bytes": pa.array(np.full(count, 12345), pa.int64()),
            "etag": pa.nulls(count, pa.string()),
            "mtime": ["2026-11-01T00:00:00+00:00"] * count,
            "error": pa.nulls(count, pa.string()),
        },
        schema=LISTING,
    )
    current = tables.empty("videos")
    times = []
    for _ in range(5):
        began = time.perf_counter()
        decide(listed, current, "key")
        times.append(time.perf_counter() - began)
    return min(times) * 1000


if __name__ == "__main__":
    sys.exit(main())
