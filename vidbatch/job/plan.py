"""Planning: which listed videos to process tonight (an Arrow join against the current
`videos` table), what decides their rows (the config key), and how each video is cut into
work units, within limits no input can blow up."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vidbatch.config import JobConfig, Limits
from vidbatch.errors import StageError
from vidbatch.specs import ClipSpec, FrameSpec

_EPS = 1e-9

# Why a listed video is (or is not) processed in this run.
NEW = "new"  # never indexed
CHANGED = "changed"  # its content key changed at the same uri
UPGRADE = "upgrade"  # indexed under another config key (model version, sampling)
RETRY = "retry"  # failed before with this content and config, retries left
FORCED = "forced"  # indexed already, but the run is not incremental
SKIPPED = "skipped"  # indexed ok with this content and config
EXHAUSTED = "exhausted"  # failed max_retries times with this content and config
REASONS = (NEW, CHANGED, UPGRADE, RETRY, FORCED, SKIPPED, EXHAUSTED)
IDLE = (SKIPPED, EXHAUSTED)


# -- work units -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    index: int
    start_s: float
    end_s: float  # exclusive, except the last segment which ends at the video's duration


def clip_count(duration_s: float, clip: ClipSpec) -> int:
    """Clips tile the video back to back; a video shorter than one clip still gets one clip."""
    return max(1, math.floor(duration_s / clip.seconds + _EPS))


def clip_starts(duration_s: float, clip: ClipSpec) -> list[float]:
    return [k * clip.seconds for k in range(clip_count(duration_s, clip))]


def frame_times(duration_s: float, spec: FrameSpec) -> list[float]:
    """Detector sample times: 0, 1/fps, ... strictly inside the video."""
    count = max(1, math.ceil(duration_s * spec.fps - _EPS))
    return [k / spec.fps for k in range(count)]


def segment_length(segment_seconds: float, clips: Sequence[ClipSpec] = ()) -> float:
    """The work-unit length: at most `segment_seconds`, a whole number of the longest clip."""
    unit = max((c.seconds for c in clips), default=0.0)
    if not unit:
        return segment_seconds
    return max(unit, math.floor(segment_seconds / unit + _EPS) * unit)


def plan_segments(
    duration_s: float, segment_seconds: float, clips: Sequence[ClipSpec] = ()
) -> list[Segment]:
    """Split [0, duration) into units of at most `segment_seconds`, aligned to whole clips."""
    length = segment_length(segment_seconds, clips)
    count = max(1, math.ceil(duration_s / length - _EPS))
    return [
        Segment(i, i * length, duration_s if i == count - 1 else (i + 1) * length)
        for i in range(count)
    ]


def in_segment(times: Sequence[float], segment: Segment, last: bool) -> list[float]:
    """Times whose start falls in the segment; the last segment also takes anything later."""
    return [t for t in times if t >= segment.start_s - _EPS and (last or t < segment.end_s - _EPS)]


def check_limits(
    duration_s: float,
    size_bytes: int,
    limits: Limits,
    segment_seconds: float,
    clips: Sequence[ClipSpec] = (),
    packets_end_s: float | None = None,
) -> None:
    """StageError("probe", ...) naming the limit when a video's header asks for more work than
    any real video needs: a crafted 2 KB file claiming days of video is one failed row, not a
    driver out of memory. The header's duration is checked against the file's size and
    against where its packets end (`packets_end_s`, from probing)."""
    hours = duration_s / 3600
    if hours > limits.max_video_hours:
        raise StageError(
            "probe",
            f"duration {hours:.1f} h is over limits.max_video_hours={limits.max_video_hours:g}",
        )
    if size_bytes and limits.min_bitrate_bps and duration_s > 0:
        bps = size_bytes * 8 / duration_s
        if bps < limits.min_bitrate_bps:
            raise StageError(
                "probe",
                f"header claims {duration_s:.0f} s for {size_bytes} bytes ({bps:.2f} bit/s, "
                f"under limits.min_bitrate_bps={limits.min_bitrate_bps:g}): implausible duration",
            )
    length = segment_length(segment_seconds, clips)
    if packets_end_s is not None and duration_s - packets_end_s > length:
        # Whole work units past the last packet: decoding would only find them missing.
        raise StageError(
            "probe",
            f"stream ends at {packets_end_s:.2f}s but the container says {duration_s:.2f}s: "
            "truncated or corrupt",
        )
    count = math.ceil(duration_s / length - _EPS)
    if count > limits.max_segments_per_video:
        raise StageError(
            "probe",
            f"{count} segments is over limits.max_segments_per_video="
            f"{limits.max_segments_per_video} (raise it or sampling.segment_seconds)",
        )


# -- what decides a video's rows ------------------------------------------------------------


def row_config(config: JobConfig, models: Sequence[Any]) -> dict[str, Any]:
    """Only what changes rows: each model's version and the options and input it runs with.
    Paths, resources, and a sampling section no model reads are left out, so changing them
    re-indexes nothing."""
    sampling = config.sampling
    keyframes = sampling.decode_mode == "keyframes"
    entries = []
    for model, model_config in zip(models, config.models, strict=True):
        entry: dict[str, Any] = {"name": model.name, "version": model.version, "task": model.task}
        if model.task == "classify":
            clip = model.clip
            entry.update(top_k=model_config.top_k, clip=[clip.frames, clip.fps, clip.size])
            if clip.resize:
                entry["resize"] = list(clip.resize)
            if sampling.clips.align == "shots":
                entry["align"] = "shots"
        elif model.task == "detect":
            frames = sampling.frames
            entry.update(
                min_score=model_config.min_score,
                max_detections=model_config.max_detections,
                frames=[frames.fps, frames.size],
            )
            if keyframes:  # exact modes give the same frames
                entry.update(keyframes=True, max_offset_s=frames.max_offset_s)
        elif model.task == "shots":
            entry.update(
                threshold=model_config.threshold, shot=[model.shot.width, model.shot.height]
            )
        entries.append(entry)
    return {"models": entries}


def config_key(config: JobConfig, models: Sequence[Any]) -> str:
    text = json.dumps(row_config(config, models), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def changed_keys(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain-data configs."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        keys = sorted(set(before) | set(after))
        return [
            k
            for key in keys
            for k in changed_keys(
                before.get(key), after.get(key), f"{prefix}.{key}" if prefix else key
            )
        ]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            k
            for i, (b, a) in enumerate(zip(before, after, strict=True))
            for k in changed_keys(b, a, f"{prefix}[{i}]")
        ]
    return [] if before == after else [prefix or "(all)"]


# -- the incremental decision -----------------------------------------------------------------

LISTING = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("source", pa.string()),
        ("size_bytes", pa.int64()),
        ("etag", pa.string()),
        ("mtime", pa.string()),
        ("error", pa.string()),
    ]
)


def listing_table(refs: Sequence[Any]) -> pa.Table:
    """The listed videos as Arrow (about 200 bytes a video, where Python objects take ~1 KB)."""
    return pa.table(
        {
            "video_id": [r.video_id for r in refs],
            "uri": [r.uri for r in refs],
            "source": [r.open_uri for r in refs],
            "size_bytes": [r.size_bytes for r in refs],
            "etag": [r.etag for r in refs],
            "mtime": [r.mtime for r in refs],
            "error": [r.error for r in refs],
        },
        schema=LISTING,
    )


def decide(
    listed: pa.Table,
    current: pa.Table,
    key: str,
    *,
    incremental: bool = True,
    max_retries: int = 3,
    retry_failed: bool = False,
) -> pa.Table:
    """`listed` with `reason`, `known` (the index has rows for its uri) and `attempts` (failed
    runs in a row, counting this one should it fail), by uri, in uri order. One Arrow join:
    its cost grows with the archive, not with the number of runs."""
    previous = current.select(
        ["uri", "video_id", "status", "config_key", "attempts"]
    ).rename_columns(["uri", "prev_id", "prev_status", "prev_key", "prev_attempts"])
    joined = listed.join(previous, keys="uri", join_type="left outer").sort_by("uri")
    known = pc.is_valid(joined.column("prev_id"))
    same_content = pc.fill_null(
        pc.equal(joined.column("prev_id"), joined.column("video_id")), False
    )
    same_config = pc.fill_null(pc.equal(joined.column("prev_key"), key), False)
    was_ok = pc.fill_null(pc.equal(joined.column("prev_status"), "ok"), False)
    prev_attempts = pc.fill_null(joined.column("prev_attempts"), 0)
    retries_left = pc.less(prev_attempts, max_retries)
    if retry_failed:
        retries_left = pa.scalar(True)
    same = pc.and_(same_content, same_config)
    failed_reason = pc.if_else(
        retries_left, pa.scalar(RETRY), pa.scalar(FORCED if not incremental else EXHAUSTED)
    )
    ok_reason = pa.scalar(FORCED if not incremental else SKIPPED)
    reason = pc.if_else(
        pc.invert(known),
        NEW,
        pc.if_else(
            pc.invert(same_content),
            CHANGED,
            pc.if_else(
                pc.invert(same_config), UPGRADE, pc.if_else(was_ok, ok_reason, failed_reason)
            ),
        ),
    )
    # A failure counts against the retries only while content and config stay the same.
    attempts = pc.if_else(pc.and_(same, pc.invert(was_ok)), pc.add(prev_attempts, 1), 1)
    return (
        joined.select(LISTING.names)
        .append_column("reason", reason)
        .append_column("known", known)
        .append_column("attempts", pc.cast(attempts, pa.int32()))
    )


def to_process(decided: pa.Table, limit: int | None = None) -> pa.Table:
    """The decided videos this run processes, in uri order, at most `limit` of them."""
    todo = decided.filter(pc.invert(pc.is_in(decided.column("reason"), pa.array(IDLE))))
    return todo.slice(0, limit) if limit is not None else todo


def reason_counts(decided: pa.Table) -> dict[str, int]:
    counts = decided.group_by("reason").aggregate([("reason", "count")]).to_pylist()
    found = {row["reason"]: row["reason_count"] for row in counts}
    return {reason: found[reason] for reason in REASONS if found.get(reason)}
