"""The indexing job: list -> probe -> plan -> (Ray Data) decode -> infer -> commit tables."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from vidbatch import tables
from vidbatch.catalog import VideoRef, list_videos
from vidbatch.config import JobConfig, to_dict
from vidbatch.decode import VideoInfo, probe
from vidbatch.errors import ConfigError, StageError, describe
from vidbatch.planning import plan_segments
from vidbatch.sink import TableSink
from vidbatch.specs import ClipSpec
from vidbatch.stages import DecodeStage, InferenceStage, WorkUnit


@dataclass
class VideoState:
    """What the driver knows of one video during a run."""

    ref: VideoRef
    info: VideoInfo | None = None
    error: str | None = None
    segments: int = 0
    segments_done: int = 0
    frames_decoded: int = 0
    frames_used: int = 0


@dataclass
class RunSummary:
    run_id: str
    videos: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    clips: int = 0
    segments: int = 0
    video_seconds: float = 0.0
    frames_decoded: int = 0
    frames_used: int = 0
    wall_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    output_uri: str = ""

    def line(self) -> str:
        used = max(self.frames_used, 1)
        return (
            f"run {self.run_id}: {self.videos} videos ({self.ok} ok, {self.failed} failed, "
            f"{self.skipped} skipped), {self.clips} clips, {self.video_seconds / 3600:.3f} video-hours, "
            f"frames decoded/used {self.frames_decoded}/{self.frames_used} "
            f"({self.frames_decoded / used:.2f}x), wall {self.wall_s:.1f}s"
        )


@dataclass(frozen=True)
class Plan:
    """Everything decided before decoding: what `--dry-run` prints."""

    run_id: str
    videos: list[VideoState]
    units: list[WorkUnit]
    clip_specs: tuple[ClipSpec, ...]
    models: list[Any]
    config_key: str


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def config_key(config: JobConfig, models: list[Any]) -> str:
    """Hash of what decides a video's rows: sampling and model versions (not paths or resources)."""
    data = {
        "sampling": to_dict(config.sampling),
        "models": [
            {"name": m.name, "version": m.version, "top_k": c.top_k}
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
            loaded.append(load_model(m.name, m.weights, storage_options=m.storage_options, device="cpu"))
        except (ValueError, FileNotFoundError, OSError) as exc:
            raise ConfigError(f"models[{i}] ({m.name}): {describe(exc)}") from exc
    return loaded


def plan_run(config: JobConfig, *, limit: int | None = None, log: Callable[[str], None] = print) -> Plan:
    models = load_models(config)
    refs = list_videos(config.source.uri, config.source.storage_options, limit=limit)
    log(f"listed {len(refs)} videos under {config.source.uri}")
    clip_specs = tuple(dict.fromkeys(m.clip for m in models if m.task == "classify"))
    states = [VideoState(ref=r, error=r.error) for r in refs]

    def probe_one(state: VideoState) -> None:
        if state.error:
            return
        if state.ref.size_bytes == 0:
            state.error = "probe: empty file (0 bytes)"
            return
        try:
            state.info = probe(state.ref.uri, config.source.storage_options)
        except StageError as exc:
            state.error = str(exc)
        except Exception as exc:  # one unreadable file must not stop the listing
            state.error = f"probe: {describe(exc)}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(probe_one, states))

    units = []
    for state in states:
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
    return Plan(new_run_id(), states, units, clip_specs, models, config_key(config, models))


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
    per_actor = (1.0 if gpus else 0.0) if res.gpus_per_actor == "auto" else float(res.gpus_per_actor)
    if res.actors == "auto":
        # CPU-only, Ray fuses decode into the inference actors: one actor per core decodes in parallel.
        actors = int(gpus // per_actor) if per_actor else max(1, int(cluster.get("CPU", 1)))
    else:
        actors = int(res.actors)
    batch = (32 if per_actor else 8) if res.batch_size == "auto" else int(res.batch_size)
    return {"gpus": per_actor, "actors": max(1, min(actors, segments)), "batch_size": batch}


def run_job(
    config: JobConfig,
    *,
    limit: int | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> RunSummary:
    """Index the archive described by `config`; returns the run summary."""
    started = time.monotonic()
    plan = plan_run(config, limit=limit, log=log)
    summary = RunSummary(run_id=plan.run_id, output_uri=config.output.uri)
    summary.stage_s["plan"] = time.monotonic() - started
    by_id = {s.ref.video_id: s for s in plan.videos}
    clip_tables: list[pa.Table] = []

    if plan.units:
        _ray_init()
        import ray.data

        res = _resources(config, len(plan.units))
        log(
            f"decoding {len(plan.units)} segments of {sum(1 for s in plan.videos if s.info)} videos "
            f"with {res['actors']} inference actor(s), {res['gpus']:g} GPU each"
        )
        items = [asdict(u) for u in plan.units]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        decode = DecodeStage(plan.clip_specs, None, dict(config.source.storage_options))
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
        total = sum(1 for s in plan.videos if s.info)
        done, last_report = 0, 0.0
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                state = by_id[row["video_id"]]
                state.segments_done += 1
                state.frames_decoded += row["frames_decoded"]
                state.frames_used += row["frames_used"]
                if row["error"] and not state.error:
                    state.error = row["error"]
                clip_tables.append(tables.from_ipc(row["clips"]))
                if state.segments_done == state.segments:
                    done += 1
            if time.monotonic() - last_report > 2 or done == total:
                log(f"progress: {done}/{total} videos done")
                last_report = time.monotonic()
        summary.stage_s["decode+infer"] = time.monotonic() - started - summary.stage_s["plan"]

    commit_started = time.monotonic()
    clips = pa.concat_tables(clip_tables) if clip_tables else tables.empty("clips")
    failed_ids = {s.ref.video_id for s in plan.videos if s.error}
    if failed_ids and clips.num_rows:
        # A video is indexed whole or not at all: drop rows of partly failed videos.
        import pyarrow.compute as pc

        clips = clips.filter(pc.invert(pc.is_in(clips.column("video_id"), pa.array(list(failed_ids)))))
    videos = videos_table(plan, by_id.values())
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    # Named by the work, not the run: the same job run again replaces its files instead of adding.
    part = "part-" + hashlib.sha256(
        "\n".join([plan.config_key, *sorted(by_id)]).encode()
    ).hexdigest()[:16]
    sink = TableSink(config.output.uri, config.output.storage_options, plan.run_id)
    sink.stage("videos", videos, {"date": date}, part=part)
    sink.stage_by("clips", clips, "model", {"date": date}, part=part)
    sink.commit()
    summary.stage_s["commit"] = time.monotonic() - commit_started

    for state in plan.videos:
        summary.videos += 1
        if state.error:
            summary.failed += 1
            stage = state.error.split(":", 1)[0]
            summary.failures[stage] = summary.failures.get(stage, 0) + 1
        else:
            summary.ok += 1
            summary.video_seconds += state.info.duration_s if state.info else 0
        summary.frames_decoded += state.frames_decoded
        summary.frames_used += state.frames_used
    summary.clips = clips.num_rows
    summary.segments = len(plan.units)
    summary.wall_s = time.monotonic() - started
    return summary


def videos_table(plan: Plan, states: Any) -> pa.Table:
    now = datetime.now(timezone.utc)
    rows = []
    for s in states:
        info = s.info
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
                "status": "failed" if s.error else "ok",
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
