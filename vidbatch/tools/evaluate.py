"""Score an index against ground truth: accuracy for classifiers, COCO-style mAP for detectors.

Predictions are the index's current state (its `clips` and `detections` Delta tables, read
through the IndexStore) or one Parquet/CSV file of the same columns; truth is what `vidbatch
synth` writes (`labels.parquet`: uri, label; `boxes.parquet`: uri, frame_time_s, label, x1..y2),
or the same as CSV. Detection AP follows pycocotools: greedy
matching by score, IoU >= threshold, 101-point interpolated precision, classes without truth left
out of the mean. Only frames a detector looked at are scored, so truth at other frames is never
counted as missed (see `evaluate_detection`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pds
import pyarrow.parquet as pq
from pyarrow.fs import FSSpecHandler, PyFileSystem

from vidbatch.job.plan import frame_times
from vidbatch.specs import FrameSpec
from vidbatch.storage import filesystem, join

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
TIME_TOLERANCE_S = 1e-3
BOX_COLUMNS = ("x1", "y1", "x2", "y2")
PARQUET_MAGIC = b"PAR1"
TRUTH_COLUMNS = {
    "labels": ("uri", "label"),
    "boxes": ("uri", "frame_time_s", "label", *BOX_COLUMNS),
}
PREDICTION_COLUMNS = {
    "clips": ("uri", "label", "model"),
    "detections": ("uri", "frame_time_s", "label", "score", *BOX_COLUMNS, "model"),
}


# ---------------------------------------------------------------- classification


def evaluate_classification(predictions: pa.Table, truth: pa.Table) -> dict[str, Any]:
    """Per model: clip accuracy, per-class recall and video accuracy (score-weighted vote).

    `predictions` are clips rows (uri, clip_start_s, label, model[, score]); `truth` has one
    (uri, label) per video. Clips of videos without a truth label are counted, not scored.
    """
    _require(predictions, PREDICTION_COLUMNS["clips"], "classification predictions")
    _require(truth, TRUTH_COLUMNS["labels"], "classification truth")
    truth_label = dict(zip(_uris(truth), truth.column("label").to_pylist(), strict=True))
    uris = _uris(predictions)
    labels = predictions.column("label").to_pylist()
    models = predictions.column("model").to_pylist()
    scores = (
        predictions.column("score").to_pylist()
        if "score" in predictions.column_names
        else [1.0] * predictions.num_rows
    )
    rows: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for uri, label, model, score in zip(uris, labels, models, scores, strict=True):
        rows[model].append((uri, label, 1.0 if score is None else float(score)))

    result: dict[str, Any] = {}
    for model in sorted(rows):
        scored = [(uri, label, score) for uri, label, score in rows[model] if uri in truth_label]
        hits: dict[str, list[bool]] = defaultdict(list)
        votes: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for uri, label, score in scored:
            hits[truth_label[uri]].append(label == truth_label[uri])
            votes[uri][label] += score
        correct = sum(sum(h) for h in hits.values())
        video_correct = sum(
            max(sorted(vote), key=vote.__getitem__) == truth_label[uri]
            for uri, vote in votes.items()
        )
        result[model] = {
            "clips": len(scored),
            "videos": len(votes),
            "unmatched_clips": len(rows[model]) - len(scored),
            "accuracy": correct / len(scored) if scored else None,
            "video_accuracy": video_correct / len(votes) if votes else None,
            "per_class_recall": {c: sum(h) / len(h) for c, h in sorted(hits.items())},
        }
    return result


# ---------------------------------------------------------------- detection


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of x1,y1,x2,y2 boxes; empty or inverted boxes have zero area."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0.0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0.0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0.0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def average_precision(scores: Sequence[float], matched: Sequence[bool], num_truth: int) -> float:
    """COCO 101-point interpolated AP of one class at one IoU threshold.

    `matched[i]` says whether prediction i was a true positive; order does not matter, the
    predictions are ranked by score here (stable, as pycocotools does).
    """
    if num_truth <= 0:
        raise ValueError("AP is undefined without truth boxes")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    tp = np.asarray(matched, bool)[order]
    tp_sum = np.cumsum(tp)
    fp_sum = np.cumsum(~tp)
    recall = tp_sum / num_truth
    precision = tp_sum / (tp_sum + fp_sum)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    valid = index < len(precision)
    return float(np.where(valid, precision[np.minimum(index, len(precision) - 1)], 0.0).mean())


def evaluate_detection(
    predictions: pa.Table,
    truth: pa.Table,
    *,
    frames: pa.Table | None = None,
) -> dict[str, Any]:
    """Per model: mAP@0.5, mAP@0.5:0.95 and per-class AP over the frames the detector saw.

    A prediction and a truth box belong to the same frame when their uri matches and their
    frame_time_s differ by at most 1 ms. Truth is scored only at sampled frames: `frames`
    (uri, frame_time_s) lists them, including frames where nothing was detected. Without it,
    they are the frames with a prediction plus, on videos with a prediction, every truth frame
    on the sampling grid inferred from the predicted times (videos where no model detected
    anything are then not scored; `evaluate` on an index folder lists them from `videos/`).
    """
    _require(predictions, PREDICTION_COLUMNS["detections"], "detections")
    _require(truth, TRUTH_COLUMNS["boxes"], "detection truth")
    index = _FrameIndex(_uris(truth), _times(truth))
    truth_frame = index.lookup(_uris(truth), _times(truth))
    pred_frame = index.lookup(_uris(predictions), _times(predictions))

    if frames is not None:
        _require(frames, ("uri", "frame_time_s"), "frames")
        sampled = index.lookup(_uris(frames), _times(frames))
        how = "given"
    else:
        sampled = index.on_grid(set(_uris(predictions)), infer_frame_step(predictions))
        how = "inferred"
    seen = np.zeros(len(index), bool)
    seen[sampled[sampled >= 0]] = True
    seen[pred_frame[pred_frame >= 0]] = True
    keep = seen[truth_frame]

    truth_labels = np.asarray(truth.column("label").to_pylist(), object)[keep]
    truth_boxes = _boxes(truth)[keep]
    truth_frames = truth_frame[keep]
    pred_labels = np.asarray(predictions.column("label").to_pylist(), object)
    pred_models = np.asarray(predictions.column("model").to_pylist(), object)
    pred_scores = predictions.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    pred_boxes = _boxes(predictions)

    classes = sorted(set(truth_labels.tolist()))
    result: dict[str, Any] = {}
    for model in sorted(set(pred_models.tolist())):
        mine = pred_models == model
        per_threshold: dict[float, dict[str, float]] = {t: {} for t in IOU_THRESHOLDS}
        for cls in classes:
            p = mine & (pred_labels == cls)
            t = truth_labels == cls
            matched = _match(
                pred_frame[p], pred_scores[p], pred_boxes[p], truth_frames[t], truth_boxes[t]
            )
            for threshold, hits in matched.items():
                per_threshold[threshold][cls] = average_precision(
                    pred_scores[p], hits, int(t.sum())
                )
        ap_50 = per_threshold[0.5]
        ap_50_95 = {
            c: float(np.mean([per_threshold[t][c] for t in IOU_THRESHOLDS])) for c in classes
        }
        result[model] = {
            "truth_frames": int(seen.sum()),
            "frames_from": how,
            "truth_boxes": len(truth_labels),
            "predictions": int(mine.sum()),
            "map_50": float(np.mean(list(ap_50.values()))) if classes else None,
            "map_50_95": float(np.mean(list(ap_50_95.values()))) if classes else None,
            "ap_50": ap_50,
            "ap_50_95": ap_50_95,
            "unscored_labels": sorted(set(pred_labels[mine].tolist()) - set(classes)),
        }
    return result


def _match(
    pred_frames: np.ndarray,
    pred_scores: np.ndarray,
    pred_boxes: np.ndarray,
    truth_frames: np.ndarray,
    truth_boxes: np.ndarray,
) -> dict[float, np.ndarray]:
    """Per IoU threshold, which predictions (in input order) match a truth box of their frame.

    pycocotools' greedy rule: highest score first, each takes the unmatched truth box of its
    frame with the highest IoU >= threshold.
    """
    order = np.argsort(-pred_scores, kind="mergesort")
    by_frame: dict[int, list[int]] = defaultdict(list)
    for row, frame in enumerate(truth_frames.tolist()):
        by_frame[frame].append(row)
    ious = [
        box_iou(pred_boxes[i], truth_boxes[by_frame[int(pred_frames[i])]])[0]
        if pred_frames[i] >= 0
        else np.empty(0)
        for i in order
    ]
    out: dict[float, np.ndarray] = {}
    for threshold in IOU_THRESHOLDS:
        hits = np.zeros(len(pred_scores), bool)
        taken: dict[int, np.ndarray] = {}
        for rank, i in enumerate(order):
            iou = ious[rank]
            if not len(iou):
                continue
            frame = int(pred_frames[i])
            used = taken.setdefault(frame, np.zeros(len(iou), bool))
            candidates = np.where(used, -1.0, iou)
            best = int(np.argmax(candidates))
            if candidates[best] >= min(threshold, 1 - 1e-10):
                used[best] = True
                hits[i] = True
        out[threshold] = hits
    return out


class _FrameIndex:
    """The distinct (uri, time) frames of the truth, looked up with a 1 ms tolerance."""

    def __init__(self, uris: Sequence[str], times: np.ndarray) -> None:
        self.by_uri: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        count = 0
        for uri, uri_times in sorted(_group_times(uris, times).items()):
            unique = np.unique(uri_times)
            self.by_uri[uri] = (unique, np.arange(count, count + len(unique)))
            count += len(unique)
        self.count = count

    def __len__(self) -> int:
        return self.count

    def lookup(self, uris: Sequence[str], times: np.ndarray) -> np.ndarray:
        """Frame id of each (uri, time), or -1 where the truth has no frame there."""
        out = np.full(len(uris), -1, np.int64)
        for uri, rows in _group_rows(uris).items():
            if uri not in self.by_uri:
                continue
            known, ids = self.by_uri[uri]
            t = times[rows]
            pos = np.clip(np.searchsorted(known, t), 1, len(known)) - 1
            nxt = np.minimum(pos + 1, len(known) - 1)
            nearest = np.where(np.abs(known[nxt] - t) < np.abs(known[pos] - t), nxt, pos)
            close = np.abs(known[nearest] - t) <= TIME_TOLERANCE_S
            out[rows[close]] = ids[nearest[close]]
        return out

    def on_grid(self, uris: set[str], step: float | None) -> np.ndarray:
        """Ids of the truth frames of `uris` at multiples of `step` seconds."""
        if step is None:
            return np.empty(0, np.int64)
        picked = []
        for uri in uris & set(self.by_uri):
            known, ids = self.by_uri[uri]
            off = np.abs(known - np.round(known / step) * step) <= TIME_TOLERANCE_S
            picked.append(ids[off])
        return np.concatenate(picked) if picked else np.empty(0, np.int64)


def infer_frame_step(predictions: pa.Table) -> float | None:
    """The detector sampling period: the smallest gap between predicted frames of one video."""
    gaps = []
    for times in _group_times(_uris(predictions), _times(predictions)).values():
        distinct = np.unique(np.round(times / TIME_TOLERANCE_S)) * TIME_TOLERANCE_S
        diffs = np.diff(distinct)
        diffs = diffs[diffs > TIME_TOLERANCE_S]
        if len(diffs):
            gaps.append(float(diffs.min()))
    return round(min(gaps), 3) if gaps else None


# ---------------------------------------------------------------- files


def evaluate(
    predictions_uri: str,
    truth_uri: str,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score an index (its output.uri) or one Parquet/CSV file of predictions against truth.

    Truth is labels (uri, label) or boxes (uri, frame_time_s, label, x1..y2), Parquet or CSV,
    told apart by its columns, or a synth archive folder holding labels.parquet and/or
    boxes.parquet. `storage_options` (fsspec) serve both URIs.
    """
    truths = _read_truth(truth_uri, storage_options)
    predicted = _read_predictions(predictions_uri, storage_options)
    for name, columns in TRUTH_COLUMNS.items():  # name the file a column is missing from
        if name in truths:
            _require(truths[name], columns, f"truth {truth_uri}")
    for name, columns in PREDICTION_COLUMNS.items():
        if name in predicted:
            _require(predicted[name], columns, f"predictions {predictions_uri} ({name})")
    result: dict[str, Any] = {"predictions": predictions_uri, "truth": truth_uri}
    if "clips" in predicted and "labels" in truths:
        result["classification"] = evaluate_classification(predicted["clips"], truths["labels"])
    if "detections" in predicted and "boxes" in truths:
        detections = predicted["detections"]
        frames = predicted.get("frames")
        if frames is None and "videos" in predicted:
            frames = sampled_frames(predicted["videos"], infer_frame_step(detections))
        result["detection"] = evaluate_detection(detections, truths["boxes"], frames=frames)
    if "classification" not in result and "detection" not in result:
        raise ValueError(
            f"nothing to score: predictions {predictions_uri} have "
            f"{', '.join(sorted(predicted)) or 'no tables'}, truth {truth_uri} has "
            f"{', '.join(sorted(truths))} (clips need labels.parquet, detections boxes.parquet)"
        )
    return result


