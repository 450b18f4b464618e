"""The `realistic` section of jobs/benchmark.py (issue 14): an archive like real ones, measured
side by side in one run.

Media (vidbatch.media.footage, cached): 8 files of real-looking footage (camera pans and zooms
over a textured landscape, cuts, moving objects, grain), 30 fps, x264 veryfast crf 23 with
3 B-frames, once with a keyframe every 2 s (closed GOPs) and once every 10 s (open GOPs),
plus one long file (keyframe every 2 s). Full size: 60 s and 20 min at 1280x720.

Parts:
1. probe: what probing one file costs (opening, the header, the end check) and what a decode
   sandbox child costs to start; bytes read by the end check, before and after issue 14.
2. decode: one process, no Ray, 1 frame/s at 320 px: bare PyAV loops (decode everything; seek
   to each keyframe holding samples and stop after the GOP's last sample: the floor) against
   vidbatch's decode_samples in `seek`, `keyframes` and `keyframes` with max_offset_s.
3. end to end (GOP 2 s archive): run_job with synth-detector at 1 frame/s (`seek`,
   `keyframes`, `keyframes` with a tolerance), Ray Data read_videos(fps=1) with the same model,
   and the bare floor loop doing the same decode and model work in one process.
"""

from __future__ import annotations

import functools
import inspect
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import bench_media as media
import numpy as np

from vidbatch.media import probe as probing
from vidbatch.media.decode import VideoInfo, decode_samples, open_video, probe
from vidbatch.media.isolation import Sandbox
from vidbatch.specs import FrameSpec

FRAMES = FrameSpec(1.0, 320)
TOLERANCE_S = 1.0  # keyframes mode: a sample may be a keyframe up to this much earlier
FILES = 8
DETECTOR = "synth-detector"


