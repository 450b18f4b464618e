"""The indexing job: list -> decide (incremental) -> probe -> plan -> Ray Data decode + infer
-> commit tables chunk by chunk, so a killed driver loses at most the chunks in flight."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vidbatch.config import JobConfig, to_dict
from vidbatch.errors import ConfigError, StageError, describe
from vidbatch.index import tables
from vidbatch.index.history import (
    SKIP,
    IndexState,
    committed_files,
    read_index_state,
    remove_orphans,
    write_run_record,
)
from vidbatch.index.sink import TableSink
from vidbatch.job.catalog import VideoRef, list_videos
from vidbatch.job.plan import plan_segments
from vidbatch.job.stages import DecodeStage, InferenceStage, WorkUnit
from vidbatch.media.decode import VideoInfo, probe
from vidbatch.media.isolation import SandboxPool
from vidbatch.specs import ClipSpec, FrameSpec
from vidbatch.storage import redact, retrying, scrub, uri_of

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class VideoState:
    """What the driver knows of one video during a run."""

    ref: VideoRef
    reason: str = "new"  # new | changed | retry | upgrade | skipped
    chunk: int = -1
    info: VideoInfo | None = None
    error: str | None = None
    segments: int = 0
    segments_done: int = 0
    frames_decoded: int = 0
    frames_used: int = 0

    @property
    def done(self) -> bool:
        return self.error is not None or self.segments_done >= self.segments


@dataclass
class RunSummary:
    run_id: str
    videos: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    clips: int = 0
    detections: int = 0
    segments: int = 0
    video_seconds: float = 0.0
    frames_decoded: int = 0
    frames_used: int = 0
    wall_s: float = 0.0
    cpus: float = 1.0
    stage_s: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        core_hours = max(self.wall_s * self.cpus / 3600, 1e-9)
        return (
            f"run {self.run_id}: {self.videos} videos ({self.ok} ok, {self.failed} failed, "
            f"{self.skipped} skipped), {self.clips} clips, {self.detections} detections, "
            f"{self.video_seconds / 3600:.3f} video-hours in {self.wall_s:.1f}s "
            f"({self.video_seconds / 3600 / core_hours:.1f} video-hours/core-hour), "
            f"frames decoded/used {self.frames_decoded}/{self.frames_used}, stages "
            + " ".join(f"{k} {v:.1f}s" for k, v in self.stage_s.items())
        )


@dataclass(frozen=True)
class Plan:
    """Everything decided before decoding: what `--dry-run` prints."""

    run_id: str
    videos: list[VideoState]
    units: list[WorkUnit]
    clip_specs: tuple[ClipSpec, ...]
    frame_spec: FrameSpec | None
    models: list[Any]
    config_key: str

    def reasons(self) -> Counter:
        return Counter(s.reason for s in self.videos)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def config_key(config: JobConfig, models: list[Any]) -> str:
    """Hash of what decides a video's rows: sampling and model versions (not paths or resources)."""
    data = {
        "sampling": to_dict(config.sampling),
        "models": [
            {**to_dict(c), "weights": None, "storage_options": None, "version": m.version}
            for m, c in zip(models, config.models, strict=True)
        ],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_models(config: JobConfig) -> list[Any]:
    """Load every model on the driver: unknown names and bad weights fail before Ray starts."""
    from vidbatch.models import load_model

    loaded = []
    for i, m in enumerate(config.models):
        try:
            loaded.append(
                load_model(m.name, m.weights, storage_options=m.storage_options, device="cpu")
            )
        except (ValueError, FileNotFoundError, OSError) as exc:
            raise ConfigError(f"models[{i}] ({m.name}): {describe(exc)}") from exc
    return loaded


def plan_run(config: JobConfig, *, limit: int | None = None, log: Log = _stderr) -> Plan:
    models = load_models(config)
    if config.sampling.decode_mode == "keyframes" and any(m.task == "classify" for m in models):
        raise ConfigError(
            "sampling.decode_mode: keyframes only suits detectors; clip classifiers need every frame"
        )
    key = config_key(config, models)
    refs = list_videos(config.source.uri, config.source.storage_options, limit=limit)
    index = (
        read_index_state(config.output.uri, config.output.storage_options)
        if config.incremental
        else IndexState()
    )
    states = [VideoState(ref=r, reason=index.decide(r, key), error=r.error) for r in refs]
    todo = [s for s in states if s.reason != SKIP]
    log(f"listed {len(refs)} videos under {config.source.uri}: {len(todo)} to index")

    def probe_one(state: VideoState) -> None:
        if state.error:
            return
        if state.ref.size_bytes == 0:
            state.error = "probe: empty file (0 bytes)"
            return
        try:
            state.info = sandboxes.run("probe", probe, state.ref.uri, config.source.storage_options)
        except StageError as exc:
            state.error = str(exc)
        except Exception as exc:  # one unreadable file must not stop the listing
            state.error = f"probe: {describe(exc)}"

    workers = max(1, min(8, len(todo)))
    with SandboxPool(workers, config.resources.probe_timeout_s) as sandboxes:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(probe_one, todo))

    clip_specs = tuple(dict.fromkeys(m.clip for m in models if m.task == "classify"))
    frame_spec = config.sampling.frames if any(m.task == "detect" for m in models) else None
    units = []
    for position, state in enumerate(todo):
        state.chunk = position // config.resources.commit_every
        if state.info is None:
            continue
        segments = plan_segments(state.info.duration_s, config.sampling.segment_seconds, clip_specs)
        state.segments = len(segments)
        units.extend(
            WorkUnit(
                video_id=state.ref.video_id,
                uri=state.ref.uri,
                segment_index=s.index,
                segment_count=len(segments),
                start_s=s.start_s,
                end_s=s.end_s,
                duration_s=state.info.duration_s,
            )
            for s in segments
        )
    return Plan(new_run_id(), states, units, clip_specs, frame_spec, models, key)


