"""Index benchmark (issue 12): does planning a nightly run cost the same after 30 nights as after
one, and what does a chunk commit cost on S3?

    python jobs/bench_index.py                        # 100k videos, 30 nights, local + moto S3
    python jobs/bench_index.py --videos 5000 --nights 5 --s3-videos 2000 --reps 1   # quick

An index of --videos synthetic videos is built through IndexStore the way the job builds it
(chunks of --commit-every videos: workers' Parquet files for `clips`, then one commit per chunk
naming them, with the writer lease; a `runs` row per run), then aged by --nights simulated
nights: each night --changed of the videos get new content (a new etag), are planned with
`decide` and re-indexed by commits with `replace_uris`, like the job's; every other video is a
no-op. No video is decoded: rows are synthetic.

Planning = reading the listing (an Arrow table, here from Parquet) + `current_videos` + `decide`
(+ reading `runs`, which `plan_run` also does, shown apart). Each measurement is a fresh process
(time and peak RSS, VmHWM); the night-1 and night-N indexes are measured alternately, --reps
times, and the ratios come from medians of this run. What an fsspec listing costs (list_videos
on a local folder and on moto S3) is measured apart. moto runs as its own process
(`moto_server`), so this process's GIL does not serve S3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_common import Moto, status_kb  # noqa: E402

from vidbatch.index import tables  # noqa: E402
from vidbatch.index.store import ChunkCommit, IndexStore  # noqa: E402
from vidbatch.job.plan import LISTING, decide, to_process  # noqa: E402

MODEL, MODEL_VERSION = "motion-cnn", "bench-1"
CONFIG_KEY = "bench0000000000a"
LABELS = ["moving_left", "moving_right", "static", "zoom_in", "zoom_out"]
CURRENT_COLUMNS = ["uri", "video_id", "status", "config_key", "attempts"]


def say(text: str = "") -> None:
    print(text, flush=True)


# -- the synthetic archive -------------------------------------------------------------------


class Archive:
    """The source: uris (sorted, as listing yields them), sizes, mtimes and content versions."""

    def __init__(self, videos: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.uris = [f"s3://archive/videos/cam{i % 97:02d}/v{i:08d}.mp4" for i in range(videos)]
        self.uris.sort()
        self.sizes = self.rng.integers(1 << 20, 500 << 20, videos)
        self.versions = np.zeros(videos, np.int64)  # content version: bumps change the etag

    def etag(self, i: int) -> str:
        return hashlib.md5(f"{self.uris[i]}#{self.versions[i]}".encode()).hexdigest()

    def change(self, fraction: float) -> np.ndarray:
        """New content for a random `fraction` of the videos; returns their indexes."""
        count = max(1, round(len(self.uris) * fraction))
        picked = np.sort(self.rng.choice(len(self.uris), count, replace=False))
        self.versions[picked] += 1
        return picked

    def listing(self) -> pa.Table:
        """What list_videos + listing_table would give (video_id as VideoRef computes it)."""
        etags = [self.etag(i) for i in range(len(self.uris))]
        ids = [
            hashlib.sha256(f"{u}\n{e}".encode()).hexdigest()[:20]
            for u, e in zip(self.uris, etags, strict=True)
        ]
        n = len(self.uris)
        return pa.table(
            {
                "video_id": ids,
                "uri": self.uris,
                "source": self.uris,
                "size_bytes": pa.array(self.sizes, pa.int64()),
                "etag": etags,
                "mtime": ["2026-11-01T00:00:00+00:00"] * n,
                "error": pa.nulls(n, pa.string()),
            },
            schema=LISTING,
        )


def videos_rows(todo: pa.Table, run_id: str) -> pa.Table:
    n = todo.num_rows
    now = datetime.now(timezone.utc)
    return pa.table(
        {
            "video_id": todo.column("video_id"),
            "uri": todo.column("uri"),
            "size_bytes": todo.column("size_bytes"),
            "etag": todo.column("etag"),
            "mtime": todo.column("mtime"),
            "duration_s": pa.array(np.full(n, 8.0)),
            "fps": pa.array(np.full(n, 30.0)),
            "width": pa.array(np.full(n, 1280, np.int32)),
            "height": pa.array(np.full(n, 720, np.int32)),
            "codec": ["h264"] * n,
            "status": ["ok"] * n,
            "error": pa.nulls(n, pa.string()),
            "attempts": pa.array(np.zeros(n, np.int32)),
            "segments": pa.array(np.ones(n, np.int32)),
            "frames_decoded": pa.array(np.full(n, 240, np.int64)),
            "frames_used": pa.array(np.full(n, 64, np.int64)),
            "config_key": [CONFIG_KEY] * n,
            "run_id": [run_id] * n,
            "processed_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        },
        schema=tables.VIDEOS,
    )


def clips_rows(todo: pa.Table, run_id: str, per_video: int, rng: np.random.Generator) -> pa.Table:
    n = todo.num_rows * per_video
    which = np.repeat(np.arange(todo.num_rows), per_video)
    starts = np.tile(np.arange(per_video) * 2.0, todo.num_rows)
    probs = rng.dirichlet(np.ones(len(LABELS)), n).astype(np.float32)
    order = np.argsort(-probs, axis=1)[:, :3]
    top = np.take_along_axis(probs, order, axis=1)
    names = np.asarray(LABELS, dtype=object)[order]
    return pa.table(
        {
            "video_id": pc.take(todo.column("video_id"), which),
            "uri": pc.take(todo.column("uri"), which),
            "clip_start_s": starts,
            "clip_end_s": starts + 2.0,
            "model": [MODEL] * n,
            "model_version": [MODEL_VERSION] * n,
            "label": names[:, 0].tolist(),
            "score": top[:, 0],
            "labels": names.tolist(),
            "scores": top.tolist(),
            "run_id": [run_id] * n,
        },
        schema=tables.CLIPS,
    )


# -- building and ageing an index through IndexStore -----------------------------------------


@dataclass
class Built:
    uri: str
    options: dict[str, Any]
    night1_uri: str = ""
    listings: dict[int, Path] = field(default_factory=dict)  # state -> next night's listing
    backfill_commit_s: list[float] = field(default_factory=list)
    backfill_write_s: list[float] = field(default_factory=list)
    nightly_commit_s: list[float] = field(default_factory=list)
    nightly_chunk_videos: list[int] = field(default_factory=list)
    nightly_total_s: list[float] = field(default_factory=list)
    build_s: float = 0.0


def run_record(run_id: str, listed: int, ok: int, finished: bool) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    return {
        "run_id": run_id,
        "started_at": now,
        "finished_at": now if finished else None,
        "status": "ok" if finished else "running",
        "config_key": CONFIG_KEY,
        "config": json.dumps({"rows": {"models": [{"name": MODEL, "version": MODEL_VERSION}]}}),
        "models": {MODEL: MODEL_VERSION},
        "listed": listed,
        "ok": ok if finished else None,
    }


def index_run(
    store: IndexStore,
    listed: pa.Table,
    run_id: str,
    commit_every: int,
    clips_per_video: int,
    rng: np.random.Generator,
    commit_s: list[float],
    write_s: list[float],
    sizes: list[int] | None = None,
) -> int:
    """One run as the job does it: decide, then per chunk the workers' clips files and the
    driver's commit (timed), under the writer lease, with its `runs` row."""
    current = store.current_videos(CURRENT_COLUMNS)
    todo = to_process(decide(listed, current, CONFIG_KEY))
    with store.lease(run_id) as lease:
        store.ensure_tables()
        store.write_run(run_record(run_id, listed.num_rows, 0, False))
        for sequence, start in enumerate(range(0, todo.num_rows, commit_every), 1):
            chunk = todo.slice(start, commit_every)
            began = time.perf_counter()
            files = store.write_rows("clips", clips_rows(chunk, run_id, clips_per_video, rng))
            write_s.append(time.perf_counter() - began)
            known = chunk.filter(chunk.column("known")).column("uri").to_pylist()
            commit = ChunkCommit(
                sequence=sequence,
                run_id=run_id,
                videos=videos_rows(chunk, run_id),
                files=files,
                replace_uris=known,
                models=frozenset({MODEL}),
            )
            began = time.perf_counter()
            store.commit_chunk(commit, lease)
            commit_s.append(time.perf_counter() - began)
            if sizes is not None:
                sizes.append(chunk.num_rows)
        store.write_run(run_record(run_id, listed.num_rows, todo.num_rows, True))
    return todo.num_rows