def sampled_frames(videos: pa.Table, step: float | None) -> pa.Table:
    """(uri, frame_time_s) of every detector frame of the ok videos, as the job samples them."""
    fps = 1.0 / step if step else FrameSpec().fps
    ok = videos.filter(pc.equal(videos.column("status"), "ok"))
    durations: dict[str, float] = {}  # one entry per video, however many runs indexed it
    for uri, duration in zip(_uris(ok), ok.column("duration_s").to_pylist(), strict=True):
        durations[uri] = max(durations.get(uri, 0.0), float(duration or 0.0))
    spec = FrameSpec(fps=fps)
    rows = [(uri, t) for uri, duration in durations.items() for t in frame_times(duration, spec)]
    return pa.table(
        {"uri": [r[0] for r in rows], "frame_time_s": pa.array([r[1] for r in rows], pa.float64())}
    )


def _read_truth(uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, pa.Table]:
    fs, path = filesystem(uri, storage_options)
    if fs.isdir(path):
        found = {}
        for name in ("labels", "boxes"):
            for ext in ("parquet", "csv"):
                if name not in found and fs.exists(join(path, f"{name}.{ext}")):
                    found[name] = _read_parquet(join(uri, f"{name}.{ext}"), storage_options)
        if not found:
            raise ValueError(
                f"truth folder {uri} has neither labels.parquet nor boxes.parquet (or .csv)"
            )
        return found
    table = _read_parquet(uri, storage_options)
    if set(BOX_COLUMNS) <= set(table.column_names):
        return {"boxes": table}
    if {"uri", "label"} <= set(table.column_names):
        return {"labels": table}
    raise ValueError(
        f"truth {uri}: expected columns uri, label (labels) or uri, frame_time_s, "
        f"label, x1..y2 (boxes); has {', '.join(table.column_names)}"
    )