def _ray_init() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def _resources(config: JobConfig, segments: int) -> dict[str, Any]:
    """Actor count, GPUs per actor and batch size: 'auto' follows what the cluster has."""
    import ray

    cluster = ray.cluster_resources()
    gpus = cluster.get("GPU", 0)
    res = config.resources
    per_actor = (
        (1.0 if gpus else 0.0) if res.gpus_per_actor == "auto" else float(res.gpus_per_actor)
    )
    if res.actors == "auto":
        # CPU-only, Ray fuses decode into the inference actors: one actor per core decodes in parallel.
        actors = int(gpus // per_actor) if per_actor else max(1, int(cluster.get("CPU", 1)))
    else:
        actors = int(res.actors)
    batch = (32 if per_actor else 8) if res.batch_size == "auto" else int(res.batch_size)
    return {
        "gpus": per_actor,
        "actors": max(1, min(actors, segments)),
        "batch_size": batch,
        "cpus": cluster.get("CPU", 1),
    }


def _segment_results(config: JobConfig, plan: Plan, log: Log):
    """Stream one result row per segment (video_id, error, frame counts, clips/detections IPC)."""
    _ray_init()
    import ray.data

    res = _resources(config, len(plan.units))
    log(
        f"decoding {len(plan.units)} segments with {res['actors']} inference actor(s), "
        f"{res['gpus']:g} GPU each"
    )
    items = [asdict(u) for u in plan.units]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    decode = DecodeStage(
        plan.clip_specs,
        plan.frame_spec,
        dict(config.source.storage_options),
        mode=config.sampling.decode_mode,
        timeout_s=config.resources.decode_timeout_s,
    )
    ds = ds.map(decode, num_cpus=config.resources.decode_cpus)
    ds = ds.map_batches(
        InferenceStage,
        fn_constructor_kwargs={
            "models": config.models,
            "clip_specs": plan.clip_specs,
            "run_id": plan.run_id,
            "batch_size": res["batch_size"],
        },
        batch_size=4,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=res["actors"]),
        num_gpus=res["gpus"],
        num_cpus=0 if res["gpus"] else 1,
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from batch.to_pylist()


class ChunkWriter:
    """Collects rows per chunk and commits a chunk as soon as all its videos are done.

    File names derive from the chunk's work (config key + video ids), so a rerun of the same
    work replaces files rather than adding rows, whatever the date partition.
    """

    def __init__(self, config: JobConfig, plan: Plan):
        self.config, self.plan = config, plan
        self.date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        self.existing = committed_files(config.output.uri, config.output.storage_options)
        self.rows: dict[int, dict[str, list[pa.Table]]] = {}
        self.members: dict[int, list[VideoState]] = {}
        for state in plan.videos:
            self.members.setdefault(state.chunk, []).append(state)
        self.counts = Counter()

    def add(self, state: VideoState, name: str, table: pa.Table) -> None:
        if table.num_rows:
            self.rows.setdefault(state.chunk, {}).setdefault(name, []).append(table)

    def commit_ready(self, force: bool = False) -> None:
        for chunk in sorted(self.members):
            if chunk >= 0 and (force or all(s.done for s in self.members[chunk])):
                self._commit(chunk, self.members.pop(chunk))
        if force and -1 in self.members:  # skipped videos: one history row each
            skipped = self.members.pop(-1)
            self._commit_rows(f"part-{self.plan.run_id}-skipped", skipped, {})

    def _commit(self, chunk: int, states: list[VideoState]) -> None:
        ids = sorted(s.ref.video_id for s in states)
        name = (
            "part-"
            + hashlib.sha256("\n".join([self.plan.config_key, *ids]).encode()).hexdigest()[:16]
        )
        self._commit_rows(name, states, self.rows.pop(chunk, {}))

    def _commit_rows(
        self, name: str, states: list[VideoState], rows: dict[str, list[pa.Table]]
    ) -> None:
        failed = [s.ref.video_id for s in states if s.error]
        sink = TableSink(
            self.config.output.uri, self.config.output.storage_options, self.plan.run_id
        )
        for table_name in (
            "clips",
            "detections",
        ):  # data first, the videos file last: it is the commit
            if table_name not in rows:
                continue
            table = pa.concat_tables(rows[table_name])
            if failed:  # a video is indexed whole or not at all
                table = table.filter(
                    pc.invert(pc.is_in(table.column("video_id"), pa.array(failed)))
                )
            self.counts[table_name] += table.num_rows
            sink.stage_by(table_name, table, "model", {"date": self.date}, part=name)
        sink.stage("videos", videos_table(self.plan, states), {"date": self.date}, part=name)
        targets = set(sink.staged)
        stale = [
            p
            for p in self.existing.get(f"{name}.parquet", [])
            if not any(p.endswith(t) for t in targets)
        ]
        sink.commit()
        for path in stale:  # the same work committed under an earlier date partition
            retrying(
                lambda path=path: sink.fs.rm(path),
                uri_of(sink.fs, path),
                action="remove stale copy",
                storage_options=self.config.output.storage_options,
            )


def run_job(config: JobConfig, *, limit: int | None = None, log: Log = _stderr) -> RunSummary:
    """Index the archive described by `config`; returns the run summary."""
    started = time.monotonic()
    started_at = datetime.now(timezone.utc).isoformat()
    plan = plan_run(config, limit=limit, log=log)
    summary = RunSummary(run_id=plan.run_id, segments=len(plan.units))
    summary.stage_s["plan"] = time.monotonic() - started
    removed = remove_orphans(config.output.uri, config.output.storage_options)
    if removed:
        log(f"removed {len(removed)} files an interrupted run left uncommitted")
    record = {
        "run_id": plan.run_id,
        "started_at": started_at,
        "status": "running",
        "config_key": plan.config_key,
        "config": redact(to_dict(config)),  # secrets in any storage_options never reach the record
        "models": {m.name: m.version for m in plan.models},
        "planned": dict(plan.reasons()),
    }
    write_run_record(config.output.uri, config.output.storage_options, record)
    try:
        writer = _index(config, plan, summary, started, log)
    except BaseException as exc:  # storage down, Ray gone, Ctrl-C: the record says so
        record.update(status="failed", error=scrub(describe(exc), config.output.storage_options))
        with contextlib.suppress(Exception):
            write_run_record(config.output.uri, config.output.storage_options, record)
        raise
    summary.stage_s["total"] = time.monotonic() - started

    for state in plan.videos:
        summary.videos += 1
        if state.reason == SKIP:
            summary.skipped += 1
        elif state.error:
            summary.failed += 1
            stage = state.error.split(":", 1)[0]
            summary.failures[stage] = summary.failures.get(stage, 0) + 1
        else:
            summary.ok += 1
            summary.video_seconds += state.info.duration_s if state.info else 0.0
        summary.frames_decoded += state.frames_decoded
        summary.frames_used += state.frames_used
    summary.clips = writer.counts["clips"]
    summary.detections = writer.counts["detections"]
    summary.wall_s = time.monotonic() - started
    summary.cpus = _cluster_cpus() if plan.units else 1.0
    processed = summary.videos - summary.skipped
    over_budget = processed > 0 and summary.failed / processed > config.max_failed_fraction
    record.update(
        status="failed" if over_budget else "ok",
        finished_at=datetime.now(timezone.utc).isoformat(),
        counts={
            "videos": summary.videos,
            "ok": summary.ok,
            "failed": summary.failed,
            "skipped": summary.skipped,
            "clips": summary.clips,
            "detections": summary.detections,
        },
        failures=summary.failures,
        timings=summary.stage_s,
        wall_s=summary.wall_s,
    )
    write_run_record(config.output.uri, config.output.storage_options, record)
    return summary


def _index(
    config: JobConfig, plan: Plan, summary: RunSummary, started: float, log: Log
) -> ChunkWriter:
    """Decode and infer every planned segment, committing each chunk as soon as it is done."""
    writer = ChunkWriter(config, plan)
    by_id = {s.ref.video_id: s for s in plan.videos}
    total = sum(1 for s in plan.videos if s.reason != SKIP)
    done, last_report = sum(1 for s in plan.videos if s.reason != SKIP and s.done), 0.0
    writer.commit_ready()
    if plan.units:
        for row in _segment_results(config, plan, log):
            state = by_id[row["video_id"]]
            state.segments_done += 1
            state.frames_decoded += row["frames_decoded"]
            state.frames_used += row["frames_used"]
            if row["error"] and not state.error:
                state.error = row["error"]
            writer.add(state, "clips", tables.from_ipc(row["clips"]))
            writer.add(state, "detections", tables.from_ipc(row["detections"]))
            if state.segments_done == state.segments:
                done += 1
                writer.commit_ready()
            if time.monotonic() - last_report > 5 or done == total:
                log(f"progress: {done}/{total} videos done")
                last_report = time.monotonic()
    summary.stage_s["decode+infer"] = time.monotonic() - started - summary.stage_s["plan"]
    writer.commit_ready(force=True)
    return writer


def _cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1.0


def videos_table(plan: Plan, states: list[VideoState]) -> pa.Table:
    now = datetime.now(timezone.utc)
    rows = []
    for s in states:
        info = s.info
        status = "skipped" if s.reason == SKIP else ("failed" if s.error else "ok")
        rows.append(
            {
                "video_id": s.ref.video_id,
                "uri": s.ref.uri,
                "size_bytes": s.ref.size_bytes,
                "etag": s.ref.etag,
                "mtime": s.ref.mtime,
                "duration_s": info.duration_s if info else None,
                "fps": info.fps if info else None,
                "width": info.width if info else None,
                "height": info.height if info else None,
                "codec": info.codec if info else None,
                "status": status,
                "error": s.error,
                "segments": s.segments,
                "frames_decoded": s.frames_decoded,
                "frames_used": s.frames_used,
                "config_key": plan.config_key,
                "run_id": plan.run_id,
                "processed_at": now,
            }
        )
    return pa.Table.from_pylist(rows, schema=tables.VIDEOS)