def build_and_age(
    uri: str,
    options: dict[str, Any],
    args: argparse.Namespace,
    videos: int,
    copy: Callable[[str, str], None],
    workdir: Path,
    tag: str,
    log: Callable[[str], None],
) -> Built:
    archive = Archive(videos, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    store = IndexStore(uri, options)
    built = Built(uri, options)
    began = time.perf_counter()
    listed = archive.listing()
    done = index_run(
        store,
        listed,
        "backfill",
        args.commit_every,
        args.clips_per_video,
        rng,
        built.backfill_commit_s,
        built.backfill_write_s,
    )
    log(
        f"  {tag}: backfill of {done} videos in {len(built.backfill_commit_s)} chunks, "
        f"{time.perf_counter() - began:.0f} s"
    )
    write_s: list[float] = []
    for night in range(1, args.nights + 1):
        archive.change(args.changed)
        night_began = time.perf_counter()
        index_run(
            store,
            archive.listing(),
            f"night-{night:03d}",
            args.commit_every,
            args.clips_per_video,
            rng,
            built.nightly_commit_s,
            write_s,
            built.nightly_chunk_videos,
        )
        built.nightly_total_s.append(time.perf_counter() - night_began)
        if night in (1, args.nights):
            # Planning is measured for the night after this one: its listing has new changes.
            saved = archive.versions.copy()
            archive.change(args.changed)
            path = workdir / f"listing-{tag}-after-{night}.parquet"
            pq.write_table(archive.listing(), path)
            archive.versions = saved
            built.listings[night] = path
        if night == 1:
            built.night1_uri = f"{uri}-night1"
            copy(uri, built.night1_uri)
        if night % 10 == 0 or night == args.nights:
            log(f"  {tag}: night {night} done ({time.perf_counter() - began:.0f} s so far)")
    built.build_s = time.perf_counter() - began
    return built


# -- planning in a fresh process -------------------------------------------------------------


def plan_child(spec: dict[str, Any]) -> None:
    """Runs in a fresh process: the planning steps, timed, with peak RSS."""
    import deltalake  # noqa: F401  (imported up front: the baseline holds every library)

    baseline_kb = status_kb("VmRSS")
    t0 = time.perf_counter()
    listed = pq.read_table(spec["listing"])
    t1 = time.perf_counter()
    store = IndexStore(spec["uri"], spec["options"])
    current = store.current_videos(CURRENT_COLUMNS)
    t2 = time.perf_counter()
    decided = decide(listed, current, CONFIG_KEY)
    todo = to_process(decided)
    t3 = time.perf_counter()
    plan_kb = status_kb("VmHWM")
    runs = store.runs()
    t4 = time.perf_counter()
    print(
        json.dumps(
            {
                "listing_s": t1 - t0,
                "current_s": t2 - t1,
                "decide_s": t3 - t2,
                "plan_s": t3 - t0,
                "runs_s": t4 - t3,
                "runs_rows": runs.num_rows,
                "listed": listed.num_rows,
                "current": current.num_rows,
                "todo": todo.num_rows,
                "baseline_kb": baseline_kb,
                "peak_kb": plan_kb,
                "peak_with_runs_kb": status_kb("VmHWM"),
            }
        )
    )


def list_child(spec: dict[str, Any]) -> None:
    """Runs in a fresh process: an fsspec listing through list_videos, timed, with peak RSS."""
    from vidbatch.job.catalog import list_videos
    from vidbatch.job.plan import listing_table

    baseline_kb = status_kb("VmRSS")
    t0 = time.perf_counter()
    refs = list_videos(spec["uri"], spec["options"])
    t1 = time.perf_counter()
    table = listing_table(refs)
    t2 = time.perf_counter()
    print(
        json.dumps(
            {
                "list_s": t1 - t0,
                "table_s": t2 - t1,
                "videos": table.num_rows,
                "baseline_kb": baseline_kb,
                "peak_kb": status_kb("VmHWM"),
            }
        )
    )


def child(mode: str, spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, f"--{mode}-child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"{mode} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_planning(built: Built, nights: int, reps: int) -> dict[int, list[dict[str, Any]]]:
    states = {1: built.night1_uri, nights: built.uri}
    found: dict[int, list[dict[str, Any]]] = {1: [], nights: []}
    for _ in range(reps):  # alternate, so load on the machine hits both alike
        for state, uri in states.items():
            spec = {"uri": uri, "options": built.options, "listing": str(built.listings[state])}
            found[state].append(child("plan", spec))
    return found


# -- moto S3 in its own process ----------------------------------------------------------------


# -- fsspec listing ----------------------------------------------------------------------------


def make_local_tree(root: Path, count: int) -> str:
    for i in range(count):
        path = root / f"cam{i % 97:02d}" / f"v{i:08d}.mp4"
        if i < 97:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0")
    return str(root)


def make_s3_tree(moto: Moto, count: int) -> str:
    fs = moto.fs()
    batch = {}
    for i in range(count):
        batch[f"list-archive/videos/cam{i % 97:02d}/v{i:08d}.mp4"] = b"\0"
        if len(batch) == 500 or i == count - 1:
            fs.pipe(batch)
            batch = {}
    return "s3://list-archive/videos/"


# -- report ------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def planning_lines(tag: str, found: dict[int, list[dict[str, Any]]], nights: int) -> list[str]:
    lines = []
    first, last = found[1], found[nights]

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return median([r[key] for r in rows])

    def own_mb(rows: list[dict[str, Any]]) -> float:
        return median([(r["peak_kb"] - r["baseline_kb"]) / 1024 for r in rows])

    for state, rows in ((1, first), (nights, last)):
        lines.append(
            f"  {tag} after night {state:>2}: plan {med(rows, 'plan_s') * 1000:7.0f} ms "
            f"(listing {med(rows, 'listing_s') * 1000:.0f}, current_videos "
            f"{med(rows, 'current_s') * 1000:.0f}, decide {med(rows, 'decide_s') * 1000:.0f}); "
            f"runs table {med(rows, 'runs_s') * 1000:.0f} ms ({rows[0]['runs_rows']} rows); "
            f"peak RSS {med(rows, 'peak_kb') / 1024:.0f} MiB, planning's own "
            f"{own_mb(rows):.0f} MiB (above {med(rows, 'baseline_kb') / 1024:.0f} MiB after "
            f"imports); {rows[0]['current']} current rows, {rows[0]['todo']} to index"
        )
    lines.append(
        f"  {tag} night {nights} / night 1: plan time "
        f"{med(last, 'plan_s') / med(first, 'plan_s'):.2f}, current_videos "
        f"{med(last, 'current_s') / med(first, 'current_s'):.2f}, peak RSS "
        f"{med(last, 'peak_kb') / med(first, 'peak_kb'):.2f}, planning's own memory "
        f"{own_mb(last) / own_mb(first):.2f}  (goal <= 1.1)"
    )
    return lines


def commit_lines(tag: str, built: Built) -> list[str]:
    back = built.backfill_commit_s
    tenth = max(1, len(back) // 10)
    nightly = built.nightly_commit_s
    return [
        f"  {tag} backfill: {len(back)} chunk commits, median {median(back) * 1000:.0f} ms, "
        f"p90 {pct(back, 90) * 1000:.0f} ms, max {max(back) * 1000:.0f} ms "
        f"(first tenth {median(back[:tenth]) * 1000:.0f} ms, last tenth "
        f"{median(back[-tenth:]) * 1000:.0f} ms); workers' clips file write median "
        f"{median(built.backfill_write_s) * 1000:.0f} ms",
        f"  {tag} nightly re-index: {len(nightly)} chunk commits of "
        f"{median(built.nightly_chunk_videos):.0f} changed videos, median "
        f"{median(nightly) * 1000:.0f} ms, p90 {pct(nightly, 90) * 1000:.0f} ms "
        f"(first night {nightly[0] * 1000:.0f} ms, last {nightly[-1] * 1000:.0f} ms); "
        f"a whole night (decide + commits + runs rows) median "
        f"{median(built.nightly_total_s) * 1000:.0f} ms",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--changed", type=float, default=0.001, help="fraction changed per night")
    parser.add_argument("--commit-every", type=int, default=256)
    parser.add_argument("--clips-per-video", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3, help="planning runs per state")
    parser.add_argument("--s3-videos", type=int, default=None, help="default: --videos; 0: no S3")
    parser.add_argument("--list-local", type=int, default=None, help="default: --videos")
    parser.add_argument("--list-s3", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--plan-child", help=argparse.SUPPRESS)
    parser.add_argument("--list-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plan_child:
        plan_child(json.loads(args.plan_child))
        return 0
    if args.list_child:
        list_child(json.loads(args.list_child))
        return 0
    s3_videos = args.videos if args.s3_videos is None else args.s3_videos
    list_local = args.videos if args.list_local is None else args.list_local
    if args.nights < 2:
        parser.error("--nights must be >= 2 (night 1 is compared with the last night)")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vidbatch-bench-index-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say(
        f"index benchmark: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    say(f"command: python jobs/bench_index.py {' '.join(sys.argv[1:])}".rstrip())
    say(
        f"{args.videos} videos, {args.nights} nights, {args.changed:.2%} changed per night, "
        f"chunks of {args.commit_every}, {args.clips_per_video} clips per video; workdir {workdir}"
    )
    report: list[str] = []
    moto: Moto | None = None
    try:
        say("local index: building")
        local_uri = str(workdir / "index")
        local = build_and_age(
            local_uri,
            {},
            args,
            args.videos,
            lambda a, b: shutil.copytree(a, b),
            workdir,
            "local",
            say,
        )
        say("local index: planning in fresh processes")
        found = measure_planning(local, args.nights, args.reps)
        report += ["planning (median of fresh processes):"]
        report += planning_lines("local", found, args.nights)
        report += ["chunk commits (driver side):"]
        report += commit_lines("local", local)

        if s3_videos or args.list_s3:
            moto = Moto()
        if s3_videos:
            moto.bucket("bench-index")
            s3 = moto.fs()
            say(f"moto S3 index ({s3_videos} videos): building")
            built = build_and_age(
                "s3://bench-index/index",
                moto.options,
                args,
                s3_videos,
                lambda a, b: s3.copy(a.rstrip("/") + "/", b.rstrip("/") + "/", recursive=True),
                workdir,
                "s3",
                say,
            )
            say("moto S3 index: planning in fresh processes")
            found = measure_planning(built, args.nights, args.reps)
            report += [f"on moto S3 ({s3_videos} videos, moto_server in its own process):"]
            report += planning_lines("s3", found, args.nights)
            report += commit_lines("s3", built)

        report += ["fsspec listing (list_videos + listing_table, fresh process):"]
        if list_local:
            say(f"fsspec listing: {list_local} local files")
            root = make_local_tree(workdir / "archive", list_local)
            got = child("list", {"uri": root, "options": {}})
            report.append(
                f"  local folder: {got['videos']} videos in {got['list_s']:.2f} s "
                f"({got['list_s'] / got['videos'] * 1e6:.0f} us/video) + table "
                f"{got['table_s'] * 1000:.0f} ms; planning's own peak "
                f"{(got['peak_kb'] - got['baseline_kb']) / 1024:.0f} MiB "
                f"({(got['peak_kb'] - got['baseline_kb']) / got['videos']:.2f} KB/video)"
            )
        if args.list_s3:
            say(f"fsspec listing: {args.list_s3} objects on moto S3")
            moto.bucket("list-archive")
            uri = make_s3_tree(moto, args.list_s3)
            got = child("list", {"uri": uri, "options": moto.options})
            report.append(
                f"  moto S3 prefix: {got['videos']} objects in {got['list_s']:.2f} s "
                f"({got['list_s'] / got['videos'] * 1e6:.0f} us/object; ListObjectsV2 pages of "
                f"1000, moto's own speed, not AWS's); peak above imports "
                f"{(got['peak_kb'] - got['baseline_kb']) / 1024:.0f} MiB"
            )
    finally:
        if moto is not None:
            moto.stop()
    say()
    for line in report:
        say(line)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
