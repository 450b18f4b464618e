"""Pipeline stages: small typed classes with a setup and a per-batch call; the Ray plumbing
that runs them lives in pipeline.py. Per-video failures are returned as data, never raised."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from vidbatch.config import ModelConfig
from vidbatch.errors import StageError, describe
from vidbatch.index import tables
from vidbatch.job.plan import Segment, clip_starts, frame_times, in_segment
from vidbatch.media.decode import decode_samples
from vidbatch.media.isolation import run_isolated, worker_sandbox
from vidbatch.specs import ClipSpec, FrameSpec


@dataclass(frozen=True)
class WorkUnit:
    """One segment of one video: what the decode stage receives (as a Ray Data row)."""

    video_id: str
    uri: str
    segment_index: int
    segment_count: int
    start_s: float
    end_s: float
    duration_s: float

    @property
    def segment(self) -> Segment:
        return Segment(self.segment_index, self.start_s, self.end_s)

    @property
    def is_last(self) -> bool:
        return self.segment_index == self.segment_count - 1


def _unit(row: Mapping[str, Any]) -> WorkUnit:
    return WorkUnit(**{f: row[f] for f in WorkUnit.__dataclass_fields__})


@dataclass
class DecodeStage:
    """Decode a segment once; sample every clip spec and the detector frames from that pass.

    With `timeout_s` > 0 the decode runs in a child process (`vidbatch.media.isolation`): a decoder
    that crashes or hangs on one file fails that segment, not the worker.
    """

    clip_specs: tuple[ClipSpec, ...]
    frame_spec: FrameSpec | None = None
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold secrets
    mode: str = "seek"
    timeout_s: float = 0.0

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        unit = _unit(row)
        # "" rather than None keeps the column a string column in every block.
        out: dict[str, Any] = {**row, "error": "", "frames_decoded": 0, "frames_used": 0}
        starts = {
            spec: in_segment(clip_starts(unit.duration_s, spec), unit.segment, unit.is_last)
            for spec in self.clip_specs
        }
        times = (
            in_segment(frame_times(unit.duration_s, self.frame_spec), unit.segment, unit.is_last)
            if self.frame_spec
            else []
        )
        try:
            sampled = run_isolated(
                worker_sandbox(self.timeout_s),
                "decode",
                decode_samples,
                unit.uri,
                clips=starts,
                frame_spec=self.frame_spec,
                frame_times=times,
                storage_options=self.storage_options,
                mode=self.mode,
            )
        except StageError as exc:
            out["error"] = str(exc)
            sampled = None
        except Exception as exc:  # a decoder bug must cost one video, not the job
            out["error"] = f"decode: {describe(exc)}"
            sampled = None
        if sampled is not None:
            out["frames_decoded"] = sampled.frames_decoded
            out["frames_used"] = sampled.frames_used
        for i, spec in enumerate(self.clip_specs):
            array = sampled.clips.get(spec) if sampled else None
            _put_array(out, f"clips_{i}", array, (spec.frames, spec.size, spec.size, 3))
            out[f"clip_starts_{i}"] = np.asarray(starts[spec] if sampled else [], np.float64)
        frames, times = (sampled.frames, times) if sampled else (None, [])
        if sampled and self.mode == "keyframes" and sampled.frame_times is not None:
            # Each sample is the latest keyframe: report when that frame is shown, once.
            shown = sampled.frame_times
            first = np.r_[True, np.diff(shown) > 1e-6] if len(shown) else np.ones(0, bool)
            frames, times = frames[first], shown[first]
        _put_array(out, "frames", frames, (1, 1, 3))
        out["frame_times"] = np.asarray(times, np.float64)
        return out


def _put_array(row: dict[str, Any], name: str, array: np.ndarray | None, empty_tail: tuple) -> None:
    """Carry an ndarray as bytes + shape: plain Arrow columns whatever the shapes per row."""
    if array is None:
        array = np.empty((0, *empty_tail), np.uint8)
    row[name] = np.ascontiguousarray(array).tobytes()
    row[f"{name}_shape"] = np.asarray(array.shape, np.int64)


def _get_array(row: Mapping[str, Any], name: str) -> np.ndarray:
    shape = tuple(int(s) for s in row[f"{name}_shape"])
    return np.frombuffer(row[name], np.uint8).reshape(shape)


@dataclass
class InferenceStage:
    """Run every configured model on decoded segments; one actor holds all models once."""

    models: Sequence[ModelConfig]
    clip_specs: tuple[ClipSpec, ...]
    run_id: str
    batch_size: int = 8
    device: str | None = None
    loaded: list[Any] = field(default_factory=list, init=False)

    def setup(self) -> None:
        from vidbatch.models import load_model

        self.loaded = [
            load_model(m.name, m.weights, storage_options=m.storage_options, device=self.device)
            for m in self.models
        ]
        for model in self.loaded:
            model.batch_size = self.batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        if not self.loaded:
            self.setup()
        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["video_id"]))]
        outputs: dict[str, list[bytes]] = {"clips": [], "detections": []}
        errors: list[str | None] = []
        for row in rows:
            error = str(row["error"]) or None
            results = {"clips": tables.empty("clips"), "detections": tables.empty("detections")}
            if error is None:
                try:
                    results = {"clips": self.classify(row), "detections": self.detect(row)}
                except Exception as exc:  # a model failing on one input fails that video only
                    error = f"inference: {describe(exc)}"
            errors.append(error)
            for name, table in results.items():
                outputs[name].append(tables.to_ipc(table))
        return pa.table(
            {
                "video_id": pa.array(batch["video_id"].tolist(), pa.string()),
                "segment_index": pa.array(batch["segment_index"].tolist(), pa.int32()),
                "error": pa.array(errors, pa.string()),
                "frames_decoded": pa.array(batch["frames_decoded"].tolist(), pa.int64()),
                "frames_used": pa.array(batch["frames_used"].tolist(), pa.int64()),
                "clips": pa.array(outputs["clips"], pa.large_binary()),
                "detections": pa.array(outputs["detections"], pa.large_binary()),
            }
        )

    def _models(self, task: str):
        return [(c, m) for c, m in zip(self.models, self.loaded, strict=True) if m.task == task]

    def classify(self, row: Mapping[str, Any]) -> pa.Table:
        parts = []
        for config, model in self._models("classify"):
            index = self.clip_specs.index(model.clip)
            clips = _get_array(row, f"clips_{index}")
            if len(clips):
                starts = np.asarray(row[f"clip_starts_{index}"], np.float64)
                probs = model.predict(clips)
                parts.append(self._clip_rows(row, model, config.top_k, starts, probs))
        return pa.concat_tables(parts) if parts else tables.empty("clips")

    def detect(self, row: Mapping[str, Any]) -> pa.Table:
        from vidbatch.models.detection import detections_table

        frames = _get_array(row, "frames")
        parts = [
            detections_table(
                model,
                model.detect(
                    frames, min_score=config.min_score, max_detections=config.max_detections
                ),
                uri=str(row["uri"]),
                frame_times=np.asarray(row["frame_times"], np.float64),
                video_id=str(row["video_id"]),
                run_id=self.run_id,
            )
            for config, model in self._models("detect")
            if len(frames)
        ]
        return pa.concat_tables(parts) if parts else tables.empty("detections")

    def _clip_rows(
        self, row: Mapping[str, Any], model: Any, top_k: int, starts: np.ndarray, probs: np.ndarray
    ) -> pa.Table:
        k = min(top_k, probs.shape[1])
        order = np.argsort(-probs, axis=1)[:, :k]
        top_scores = np.take_along_axis(probs, order, axis=1).astype(np.float32)
        labels = np.asarray(model.labels, dtype=object)[order]
        n = len(starts)
        duration = float(row["duration_s"])
        return pa.table(
            {
                "video_id": [str(row["video_id"])] * n,
                "uri": [str(row["uri"])] * n,
                "clip_start_s": starts,
                "clip_end_s": np.minimum(starts + model.clip.seconds, duration),
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
