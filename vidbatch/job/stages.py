"""The job's stages, in NeMo Curator's shape: a small dataclass built on the driver (its fields
are the stage's whole configuration), `setup()` on the worker that runs it (open the decode
sandbox, load the models), `process(batch)` per batch, `teardown()` when the worker goes.
Resources and batch sizes are declared on the stage; `vidbatch.job.ray` turns stages into Ray
Data calls. Per-video failures are data (an `error` column, "stage: message"), never raised.

Rows flowing through the job, one per work unit (a segment of a video):
probe -> (video_id, uri, source, chunk, segment_index, segment_count, start_s, end_s, video
info, error) -> decode adds the sampled pixels -> infer replaces them with result tables ->
write replaces those with the descriptions of the files written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from vidbatch.config import Limits, ModelConfig
from vidbatch.errors import StageError, describe
from vidbatch.index import tables
from vidbatch.index.store import IndexStore
from vidbatch.job.plan import (
    Segment,
    check_limits,
    clip_starts,
    frame_times,
    in_segment,
    plan_segments,
)
from vidbatch.media.isolation import Sandbox, bound_heap, run_isolated
from vidbatch.specs import ClipSpec, FrameSpec, ShotSpec

# What the probe stage emits per work unit, and every later stage carries along.
UNIT = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("source", pa.string()),  # what decoding opens (may carry credentials; never stored)
        ("chunk", pa.int64()),
        ("segment_index", pa.int32()),
        ("segment_count", pa.int32()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("codec", pa.string()),
        ("stream_start_s", pa.float64()),  # the first frame's time in the container
        ("error", pa.string()),  # "" when fine: a string column in every block
    ]
)
# What reaches the driver per work unit: no pixels, no result rows.
RESULT = pa.schema(
    [
        *[UNIT.field(name) for name in UNIT.names if name != "source"],
        ("frames_decoded", pa.int64()),
        ("frames_used", pa.int64()),
        ("frames_delivered", pa.int64()),  # distinct detector frames (keyframes mode: fewer)
        ("rows", pa.string()),  # JSON: rows written per table
        ("files", pa.string()),  # JSON: DataFile descriptions (on one row per chunk and batch)
        ("transitions", pa.string()),  # JSON: shot model -> [[time, probability, next time]]
    ]
)


class Stage:
    """Constructed on the driver; set up, run and torn down on a Ray worker."""

    name: ClassVar[str] = "stage"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int | None = 1  # rows per process() call
    batch_format: ClassVar[str] = "pyarrow"

    def setup(self) -> None:
        """Acquire what the stage holds for its lifetime (a sandbox, models)."""

    def process(self, batch: Any) -> Any:
        raise NotImplementedError

    def teardown(self) -> None:
        """Release what setup() acquired."""


@dataclass
class ProbeStage(Stage):
    """Probe each video (isolated, with a deadline), check the limits and cut it into work
    units. A video that cannot be planned becomes one unit carrying its error."""

    name: ClassVar[str] = "probe"
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold secrets
    segment_seconds: float = 120.0
    clip_specs: tuple[ClipSpec, ...] = ()
    limits: Limits = Limits()
    timeout_s: float = 60.0
    num_cpus: float = 0.25  # mostly waiting on storage
    batch_size: int | None = None  # a whole block of videos per call
    sandbox: Sandbox | None = field(default=None, init=False, repr=False)

    def setup(self) -> None:
        bound_heap()
        self.sandbox = Sandbox(self.timeout_s) if self.timeout_s else None

    def process(self, batch: pa.Table) -> pa.Table:
        from vidbatch.media.decode import probe

        units: list[dict[str, Any]] = []
        for video in batch.to_pylist():
            base = {
                "video_id": video["video_id"],
                "uri": video["uri"],
                "source": video["source"],
                "chunk": video["chunk"],
            }
            try:
                if video["error"]:
                    raise StageError(*video["error"].split(": ", 1))
                if not video["size_bytes"]:
                    raise StageError("probe", "empty file (0 bytes)")
                info = run_isolated(
                    self.sandbox, "probe", probe, video["source"], self.storage_options
                )
                check_limits(
                    info.duration_s,
                    video["size_bytes"],
                    self.limits,
                    self.segment_seconds,
                    self.clip_specs,
                    info.packets_end_s,
                )
            except StageError as exc:
                units.append(_failed_unit(base, str(exc)))
                continue
            except Exception as exc:  # one unreadable file must not stop the others
                units.append(_failed_unit(base, f"probe: {describe(exc)}"))
                continue
            segments = plan_segments(info.duration_s, self.segment_seconds, self.clip_specs)
            described = {
                "duration_s": info.duration_s,
                "fps": info.fps,
                "width": info.width,
                "height": info.height,
                "codec": info.codec,
                "stream_start_s": info.start_s,
                "error": "",
            }
            units.extend(
                {
                    **base,
                    **described,
                    "segment_index": s.index,
                    "segment_count": len(segments),
                    "start_s": s.start_s,
                    "end_s": s.end_s,
                }
                for s in segments
            )
        return pa.Table.from_pylist(units, schema=UNIT)

    def teardown(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()


def _failed_unit(base: Mapping[str, Any], error: str) -> dict[str, Any]:
    return {
        **base,
        "segment_index": 0,
        "segment_count": 1,
        "start_s": 0.0,
        "end_s": 0.0,
        "error": error,
    }


@dataclass
class DecodeStage(Stage):
    """Decode a work unit once; sample every clip spec and the detector frames from that pass.

    With `timeout_s` > 0 the decode runs in a child process (`vidbatch.media.isolation`),
    created in setup() and closed in teardown(): a decoder that crashes or hangs on one file
    fails that unit, not the worker.
    """

    name: ClassVar[str] = "decode"
    batch_format: ClassVar[str] = "numpy"
    clip_specs: tuple[ClipSpec, ...] = ()
    frame_spec: FrameSpec | None = None
    shot_spec: ShotSpec | None = None
    shot_context_frames: int = 0  # frames of context a shot model needs each side of a range
    align_shots: bool = False  # clips along shots: every frame at each clip size, no grid
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold secrets
    mode: str = "seek"
    timeout_s: float = 0.0
    sandbox: Sandbox | None = field(default=None, init=False, repr=False)

    def setup(self) -> None:
        bound_heap()
        self.sandbox = Sandbox(self.timeout_s) if self.timeout_s else None

    def teardown(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()

    def process(self, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
        rows = [self.decode(_row(batch, i)) for i in range(len(batch["video_id"]))]
        return {key: _column([r[key] for r in rows]) for key in rows[0]} if rows else {}

    def decode(self, row: dict[str, Any]) -> dict[str, Any]:
        from vidbatch.media.decode import decode_samples

        out: dict[str, Any] = {**row, "frames_decoded": 0, "frames_used": 0, "frames_delivered": 0}
        segment = Segment(int(row["segment_index"]), float(row["start_s"]), float(row["end_s"]))
        last = _is_last(row)
        duration = 0.0 if row["error"] else float(row["duration_s"])  # a failed unit has none
        starts = {
            spec: in_segment(clip_starts(duration, spec), segment, last)
            if duration and not self.align_shots
            else []
            for spec in self.clip_specs
        }
        times = (
            in_segment(frame_times(duration, self.frame_spec), segment, last)
            if self.frame_spec and duration
            else []
        )
        shot_range = None
        if self.shot_spec is not None:  # the unit's frames, and context frames on each side
            context = self.shot_context_frames / (float(row["fps"] or 0) or 30.0)
            end = math.inf if last else segment.end_s + context
            shot_range = (max(0.0, segment.start_s - context), end)
        sampled = None
        if not row["error"]:
            try:
                sampled = run_isolated(
                    self.sandbox,
                    "decode",
                    decode_samples,
                    str(row["source"]),
                    clips=starts,
                    frame_spec=self.frame_spec,
                    frame_times=times,
                    shots=self.shot_spec,
                    shot_range=shot_range,
                    every_clip=self.clip_specs if self.align_shots else (),
                    storage_options=self.storage_options,
                    mode=self.mode,
                    info=_probed(row, duration),
                )
            except StageError as exc:
                out["error"] = str(exc)
            except Exception as exc:  # a decoder bug must cost one video, not the job
                out["error"] = f"decode: {describe(exc)}"
        if sampled is not None:
            out["frames_decoded"] = sampled.frames_decoded
            out["frames_used"] = sampled.frames_used
        for i, spec in enumerate(self.clip_specs):
            array = sampled.clips.get(spec) if sampled else None
            put_array(out, f"clips_{i}", array, (spec.frames, spec.size, spec.size, 3))
            out[f"clip_starts_{i}"] = np.asarray(starts[spec] if sampled else [], np.float64)
        frames, shown = (sampled.frames, times) if sampled else (None, [])
        if sampled and self.mode == "keyframes" and sampled.frame_times is not None:
            # Each sample is the latest keyframe: report when that frame is shown, once.
            at = sampled.frame_times
            first = np.r_[True, np.diff(at) > 1e-6] if len(at) else np.ones(0, bool)
            frames, shown = frames[first], at[first]
        put_array(out, "frames", frames, (1, 1, 3))
        out["frame_times"] = np.asarray(shown, np.float64)
        out["frames_delivered"] = len(shown)
        if self.shot_spec is not None:
            shape = (self.shot_spec.height, self.shot_spec.width, 3)
            put_array(out, "shot_frames", sampled.shot_frames if sampled else None, shape)
            out["shot_times"] = np.asarray(
                sampled.shot_times if sampled and sampled.shot_times is not None else [], np.float64
            )
            for i, spec in enumerate(self.clip_specs if self.align_shots else ()):
                every = sampled.shot_clip_frames.get(spec) if sampled else None
                put_array(out, f"shot_clips_{i}", every, (spec.size, spec.size, 3))
        return out


def _probed(row: Mapping[str, Any], duration: float) -> Any:
    """The probe's VideoInfo carried in a unit's row (the decode need not read the header
    again); None when the row lacks it."""
    from vidbatch.media.decode import VideoInfo

    fields = ("fps", "width", "height", "codec", "stream_start_s")
    values = [row.get(name) for name in fields]
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return None
    fps, width, height, codec, start = values
    return VideoInfo(duration, float(fps), int(width), int(height), str(codec), float(start))


def shots_of(cuts: Sequence[Sequence[float]], duration: float, threshold: float) -> list[Any]:
    """A video's shots (vidbatch.models.shots_from_probabilities) from the frames over the
    threshold alone, as work units report them ([time, probability, next frame's time]):
    each such frame's next frame goes in at probability 0 unless it is over the threshold
    too, so runs of consecutive frames stay runs and separate ones stay apart."""
    from vidbatch.models import shots_from_probabilities

    over = {round(t, 6): (t, p, n) for t, p, n in cuts}
    points = {0.0: 0.0}
    for t, p, n in over.values():
        points[t] = p
        if round(n, 6) not in over and n < duration:
            points.setdefault(n, 0.0)
    times = sorted(points)
    probs = [points[t] for t in times]
    return shots_from_probabilities(times, probs, duration_s=duration, threshold=threshold)


def put_array(row: dict[str, Any], name: str, array: np.ndarray | None, empty_tail: tuple) -> None:
    """Carry an ndarray as bytes + shape: plain Arrow columns whatever the shapes per row."""
    if array is None:
        array = np.empty((0, *empty_tail), np.uint8)
    row[name] = np.ascontiguousarray(array).tobytes()
    row[f"{name}_shape"] = np.asarray(array.shape, np.int64)


def get_array(row: Mapping[str, Any], name: str) -> np.ndarray:
    shape = tuple(int(s) for s in row[f"{name}_shape"])
    return np.frombuffer(row[name], np.uint8).reshape(shape)


def _is_last(unit: Mapping[str, Any]) -> bool:
    """Whether a work unit is its video's last segment (the one that runs to the end)."""
    return int(unit["segment_index"]) == int(unit["segment_count"]) - 1


def _row(batch: Mapping[str, np.ndarray], i: int) -> dict[str, Any]:
    return {k: (v[i].item() if isinstance(v[i], np.generic) else v[i]) for k, v in batch.items()}


def _arrow_column(values: list[Any], kind: pa.DataType) -> pa.Array:
    """Values that went through a numpy batch back into Arrow: NaN was null (numpy has no null
    integers or strings)."""
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in values]
    if pa.types.is_integer(kind):
        values = [None if gone else int(v) for v, gone in zip(values, missing, strict=True)]
    else:
        values = [None if gone else v for v, gone in zip(values, missing, strict=True)]
    return pa.array(values, kind)


def _column(values: list[Any]) -> np.ndarray:
    """A numpy column for Ray Data: object dtype for bytes and per-row arrays."""
    if values and isinstance(values[0], (bytes, np.ndarray, str)):
        column = np.empty(len(values), dtype=object)
        column[:] = values
        return column
    return np.asarray(values)


@dataclass
class InferenceStage(Stage):
    """Run every configured model on decoded work units; one worker holds all models, loaded
    once in setup()."""

    name: ClassVar[str] = "infer"
    batch_format: ClassVar[str] = "numpy"
    models: Sequence[ModelConfig] = ()
    clip_specs: tuple[ClipSpec, ...] = ()
    run_id: str = ""
    align_shots: bool = False  # one clip per shot (per piece in this unit) instead of the grid
    model_batch_size: int | None = None  # inputs per forward pass; None: the model's default
    device: str | None = None
    batch_size: int | None = 4
    loaded: list[Any] = field(default_factory=list, init=False, repr=False)

    def setup(self) -> None:
        from vidbatch.models import load_model

        self.loaded = [
            load_model(m.name, m.weights, storage_options=m.storage_options, device=self.device)
            for m in self.models
        ]
        if self.model_batch_size:
            for model in self.loaded:
                model.batch_size = self.model_batch_size

    def process(self, batch: Mapping[str, np.ndarray]) -> pa.Table:
        if not self.loaded:
            self.setup()
        units = [_row(batch, i) for i in range(len(batch["video_id"]))]
        results: dict[str, list[bytes]] = {name: [] for name in tables.MODEL_TABLES}
        errors, transitions = [], []
        for unit in units:
            error = str(unit["error"]) or ""
            found = {name: tables.empty(name) for name in tables.MODEL_TABLES}
            cuts: dict[str, list[list[float]]] = {}
            if not error:
                try:
                    cuts = self.transitions(unit)
                    found["clips"] = (
                        self.classify_shots(unit, cuts) if self.align_shots else self.classify(unit)
                    )
                    found["detections"] = self.detect(unit)
                except Exception as exc:  # a model failing on one input fails that video only
                    error = f"inference: {describe(exc)}"
            errors.append(error)
            transitions.append(json.dumps(cuts))
            for name, table in found.items():
                results[name].append(tables.to_ipc(table))
        carried = {
            name: _arrow_column([u[name] for u in units], UNIT.field(name).type)
            for name in UNIT.names
            if name not in ("error", "source")
        }
        return pa.table(
            {
                **carried,
                "error": pa.array(errors, pa.string()),
                "frames_decoded": pa.array([int(u["frames_decoded"]) for u in units], pa.int64()),
                "frames_used": pa.array([int(u["frames_used"]) for u in units], pa.int64()),
                "frames_delivered": pa.array(
                    [int(u.get("frames_delivered", 0)) for u in units], pa.int64()
                ),
                "transitions": pa.array(transitions, pa.string()),
                **{name: pa.array(data, pa.large_binary()) for name, data in results.items()},
            }
        )

    def _models(self, task: str) -> list[tuple[ModelConfig, Any]]:
        return [(c, m) for c, m in zip(self.models, self.loaded, strict=True) if m.task == task]

    def classify(self, unit: Mapping[str, Any]) -> pa.Table:
        parts = []
        for config, model in self._models("classify"):
            index = self.clip_specs.index(model.clip)
            clips = get_array(unit, f"clips_{index}")
            if len(clips):
                starts = np.asarray(unit[f"clip_starts_{index}"], np.float64)
                parts.append(
                    self._clip_rows(unit, model, config.top_k, starts, model.predict(clips))
                )
        return pa.concat_tables(parts) if parts else tables.empty("clips")

    def detect(self, unit: Mapping[str, Any]) -> pa.Table:
        from vidbatch.models.detection import detections_table

        frames = get_array(unit, "frames")
        parts = [
            detections_table(
                model,
                model.detect(
                    frames, min_score=config.min_score, max_detections=config.max_detections
                ),
                uri=str(unit["uri"]),
                frame_times=np.asarray(unit["frame_times"], np.float64),
                video_id=str(unit["video_id"]),
                run_id=self.run_id,
            )
            for config, model in self._models("detect")
            if len(frames)
        ]
        return pa.concat_tables(parts) if parts else tables.empty("detections")

    def classify_shots(
        self, unit: Mapping[str, Any], cuts: Mapping[str, list[list[float]]]
    ) -> pa.Table:
        """One clip per shot inside this unit's own range (a shot crossing a unit border is
        classified per piece), its frames spread evenly over the piece; the shots are the
        first shot model's, cut by the same rule as the `shots` table."""
        times = np.asarray(unit["shot_times"], np.float64)
        duration = float(unit["duration_s"])
        last = _is_last(unit)
        start, end = float(unit["start_s"]), duration if last else float(unit["end_s"])
        (config, _), *_ = self._models("shots")
        shots = shots_of(cuts.get(config.name, []), duration, config.threshold)
        pieces = [(max(s.start_s, start), min(s.end_s, end)) for s in shots]
        pieces = [(a, b) for a, b in pieces if b > a] or [(start, end)]
        parts = []
        for model_config, model in self._models("classify"):
            index = self.clip_specs.index(model.clip)
            every = get_array(unit, f"shot_clips_{index}")
            chosen, bounds = [], []
            for a, b in pieces:
                inside = np.flatnonzero((times >= a - 1e-9) & (times < b - 1e-9))
                if len(inside):
                    pick = inside[
                        np.linspace(0, len(inside) - 1, model.clip.frames).round().astype(int)
                    ]
                    chosen.append(every[pick])
                    bounds.append((a, b))
            if chosen:
                probs = model.predict(np.stack(chosen))
                starts, ends = (np.asarray(x, np.float64) for x in zip(*bounds, strict=True))
                parts.append(self._clip_rows(unit, model, model_config.top_k, starts, probs, ends))
        return pa.concat_tables(parts) if parts else tables.empty("clips")

    def transitions(self, unit: Mapping[str, Any]) -> dict[str, list[list[float]]]:
        """Per shot model, the frames of this unit's own range whose transition probability
        passes the model's threshold, as [time, probability, next frame's time]: all the driver
        needs to cut the whole video into shots (vidbatch.models.shots_from_probabilities)
        without every frame's score crossing the cluster."""
        models = self._models("shots")
        if not models:
            return {}
        frames = get_array(unit, "shot_frames")
        times = np.asarray(unit["shot_times"], np.float64)
        last = _is_last(unit)
        start, end = float(unit["start_s"]), math.inf if last else float(unit["end_s"])
        following = np.r_[times[1:], float(unit["duration_s"])]
        own = (times >= start - 1e-9) & (times < end - 1e-9)
        found = {}
        for config, model in models:
            probs = model.predict(frames) if len(frames) else np.zeros(0, np.float32)
            keep = own & (probs > config.threshold)
            found[model.name] = [
                [float(t), float(p), float(n)]
                for t, p, n in zip(times[keep], probs[keep], following[keep], strict=True)
            ]
        return found

    def _clip_rows(
        self,
        unit: Mapping[str, Any],
        model: Any,
        top_k: int,
        starts: np.ndarray,
        probs: np.ndarray,
        ends: np.ndarray | None = None,
    ) -> pa.Table:
        k = min(top_k, probs.shape[1])
        order = np.argsort(-probs, axis=1)[:, :k]
        top_scores = np.take_along_axis(probs, order, axis=1).astype(np.float32)
        labels = np.asarray(model.labels, dtype=object)[order]
        n = len(starts)
        duration = float(unit["duration_s"])
        return pa.table(
            {
                "video_id": [str(unit["video_id"])] * n,
                "uri": [str(unit["uri"])] * n,
                "clip_start_s": starts,
                "clip_end_s": ends
                if ends is not None
                else np.minimum(starts + model.clip.seconds, duration),
                "model": [model.name] * n,
                "model_version": [model.version] * n,
                "label": labels[:, 0].tolist(),
                "score": top_scores[:, 0],
                "labels": labels.tolist(),
                "scores": top_scores.tolist(),
                "run_id": [self.run_id] * n,
            },
            schema=tables.CLIPS,
        )


@dataclass
class DecodeInferStage(Stage):
    """Decode then infer in one worker: on CPUs this spares the object store a copy of every
    decoded frame, and each worker's decode runs in parallel with the others'."""

    name: ClassVar[str] = "decode+infer"
    batch_format: ClassVar[str] = "numpy"
    decode: DecodeStage = field(default_factory=DecodeStage)
    infer: InferenceStage = field(default_factory=InferenceStage)
    batch_size: int | None = 1

    def setup(self) -> None:
        self.decode.setup()
        self.infer.setup()

    def process(self, batch: Mapping[str, np.ndarray]) -> pa.Table:
        return self.infer.process(self.decode.process(batch))

    def teardown(self) -> None:
        self.decode.teardown()
        self.infer.teardown()


@dataclass
class WriteStage(Stage):
    """Write the result rows of a batch of work units as Parquet files into the index tables
    (uncommitted), one set of files per chunk, and pass on only their descriptions."""

    name: ClassVar[str] = "write"
    store: IndexStore | None = None
    num_cpus: float = 0.25
    batch_size: int | None = 16

    def process(self, batch: pa.Table) -> pa.Table:
        assert self.store is not None
        chunks = batch.column("chunk").to_pylist()
        files_of: dict[int, list[str]] = {}
        rows_written: list[dict[str, int]] = []
        parts: dict[int, dict[str, list[pa.Table]]] = {}
        for i, chunk in enumerate(chunks):
            counts = {}
            for name in tables.MODEL_TABLES:
                table = tables.from_ipc(batch.column(name)[i].as_py())
                counts[name] = table.num_rows
                if table.num_rows:
                    parts.setdefault(chunk, {}).setdefault(name, []).append(table)
            rows_written.append(counts)
        for chunk, by_table in parts.items():
            files_of[chunk] = [
                f.to_json()
                for name, pieces in by_table.items()
                for f in self.store.write_rows(name, pa.concat_tables(pieces))
            ]
        first_of_chunk = {}
        for i, chunk in enumerate(chunks):
            first_of_chunk.setdefault(chunk, i)
        files = [
            json.dumps(files_of.get(chunk, [])) if first_of_chunk[chunk] == i else "[]"
            for i, chunk in enumerate(chunks)
        ]
        columns = {name: batch.column(name) for name in RESULT.names if name in batch.column_names}
        if "transitions" not in columns:
            columns["transitions"] = pa.array(["{}"] * batch.num_rows, pa.string())
        columns["rows"] = pa.array([json.dumps(r) for r in rows_written], pa.string())
        columns["files"] = pa.array(files, pa.string())
        return pa.table(columns).select(RESULT.names).cast(RESULT)