def _read_predictions(uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, pa.Table]:
    from vidbatch.index.store import IndexStore  # an index: its current state

    fs, path = filesystem(uri, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"predictions not found: {uri}")
    store = IndexStore(uri, storage_options)
    if fs.isdir(path) and store.exists():
        snapshot = store.snapshot()
        return {
            name: store.read(name, snapshot=snapshot) for name in ("videos", "clips", "detections")
        }
    table = _read_parquet(uri, storage_options)
    if "model" not in table.column_names:
        name = path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".parquet")
        table = table.append_column("model", pa.array([name] * table.num_rows, pa.string()))
    if "frame_time_s" in table.column_names:
        return {"detections": _latest_run(table)}
    if "label" in table.column_names:
        return {"clips": _latest_run(table)}
    raise ValueError(f"predictions {uri}: neither clips nor detections rows")


def _read_parquet(uri: str, storage_options: Mapping[str, Any] | None) -> pa.Table:
    """A Parquet file, a folder of Parquet parts (maybe Hive-partitioned), or a CSV file.

    A file is told apart by its content (Parquet starts with `PAR1`), not its name."""
    fs, path = filesystem(uri, storage_options)
    kind = "Parquet"
    try:
        if fs.isdir(path):
            handler = PyFileSystem(FSSpecHandler(fs))
            return pds.dataset(path, filesystem=handler, partitioning="hive").to_table()
        with fs.open(path, "rb") as handle:
            if handle.read(4) != PARQUET_MAGIC:
                kind = "CSV"
            handle.seek(0)
            if kind == "CSV":
                return pacsv.read_csv(handle)
            return pq.read_table(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"not found: {uri}") from None
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        message = " ".join(str(exc).split())
        if kind == "CSV":
            raise ValueError(
                f"{uri}: neither Parquet (no PAR1 header) nor readable CSV ({message})"
            ) from exc
        raise ValueError(f"{uri}: not a readable Parquet file ({message})") from exc


