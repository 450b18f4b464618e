"""The indexing job: list -> decide (an Arrow join against the current index) -> on Ray, a
stream of probe+plan -> decode+infer -> write files -> the driver commits chunk by chunk.

The driver holds the listing, the decision and the state of the chunks in flight; rows of
results never pass through it, only descriptions of the files workers wrote. A chunk of
`resources.commit_every` videos is committed as soon as its last work unit is written, so a
killed driver loses at most the chunks in flight and the same command finishes the work.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vidbatch.config import JobConfig, to_dict
from vidbatch.errors import ConfigError, describe
from vidbatch.index import tables
from vidbatch.index.delta import DataFile
from vidbatch.index.store import ChunkCommit, IndexStore
from vidbatch.job import plan as planning
from vidbatch.job.catalog import list_videos
from vidbatch.job.progress import Progress
from vidbatch.job.stages import (
    DecodeInferStage,
    DecodeStage,
    InferenceStage,
    ProbeStage,
    WriteStage,
    shots_of,
)
from vidbatch.specs import ClipSpec, FrameSpec, ShotSpec
from vidbatch.storage import redact, scrub

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class RunSummary:
    run_id: str
    listed: int = 0
    planned: dict[str, int] = field(default_factory=dict)  # reason -> videos
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # not processed: indexed already (or out of retries)
    clips: int = 0
    detections: int = 0
    shots: int = 0
    segments: int = 0
    video_seconds: float = 0.0
    frames_decoded: int = 0
    frames_used: int = 0
    frames_delivered: int = 0  # detector frames, distinct (keyframes mode delivers fewer)
    wall_s: float = 0.0
    cpus: float = 1.0
    stage_s: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # failure stage -> videos

    @property
    def videos(self) -> int:
        return self.listed

    @property
    def processed(self) -> int:
        return self.ok + self.failed

    def failed_fraction(self) -> float:
        """Failures among the videos this run processed (skipped ones are not in it)."""
        return self.failed / self.processed if self.processed else 0.0

    def over_budget(self, max_failed_fraction: float) -> bool:
        return self.failed_fraction() > max_failed_fraction

    def line(self) -> str:
        core_hours = max(self.wall_s * self.cpus / 3600, 1e-9)
        return (
            f"run {self.run_id}: {self.listed} videos ({self.ok} ok, {self.failed} failed, "
            f"{self.skipped} skipped), {self.clips} clips, {self.detections} detections, "
            f"{self.shots} shots, {self.video_seconds / 3600:.3f} video-hours in {self.wall_s:.1f}s "
            f"({self.video_seconds / 3600 / core_hours:.1f} video-hours/core-hour), "
            f"frames decoded/used {self.frames_decoded}/{self.frames_used}, "
            + (
                f"detector frames {self.frames_delivered / self.video_seconds:.2f}/s of video, "
                if self.frames_delivered and self.video_seconds
                else ""
            )
            + "stages "
            + " ".join(f"{k} {v:.1f}s" for k, v in self.stage_s.items())
        )


@dataclass
class Plan:
    """Everything decided before any decoding: what `--dry-run` prints."""

    run_id: str
    models: list[Any]
    config_key: str
    row_config: dict[str, Any]
    config: JobConfig
    listed: pa.Table  # every listed video with its reason (vidbatch.job.plan.decide)
    todo: pa.Table  # the videos this run processes, with their chunk
    changed: list[str]  # row-deciding config keys changed since the last run

    def reasons(self) -> dict[str, int]:
        return planning.reason_counts(self.listed)

    @property
    def clip_specs(self) -> tuple[ClipSpec, ...]:
        return tuple(dict.fromkeys(m.clip for m in self.models if m.task == "classify"))

    @property
    def shot_spec(self) -> tuple[ShotSpec | None, int]:
        """What the shot models see (one spec for all of them) and their context in frames."""
        shots = [m for m in self.models if m.task == "shots"]
        if len({m.shot for m in shots}) > 1:
            raise ConfigError("models: shot models with different inputs in one job")
        return (shots[0].shot, max(m.context_frames for m in shots)) if shots else (None, 0)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def describe_models(config: JobConfig) -> list[Any]:
    """Each model's task, input and version from its metadata, on the driver, without building
    it: unknown names and bad weights fail before Ray starts."""
    from vidbatch.models import describe_model

    found = []
    for i, m in enumerate(config.models):
        try:
            found.append(describe_model(m.name, m.weights, m.storage_options))
        except (ValueError, FileNotFoundError, OSError) as exc:
            raise ConfigError(f"models[{i}] ({m.name}): {describe(exc)}") from exc
    return found


def plan_run(
    config: JobConfig, *, limit: int | None = None, retry_failed: bool = False, log: Log = _stderr
) -> Plan:
    """List the source and decide, against the current index, what this run processes."""
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit {limit}: must be >= 0")
    models = describe_models(config)
    if config.sampling.decode_mode == "keyframes" and any(m.task == "classify" for m in models):
        raise ConfigError(
            "sampling.decode_mode: keyframes only suits detectors; clip classifiers need every frame"
        )
    if config.sampling.clips.align == "shots" and not any(m.task == "shots" for m in models):
        raise ConfigError(
            "sampling.clips.align: shots needs a shot model in models (e.g. {name: transnetv2})"
        )
    row_config = planning.row_config(config, models)
    key = planning.config_key(config, models)
    store = IndexStore(config.output.uri, config.output.storage_options)
    listed = planning.listing_table(list_videos(config.source.uri, config.source.storage_options))
    current = store.current_videos(["uri", "video_id", "status", "config_key", "attempts"])
    decided = planning.decide(
        listed,
        current,
        key,
        incremental=config.incremental,
        max_retries=config.max_retries,
        retry_failed=retry_failed,
    )
    todo = planning.to_process(decided, limit)
    chunks = pa.array(
        [i // config.resources.commit_every for i in range(todo.num_rows)], pa.int64()
    )
    todo = todo.append_column("chunk", chunks)
    return Plan(
        new_run_id(),
        models,
        key,
        row_config,
        config,
        decided,
        todo,
        _changed_since_last_run(store, row_config),
    )


def _changed_since_last_run(store: IndexStore, row_config: dict[str, Any]) -> list[str]:
    runs = store.runs() if store.exists() else tables.empty("runs")
    finished = runs.filter(pc.is_valid(runs.column("finished_at"))).sort_by(
        [("started_at", "descending")]
    )
    for text in finished.column("config").to_pylist():
        if text:
            previous = json.loads(text).get("rows")
            if previous is not None:
                return planning.changed_keys(previous, row_config)
    return []


@dataclass
class VideoProgress:
    """What the driver knows of a video while its work units come back."""

    segments: int = 0  # planned; known from its first result
    done: int = 0
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    frames_decoded: int = 0
    frames_used: int = 0
    frames_delivered: int = 0
    transitions: dict[str, list[list[float]]] = field(default_factory=dict)  # shot model -> cuts

    @property
    def finished(self) -> bool:
        return self.segments > 0 and self.done >= self.segments


class ChunkTracker:
    """Collects work-unit results per chunk and hands back each chunk once all its videos are
    done. Holds state for the chunks in flight only."""

    def __init__(self, todo: pa.Table, commit_every: int) -> None:
        self.todo, self.commit_every = todo, commit_every
        self.pending: dict[int, dict[str, VideoProgress]] = {}
        self.files: dict[int, list[DataFile]] = {}
        self.rows: dict[str, int] = {name: 0 for name in tables.MODEL_TABLES}

    def chunk_rows(self, chunk: int) -> pa.Table:
        return self.todo.slice(chunk * self.commit_every, self.commit_every)

    def add(self, result: dict[str, Any]) -> tuple[int, VideoProgress | None]:
        """Record one work unit; returns (chunk, the video's progress if it just finished)."""
        chunk = int(result["chunk"])
        videos = self.pending.get(chunk)
        if videos is None:
            ids = self.chunk_rows(chunk).column("video_id").to_pylist()
            videos = self.pending[chunk] = {video_id: VideoProgress() for video_id in ids}
        self.files.setdefault(chunk, []).extend(
            DataFile.from_json(f) for f in json.loads(result["files"])
        )
        for name, count in json.loads(result["rows"]).items():
            self.rows[name] += count
        video = videos[result["video_id"]]
        video.segments = int(result["segment_count"])
        video.done += 1
        video.frames_decoded += int(result["frames_decoded"])
        video.frames_used += int(result["frames_used"])
        video.frames_delivered += int(result["frames_delivered"])
        if result["error"] and video.error is None:
            video.error = result["error"]
        for model, cuts in json.loads(result["transitions"] or "{}").items():
            video.transitions.setdefault(model, []).extend(cuts)
        if not video.info and result["duration_s"] is not None:
            video.info = {k: result[k] for k in ("duration_s", "fps", "width", "height", "codec")}
        return chunk, video if video.finished else None

    def complete(self, chunk: int) -> bool:
        return all(v.finished for v in self.pending[chunk].values())

    def pop(self, chunk: int) -> tuple[pa.Table, dict[str, VideoProgress], list[DataFile]]:
        return self.chunk_rows(chunk), self.pending.pop(chunk), self.files.pop(chunk, [])


def videos_rows(plan: Plan, chunk: pa.Table, progress: dict[str, VideoProgress]) -> pa.Table:
    """The chunk's `videos` rows: one per video, its current state."""
    now = datetime.now(timezone.utc)
    rows = []
    for video in chunk.to_pylist():
        state = progress[video["video_id"]]
        info = state.info
        failed = state.error is not None
        rows.append(
            {
                "video_id": video["video_id"],
                "uri": video["uri"],
                "size_bytes": video["size_bytes"],
                "etag": video["etag"],
                "mtime": video["mtime"],
                **{k: info.get(k) for k in ("duration_s", "fps", "width", "height", "codec")},
                "status": "failed" if failed else "ok",
                "error": scrub(state.error, plan.config.source.storage_options) if failed else None,
                "attempts": video["attempts"] if failed else 0,
                "segments": 0 if failed and not info else state.segments,
                "frames_decoded": state.frames_decoded,
                "frames_used": state.frames_used,
                "config_key": plan.config_key,
                "run_id": plan.run_id,
                "processed_at": now,
            }
        )
    return pa.Table.from_pylist(rows, schema=tables.VIDEOS)


def shots_rows(
    plan: Plan, chunk: pa.Table, progress: dict[str, VideoProgress], failed: frozenset[str]
) -> pa.Table:
    """The chunk's `shots` rows, per video and shot model, from the transitions its work units
    found (a few per minute of video): shots need the whole video, so they are cut here."""
    models = {m.name: m for m in plan.models if m.task == "shots"}
    if not models:
        return tables.empty("shots")
    thresholds: dict[str, float] = {}
    for config in plan.config.models:
        if config.name in models:
            thresholds.setdefault(config.name, config.threshold)
    rows = []
    for video in chunk.to_pylist():
        state = progress[video["video_id"]]
        if video["video_id"] in failed:
            continue
        duration = float(state.info.get("duration_s") or 0.0)
        for name, model in models.items():
            for shot in shots_of(state.transitions.get(name, []), duration, thresholds[name]):
                rows.append(
                    {
                        "video_id": video["video_id"],
                        "uri": video["uri"],
                        **shot._asdict(),
                        "model": name,
                        "model_version": model.version,
                        "run_id": plan.run_id,
                    }
                )
    return pa.Table.from_pylist(rows, schema=tables.SHOTS)


def run_job(
    config: JobConfig,
    *,
    limit: int | None = None,
    retry_failed: bool = False,
    log: Log = _stderr,
    show_progress: bool = True,
    verbose: bool = False,
) -> RunSummary:
    """Index the archive `config` describes; returns the run summary.

    A run with nothing to process starts no Ray. One writer per output: a second concurrent
    run is refused (IndexBusyError) before it writes anything."""
    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    plan = plan_run(config, limit=limit, retry_failed=retry_failed, log=log)
    store = IndexStore(config.output.uri, config.output.storage_options)
    summary = RunSummary(run_id=plan.run_id, listed=plan.listed.num_rows, planned=plan.reasons())
    summary.skipped = summary.listed - plan.todo.num_rows
    summary.stage_s["plan"] = time.monotonic() - started
    log(
        f"listed {summary.listed} videos under {scrub(config.source.uri)}: "
        f"{plan.todo.num_rows} to index ("
        + ", ".join(f"{n} {reason}" for reason, n in summary.planned.items())
        + ")"
    )
    record = {
        "run_id": plan.run_id,
        "started_at": started_at,
        "status": "running",
        "config_key": plan.config_key,
        "config": json.dumps(
            {"job": redact(to_dict(config)), "rows": plan.row_config}, default=str
        ),
        "models": {m.name: m.version for m in plan.models},
        "listed": summary.listed,
        "planned": summary.planned,
    }
    with store.lease(plan.run_id) as lease:
        store.ensure_tables()
        restored = store.recover()
        if restored:
            log(f"restored {', '.join(restored)} to the last complete commit (an interrupted run)")
        store.write_run(record)
        sequence = 0
        try:
            if plan.todo.num_rows:
                sequence = _index(config, plan, store, lease, summary, log, show_progress, verbose)
            if config.prune and limit is None:
                removed = store.prune(plan.listed.column("uri"), plan.run_id, sequence + 1)
                if removed:
                    log(f"pruned {removed} videos no longer at the source")
            if config.compact:
                store.compact()
        except BaseException as exc:  # storage down, Ray gone, Ctrl-C: the record says so
            record.update(
                status="failed",
                error=scrub(describe(exc), config.output.storage_options),
                finished_at=datetime.now(timezone.utc),
            )
            try:
                store.write_run(record)
            except Exception as inner:  # the original error matters more
                log(
                    f"run record not updated: {scrub(describe(inner), config.output.storage_options)}"
                )
            raise
        summary.wall_s = time.monotonic() - started
        summary.stage_s["total"] = summary.wall_s
        record.update(
            status="failed" if summary.over_budget(config.max_failed_fraction) else "ok",
            finished_at=datetime.now(timezone.utc),
            **{
                k: getattr(summary, k)
                for k in ("ok", "failed", "skipped", "clips", "detections", "shots")
            },
            **{
                k: getattr(summary, k)
                for k in ("segments", "video_seconds", "frames_decoded", "frames_used")
            },
            failures=summary.failures,
            timings=summary.stage_s,
            wall_s=summary.wall_s,
        )
        store.write_run(record)
    return summary


def _index(
    config: JobConfig,
    plan: Plan,
    store: IndexStore,
    lease: Any,
    summary: RunSummary,
    log: Log,
    show_progress: bool,
    verbose: bool,
) -> int:
    """Run the Ray pipeline, committing each chunk when done; returns the last commit number."""
    from vidbatch.job.ray import cluster_nodes, cluster_resources, size_job, start_ray

    begun = time.monotonic()
    start_ray(verbose=verbose)
    summary.stage_s["ray start"] = time.monotonic() - begun
    cluster = cluster_resources()
    summary.cpus = float(cluster.get("CPU", 1))
    sizing = size_job(cluster, config.resources, plan.todo.num_rows, cluster_nodes())
    where = f"{sizing.gpus_per_actor:g} GPU each" if sizing.gpus_per_actor else "CPU"
    decoding = "decoding in them" if sizing.fused else f"{sizing.decode_actors} decode worker(s)"
    log(
        f"indexing {plan.todo.num_rows} videos: {sizing.inference_actors} inference worker(s) "
        f"on {where}, {decoding}"
    )
    tracker = ChunkTracker(plan.todo, config.resources.commit_every)
    progress = Progress(plan.todo.num_rows, log=log, enabled=show_progress)
    models = frozenset(m.name for m in plan.models)
    sequence = 0
    commit_s = 0.0
    try:
        for result in _results(config, plan, store, sizing):
            # What a run pays before any work comes back (workers starting, models loading).
            summary.stage_s.setdefault("first result", time.monotonic() - begun)
            progress.segment_done()
            chunk, video = tracker.add(result)
            if video is not None:
                progress.video_done(
                    float(video.info.get("duration_s") or 0.0), video.error is not None
                )
            if tracker.complete(chunk):
                sequence += 1
                committing = time.monotonic()
                _commit(plan, store, lease, tracker, chunk, sequence, models, summary)
                commit_s += time.monotonic() - committing
                summary.stage_s.setdefault("first commit", time.monotonic() - begun)
                progress.chunk_committed()
    finally:
        progress.close()
    summary.stage_s["commits"] = commit_s
    summary.clips, summary.detections, summary.shots = (
        tracker.rows["clips"],
        tracker.rows["detections"],
        tracker.rows["shots"],
    )
    summary.stage_s["index"] = time.monotonic() - begun
    return sequence


def _commit(
    plan: Plan,
    store: IndexStore,
    lease: Any,
    tracker: ChunkTracker,
    chunk: int,
    sequence: int,
    models: frozenset[str],
    summary: RunSummary,
) -> None:
    rows, progress, files = tracker.pop(chunk)
    videos = videos_rows(plan, rows, progress)
    failed = frozenset(v for v, p in progress.items() if p.error is not None)
    shots = shots_rows(plan, rows, progress, failed)
    if shots.num_rows:
        files = [*files, *store.write_rows("shots", shots)]
        tracker.rows["shots"] += shots.num_rows
    known = rows.filter(rows.column("known")).column("uri").to_pylist()
    store.commit_chunk(
        ChunkCommit(
            sequence=sequence,
            run_id=plan.run_id,
            videos=videos,
            files=files,
            replace_uris=known,
            models=models,
            failed_ids=failed,
        ),
        lease,
    )
    for state in progress.values():
        summary.segments += state.segments if state.info else 0
        summary.frames_decoded += state.frames_decoded
        summary.frames_used += state.frames_used
        summary.frames_delivered += state.frames_delivered if state.error is None else 0
        if state.error is not None:
            summary.failed += 1
            stage = state.error.split(":", 1)[0]
            summary.failures[stage] = summary.failures.get(stage, 0) + 1
        else:
            summary.ok += 1
            summary.video_seconds += float(state.info.get("duration_s") or 0.0)


def _results(
    config: JobConfig, plan: Plan, store: IndexStore, sizing: Any
) -> Iterator[dict[str, Any]]:
    """Build the Ray Data stream and yield one small result row per work unit."""
    from vidbatch.job.ray import apply_stage, from_videos, split_blocks

    todo = plan.todo.select(["video_id", "uri", "source", "size_bytes", "error", "chunk"])
    workers = max(sizing.decode_actors, sizing.inference_actors)  # the parallelism downstream
    ds = from_videos(todo, max(1, min(64, todo.num_rows // (4 * workers))))
    probe = ProbeStage(
        storage_options=dict(config.source.storage_options),
        segment_seconds=config.sampling.segment_seconds,
        clip_specs=plan.clip_specs,
        limits=config.limits,
        timeout_s=config.resources.probe_timeout_s,
    )
    # Probing runs as tasks (a sandbox per block of videos); the split into blocks of work
    # units fuses into them. Small jobs get a unit per block (every worker busy), large ones
    # up to 16 (Ray's cost is per block). One probe task per node at a time: more would take
    # the CPU the write tasks are sized for, and no chunk would commit before probing ends.
    ds = apply_stage(ds, probe, actors=None, tasks=sizing.probe_tasks)
    units_per_block = max(1, min(16, todo.num_rows // (8 * workers)))
    ds = split_blocks(ds, units_per_block, probe.num_cpus)
    frame_spec: FrameSpec | None = (
        config.sampling.frames if any(m.task == "detect" for m in plan.models) else None
    )
    shot_spec, context_frames = plan.shot_spec
    align_shots = config.sampling.clips.align == "shots"
    decode = DecodeStage(
        clip_specs=plan.clip_specs,
        frame_spec=frame_spec,
        shot_spec=shot_spec,
        shot_context_frames=context_frames,
        align_shots=align_shots,
        storage_options=dict(config.source.storage_options),
        mode=config.sampling.decode_mode,
        timeout_s=config.resources.decode_timeout_s,
    )
    infer = InferenceStage(
        models=config.models,
        clip_specs=plan.clip_specs,
        run_id=plan.run_id,
        align_shots=align_shots,
        model_batch_size=sizing.model_batch_size,
    )
    if sizing.fused:
        fused = DecodeInferStage(decode=decode, infer=infer)
        ds = apply_stage(
            ds, fused, actors=sizing.inference_actors, num_cpus=sizing.cpus_per_inference
        )
    else:
        ds = apply_stage(ds, decode, actors=sizing.decode_actors, num_cpus=sizing.cpus_per_decoder)
        ds = apply_stage(
            ds,
            infer,
            actors=sizing.inference_actors,
            num_cpus=sizing.cpus_per_inference,
            num_gpus=sizing.gpus_per_actor,
        )
    ds = apply_stage(ds, WriteStage(store=store), actors=None)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from batch.to_pylist()