@dataclass
class Decoded:
    decoded: int = 0  # frames the decoder produced
    used: int = 0  # distinct frames converted for the model
    delivered: int = 0  # distinct frames per sample time (keyframes mode repeats some)
    seconds: float = 0.0
    video_s: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time, decoder threads included

    def add(self, other: Decoded) -> None:
        for name in ("decoded", "used", "delivered", "seconds", "video_s", "cpu_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def archives(root: Path, seconds: float, width: int, height: int, long_s: float) -> dict:
    """{name: [paths]}: GOP 2 s (closed), GOP 10 s (open), and the long file (GOP 2 s)."""
    return {
        "GOP 2 s": [
            media.get_footage(root, seconds, width, height, keyint=60, seed=i) for i in range(FILES)
        ],
        "GOP 10 s": [
            media.get_footage(root, seconds, width, height, keyint=300, seed=i, open_gop=True)
            for i in range(FILES)
        ],
        "long": [media.get_footage(root, long_s, width, height, keyint=60, seed=100)],
    }


def describe_media(name: str, files: list[Path]) -> str:
    size = sum(f.stat().st_size for f in files)
    info = probe(str(files[0]))
    total = sum(probe(str(f)).duration_s for f in files)
    return (
        f"{name}: {len(files)} x {info.duration_s:g}s {info.width}x{info.height} "
        f"{info.fps:g} fps, {8 * size / total / 1e6:.1f} Mbit/s"
    )


# ---------------------------------------------------------------- 1. probing


class CountingFile(io.RawIOBase):
    """A local file that counts the bytes read through it (as a ranged-read store would)."""

    def __init__(self, path: Path) -> None:
        self._file, self.read_bytes = open(path, "rb"), 0  # noqa: SIM115

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._file.readinto(buffer)
        self.read_bytes += n or 0
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()
        super().close()


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def end_check(path: Path, any_frame: bool) -> tuple[float, int]:
    """(ms, bytes read) of the end check alone: from the keyframe before the header's end
    (before issue 14) or from any packet a second before it (now)."""
    with CountingFile(path) as handle, av.open(handle, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        tb, header = stream.time_base, float(stream.duration * stream.time_base)
        fps = float(stream.average_rate)
        before = handle.read_bytes
        start = time.perf_counter()
        target = (header - probing._TAIL_S) if any_frame else header
        probing._ends_from(container, stream, target / tb, fps, any_frame)
        return 1000 * (time.perf_counter() - start), handle.read_bytes - before


def probe_parts(path: str, repeat: int) -> dict[str, float]:
    """Median ms of opening the file (FFmpeg's find_stream_info decodes its first frame),
    opening and reading the header, and the whole probe."""

    def opened() -> None:
        with open_video(path, stage="probe"):
            pass

    def header() -> None:
        with open_video(path, stage="probe") as (container, stream):
            probing.video_info(container, stream, measure=False)

    return {
        "open (find_stream_info)": _median_ms(opened, repeat),
        "open + header": _median_ms(header, repeat),
        "probe (open + header + end check)": _median_ms(lambda: probe(path), repeat),
    }


def probe_part(say: Callable[[str], None], record: Callable, media_sets: dict, repeat: int):
    for name, files in media_sets.items():
        parts = probe_parts(str(files[0]), repeat)
        old = [end_check(files[0], any_frame=False) for _ in range(repeat)]
        new = [end_check(files[0], any_frame=True) for _ in range(repeat)]
        say(
            f"  {name}: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in parts.items())
            + f"; end check from the last keyframe {statistics.median(t for t, _ in old):.1f} ms"
            f" / {old[0][1] / 1e6:.2f} MB read, from 1 s before the end "
            f"{statistics.median(t for t, _ in new):.1f} ms / {new[0][1] / 1e6:.2f} MB read"
        )
        record(f"realistic probe: {name}, ms per file", parts["probe (open + header + end check)"])
        record(
            f"realistic probe: {name}, end-check MB read before / now",
            old[0][1] / max(new[0][1], 1),
            "{:.1f}x less",
        )
    box = Sandbox(60.0)
    path = str(media_sets["GOP 2 s"][0])
    start = time.perf_counter()
    box.call(probe, path)
    first = 1000 * (time.perf_counter() - start)
    later = _median_ms(lambda: box.call(probe, path), repeat)
    box.close()
    say(
        f"  probe in a sandbox child: first call {first:.0f} ms (starting the child: a fresh "
        f"interpreter importing PyAV, numpy, fsspec), later calls {later:.1f} ms"
    )
    record("realistic probe: sandbox child start, ms", first - later, "{:.0f}")


# ---------------------------------------------------------------- 2. decoding, one process


def sample_times(duration: float) -> list[float]:
    return [float(k) for k in range(max(1, int(duration * FRAMES.fps - 1e-9) + 1)) if k < duration]


def _shape(width: int, height: int) -> tuple[int, int]:
    scale = FRAMES.size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def bare_all(path: Path) -> tuple[Decoded, list[np.ndarray]]:
    """Decode every frame; convert the frame shown at each sample time (what read_videos does
    at least, in one process)."""
    start = time.perf_counter()
    kept: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb, duration = stream.time_base, float(stream.duration * stream.time_base)
        width, height = _shape(stream.codec_context.width, stream.codec_context.height)
        times, i, decoded, previous = sample_times(duration), 0, 0, None
        for frame in container.decode(stream):
            decoded += 1
            t = float(frame.pts * tb)
            while i < len(times) and times[i] < t - 1e-6 and previous is not None:
                kept.append(previous.reformat(width, height, "rgb24").to_ndarray())
                i += 1
            previous = frame
        while i < len(times) and previous is not None:
            kept.append(previous.reformat(width, height, "rgb24").to_ndarray())
            i += 1
    return Decoded(decoded, len(kept), len(kept), time.perf_counter() - start, duration), kept


def bare_gop_seek(path: Path) -> tuple[Decoded, list[np.ndarray]]:
    """The floor: learn keyframe times from the packets (demuxing only), then for each GOP
    holding samples seek to its keyframe and decode only up to its last sample."""
    start = time.perf_counter()
    kept: list[np.ndarray] = []
    decoded = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb, duration = stream.time_base, float(stream.duration * stream.time_base)
        width, height = _shape(stream.codec_context.width, stream.codec_context.height)
        keys = sorted(p.pts for p in container.demux(stream) if p.is_keyframe and p.pts is not None)
        times = sample_times(duration)
        bounds = [*keys[1:], None]
        for key, end in zip(keys, bounds, strict=True):
            mine = [t for t in times if key * tb <= t + 1e-6 and (end is None or t < end * tb)]
            if not mine:
                continue
            container.seek(key, stream=stream, backward=True)
            i, previous = 0, None
            for frame in container.decode(stream):
                decoded += 1
                t = float(frame.pts * tb)
                while i < len(mine) and mine[i] < t - 1e-6 and previous is not None:
                    kept.append(previous.reformat(width, height, "rgb24").to_ndarray())
                    i += 1
                previous = frame
                if i == len(mine):
                    break
            while i < len(mine) and previous is not None:  # the file's last GOP
                kept.append(previous.reformat(width, height, "rgb24").to_ndarray())
                i += 1
    return Decoded(decoded, len(kept), len(kept), time.perf_counter() - start, duration), kept


def vidbatch_decode(path: Path, mode: str, tolerance: float | None) -> tuple[Decoded, np.ndarray]:
    """decode_samples over the whole file (the job probes at planning: not timed here)."""
    info = _probed(path)
    start = time.perf_counter()
    spec = FrameSpec(FRAMES.fps, FRAMES.size, max_offset_s=tolerance)
    out = decode_samples(
        str(path), frame_spec=spec, frame_times=sample_times(info.duration_s), mode=mode, info=info
    )
    frames = out.frames
    if mode == "keyframes":  # the model sees each distinct frame once (the job's decode stage)
        first = np.r_[True, np.diff(out.frame_times) > 1e-6]
        frames = frames[first]
    elapsed = time.perf_counter() - start
    return Decoded(
        out.frames_decoded, out.frames_used, out.frames_delivered, elapsed, info.duration_s
    ), frames


@functools.cache
def _probed(path: Path) -> VideoInfo:
    return probe(str(path))


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def decode_variants() -> dict[str, Callable[[Path], tuple[Decoded, Any]]]:
    return {
        "bare: decode all": bare_all,
        "bare: seek per GOP (floor)": bare_gop_seek,
        "vidbatch seek": lambda p: vidbatch_decode(p, "seek", 0.0),
        "vidbatch keyframes": lambda p: vidbatch_decode(p, "keyframes", None),
        f"vidbatch keyframes, max_offset {TOLERANCE_S:g} s": lambda p: vidbatch_decode(
            p, "keyframes", TOLERANCE_S
        ),
    }


def decode_part(say, record, media_sets: dict, rounds: int) -> dict[str, dict[str, Decoded]]:
    """Prints and records the one-process comparison; returns {archive: {variant: Decoded}}."""
    variants = decode_variants()
    results: dict[str, dict[str, Decoded]] = {}
    floor = "bare: seek per GOP (floor)"
    for name, files in media_sets.items():
        say(f"  {name} ({len(files)} files), 1 frame/s at {FRAMES.size} px, {rounds} rounds:")
        totals: dict[str, list[Decoded]] = {v: [] for v in variants}
        order = list(variants)
        for r in range(rounds):  # each variant goes first in turn: neighbours share the load
            for variant in order[r % len(order) :] + order[: r % len(order)]:
                total = Decoded()
                for path in files:
                    cpu = _cpu()
                    got = variants[variant](path)[0]
                    got.cpu_s = _cpu() - cpu
                    total.add(got)
                totals[variant].append(total)
        base = statistics.median(t.seconds for t in totals[floor])
        results[name] = {variant: runs[0] for variant, runs in totals.items()}
        base_cpu = statistics.median(t.cpu_s for t in totals[floor])
        for variant, runs in totals.items():
            seconds = statistics.median(t.seconds for t in runs)
            cpu = statistics.median(t.cpu_s for t in runs)
            t = runs[0]
            say(
                f"    {variant:34s} {seconds:7.2f} s ({cpu:6.2f} s CPU; floor / this "
                f"{base_cpu / cpu:.2f}x)  {t.decoded:6d} decoded / {t.used:5d} used"
                f" = {t.decoded / max(t.used, 1):5.1f} per frame used; delivered "
                f"{t.delivered / t.video_s:.2f} frames/s; floor / this {base / seconds:.2f}x"
            )
            if variant.startswith("vidbatch"):
                record(f"realistic decode {name}: {variant}, s / floor s", seconds / base, "{:.2f}")
            per_used = t.decoded / max(t.used, 1)
            if variant == "vidbatch seek" and name == "GOP 2 s":
                record(
                    f"realistic decode {name}: seek, decoded per frame used",
                    per_used,
                    "{:.1f}",
                    "<=",
                    16,
                )
            elif variant.startswith("vidbatch") or variant == floor:
                record(f"realistic decode {name}: {variant}, decoded per used", per_used, "{:.1f}")
    return results


# ---------------------------------------------------------------- 3. end to end


def floor_with_model(files: list[Path], model: Any) -> tuple[float, int, int]:
    """The bare floor loop plus the detector on its frames, 8 per call, in one process."""
    start = time.perf_counter()
    decoded = used = 0
    for path in files:
        got, frames = bare_gop_seek(path)
        decoded, used = decoded + got.decoded, used + got.used
        batch = np.stack(frames)
        for i in range(0, len(batch), 8):
            model.detect(batch[i : i + 8], min_score=0.3, max_detections=100)
    return time.perf_counter() - start, decoded, used


def run_job(manifest: str, mode: str, tolerance: float | None) -> Any:
    from vidbatch.config import config_from_dict
    from vidbatch.job.run import run_job as run

    frames = {"fps": FRAMES.fps, "size": FRAMES.size, "max_offset_s": tolerance}
    with tempfile.TemporaryDirectory(prefix="bench-real-") as out:
        config = config_from_dict(
            {
                "source": {"uri": manifest},
                "output": {"uri": out},
                "models": [{"name": DETECTOR}],
                "sampling": {"frames": frames, "decode_mode": mode, "segment_seconds": 120},
                "incremental": False,
            }
        )
        quiet = {
            k: v
            for k, v in (("log", lambda _l: None), ("show_progress", False))
            if k in inspect.signature(run).parameters
        }
        summary = run(config, **quiet)
    if getattr(summary, "failed", 0):
        raise RuntimeError(f"{summary.failed} videos failed: {getattr(summary, 'failures', '')}")
    return summary


def read_videos_fps1(files: list[Path], fps: float) -> int:
    import ray.data

    actor = {
        "compute": ray.data.ActorPoolStrategy(size=2),
        "fn_constructor_kwargs": {"model": DETECTOR, "weights": None, "source_fps": fps},
    }
    ds = ray.data.read_videos([str(f) for f in files], include_paths=True, fps=int(FRAMES.fps))
    sampling = {"stride": round(fps / FRAMES.fps), "size": FRAMES.size}
    ds = ds.map_batches(media.keep_and_resize, batch_size=32, fn_kwargs=sampling)
    ds = ds.map_batches(media.DetectActor, batch_size=16, num_cpus=0, **actor)
    with tempfile.TemporaryDirectory(prefix="bench-rv-") as out:
        ds.write_parquet(out)
        return ray.data.read_parquet(out).count()


def end_to_end_part(
    say, record, root: Path, files: list[Path], decoded: dict[str, Decoded] | None, rounds: int
) -> None:
    """`decoded`: the one-process results for these files (the frame rate each variant
    delivers, when the job's summary does not say)."""
    from vidbatch.models import load_model

    media.ray_start()
    manifest = media.manifest(root, "realistic-gop2", files)
    info = probe(str(files[0]))
    video_s = sum(probe(str(f)).duration_s for f in files)
    say(
        f"  {len(files)} files, {video_s:g} s of video; model {DETECTOR} at {FRAMES.fps:g} "
        f"frame/s, {FRAMES.size} px; 2 CPUs"
    )
    if decoded is None:  # what each variant delivers, from one pass of the decode alone
        decoded = {}
        for variant, fn in decode_variants().items():
            if variant.startswith("vidbatch"):
                decoded[variant] = Decoded()
                for path in files:
                    decoded[variant].add(fn(path)[0])
    run_job(manifest, "keyframes", None)  # warm-up, not timed: the first job pays one-off costs

    def job(mode: str, tolerance: float | None, variant: str) -> dict:
        s = run_job(manifest, mode, tolerance)
        say(f"      {s.line()}")
        delivered = getattr(s, "frames_delivered", None)
        if delivered is None and decoded and variant in decoded:
            delivered = decoded[variant].delivered
        return {
            "wall": s.wall_s,
            "decoded": s.frames_decoded,
            "used": s.frames_used,
            "delivered": delivered if delivered is not None else float("nan"),
        }

    def read_videos() -> dict:
        start = time.perf_counter()
        count = read_videos_fps1(files, info.fps)
        wall = time.perf_counter() - start
        return {
            "wall": wall,
            "decoded": round(video_s * info.fps),
            "used": count,
            "delivered": count,
        }

    model = load_model(DETECTOR, None, device="cpu")

    def floor() -> dict:
        wall, frames_decoded, used = floor_with_model(files, model)
        return {"wall": wall, "decoded": frames_decoded, "used": used, "delivered": used}

    rv, seek, keys, tolerant = (
        "read_videos(fps=1)",
        "vidbatch seek",
        "vidbatch keyframes",
        f"vidbatch keyframes, max_offset {TOLERANCE_S:g} s",
    )
    bare = "bare loop (floor), 1 process"
    runs: dict[str, Callable[[], dict]] = {
        rv: read_videos,
        seek: lambda: job("seek", 0.0, seek),
        keys: lambda: job("keyframes", None, keys),
        tolerant: lambda: job("keyframes", TOLERANCE_S, tolerant),
        bare: floor,
    }
    order, got = list(runs), {name: [] for name in runs}
    for r in range(rounds):  # each variant goes first in turn: neighbours share the load
        say(f"    round {r + 1} of {rounds}")
        for name in order[r % len(order) :] + order[: r % len(order)]:
            g = runs[name]()
            got[name].append(g)
            say(
                f"    {name:34s} {g['wall']:7.1f} s  {g['decoded']:6d} decoded / {g['used']:5d} "
                f"used = {g['decoded'] / max(g['used'], 1):5.1f} per frame used; delivered "
                f"{g['delivered'] / video_s:.2f} frames/s"
            )

    def ratio(a: str, b: str) -> float:  # median over rounds of wall(a) / wall(b)
        return statistics.median(x["wall"] / y["wall"] for x, y in zip(got[a], got[b], strict=True))

    record(f"realistic e2e: {rv} / {seek}", ratio(rv, seek), "{:.2f}x", ">=", 3)
    record(f"realistic e2e: {rv} / {keys}", ratio(rv, keys), "{:.2f}x", ">=", 5)
    record(f"realistic e2e: {rv} / {tolerant}", ratio(rv, tolerant), "{:.2f}x")
    record(
        "realistic e2e: job seek throughput / bare loop's", ratio(bare, seek), "{:.2f}", ">=", 0.8
    )
    record("realistic e2e: job keyframes throughput / bare loop's", ratio(bare, keys), "{:.2f}")


def section(
    root: Path,
    sc: Any,
    say: Callable[[str], None],
    record: Callable,
    parts: tuple[str, ...] = ("probe", "decode", "e2e"),
) -> None:
    media_sets = archives(root, sc.seconds, sc.width, sc.height, sc.long_seconds)
    for name, files in media_sets.items():
        say("  " + describe_media(name, files))
    rounds = 2 if sc.variants else 1
    if parts == ("e2e",):
        say("\n  -- end to end, GOP 2 s archive")
        end_to_end_part(say, record, root, media_sets["GOP 2 s"], None, rounds)
        return
    say("\n  -- probing one file (median of 7)")
    probe_part(say, record, media_sets, 7)
    say("\n  -- decoding in one process (no Ray, no sandbox)")
    decoded = decode_part(say, record, media_sets, rounds)
    if "e2e" in parts:
        say("\n  -- end to end, GOP 2 s archive")
        end_to_end_part(say, record, root, media_sets["GOP 2 s"], decoded.get("GOP 2 s"), rounds)