def _latest_run(table: pa.Table) -> pa.Table:
    """Keep each (model, uri)'s rows of its latest run, so an index rerun is not scored twice."""
    if "run_id" not in table.column_names or table.num_rows == 0:
        return table
    keys = list(zip(table.column("model").to_pylist(), _uris(table), strict=True))
    runs = table.column("run_id").to_pylist()
    latest: dict[tuple[str, str], str] = {}
    for key, run in zip(keys, runs, strict=True):
        if run is not None and (key not in latest or run > latest[key]):
            latest[key] = run
    mask = [run is None or latest.get(key) == run for key, run in zip(keys, runs, strict=True)]
    return table.filter(pa.array(mask))


# ---------------------------------------------------------------- report


def format_report(result: Mapping[str, Any]) -> str:
    """The CLI's text: one block per task and model, figures with three decimals."""
    lines = []
    for model, m in sorted((result.get("classification") or {}).items()):
        lines.append(
            f"classification {model}: accuracy {_fmt(m['accuracy'])} over {m['clips']} clips, "
            f"video accuracy {_fmt(m['video_accuracy'])} over {m['videos']} videos"
            + (f" ({m['unmatched_clips']} clips without truth)" if m["unmatched_clips"] else "")
        )
        lines.append("  recall: " + _per_class(m["per_class_recall"]))
    for model, m in sorted((result.get("detection") or {}).items()):
        lines.append(
            f"detection {model}: mAP@0.5 {_fmt(m['map_50'])}, mAP@0.5:0.95 {_fmt(m['map_50_95'])}"
            f" ({m['predictions']} predictions, {m['truth_boxes']} truth boxes, "
            f"{m['truth_frames']} frames with truth, frames {m['frames_from']})"
        )
        lines.append("  AP@0.5: " + _per_class(m["ap_50"]))
        if m["unscored_labels"]:
            lines.append("  labels without truth (not scored): " + ", ".join(m["unscored_labels"]))
    return "\n".join(lines) if lines else "nothing to score"


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.3f}"


def _per_class(values: Mapping[str, float]) -> str:
    return "  ".join(f"{k} {_fmt(v)}" for k, v in sorted(values.items())) or "-"


# ---------------------------------------------------------------- helpers


def _require(table: pa.Table, columns: Sequence[str], what: str) -> None:
    """Name the missing columns, and the column each one was probably meant to be."""
    import difflib

    missing = [c for c in columns if c not in table.column_names]
    if not missing:
        return
    present = [c for c in table.column_names if c not in columns]
    hints = []
    for column in missing:
        close = difflib.get_close_matches(column, present, n=1, cutoff=0.6)
        if close:
            hints.append(f"{close[0]!r} for {column!r}?")
    hint = f"; did you mean {', '.join(hints)}" if hints else ""
    raise ValueError(
        f"{what}: missing column(s) {', '.join(missing)} (has {', '.join(table.column_names)})"
        f"{hint}"
    )


def _uris(table: pa.Table) -> list[str]:
    """URIs compared as the catalog writes them: local files as plain paths."""
    return [
        u[len("file://") :] if u.startswith("file://") else u
        for u in table.column("uri").to_pylist()
    ]


def _times(table: pa.Table) -> np.ndarray:
    return table.column("frame_time_s").to_numpy(zero_copy_only=False).astype(np.float64)


def _boxes(table: pa.Table) -> np.ndarray:
    return np.stack(
        [table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in BOX_COLUMNS],
        axis=1,
    ).reshape(-1, 4)


def _group_rows(uris: Sequence[str]) -> dict[str, np.ndarray]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, uri in enumerate(uris):
        groups[uri].append(i)
    return {uri: np.asarray(rows, np.int64) for uri, rows in groups.items()}


def _group_times(uris: Sequence[str], times: np.ndarray) -> dict[str, np.ndarray]:
    return {uri: times[rows] for uri, rows in _group_rows(uris).items()}
