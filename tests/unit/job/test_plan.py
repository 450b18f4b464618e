"""Planning without Ray: the incremental decision table, the config key, planning limits."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.conftest import job_config
from tests.support import crafted
from vidbatch.config import Limits, config_from_dict
from vidbatch.index import tables
from vidbatch.job.plan import (
    LISTING,
    changed_keys,
    config_key,
    decide,
    reason_counts,
    row_config,
    to_process,
)
from vidbatch.job.stages import ProbeStage
from vidbatch.models import describe_model


def listing(*rows: tuple[str, str]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"video_id": v, "uri": u, "source": u, "size_bytes": 10} for v, u in rows], schema=LISTING
    )


def current(*rows: tuple[str, str, str, str, int]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {"video_id": v, "uri": u, "status": s, "config_key": k, "attempts": a}
            for v, u, s, k, a in rows
        ],
        schema=tables.VIDEOS,
    )


# (listed id, indexed id, status, key, attempts) -> reason, by hand from the contract.
CASES = [
    ("a", None, None, None, 0, "new", 1),
    ("a", "a", "ok", "K", 0, "skipped", 1),
    ("a2", "a", "ok", "K", 0, "changed", 1),
    ("a", "a", "ok", "old", 0, "upgrade", 1),
    ("a", "a", "failed", "K", 1, "retry", 2),
    ("a", "a", "failed", "K", 3, "exhausted", 4),
    ("a2", "a", "failed", "K", 3, "changed", 1),  # new content: the count starts again
    ("a", "a", "failed", "old", 3, "upgrade", 1),  # new config: likewise
]


@pytest.mark.parametrize(
    ("listed", "indexed", "status", "key", "attempts", "reason", "next_attempts"), CASES
)
def test_decision_table(listed, indexed, status, key, attempts, reason, next_attempts):
    index = current((indexed, "u", status, key, attempts)) if indexed else tables.empty("videos")
    decided = decide(listing((listed, "u")), index, "K", max_retries=3)
    assert decided.column("reason").to_pylist() == [reason]
    assert decided.column("known").to_pylist() == [indexed is not None]
    assert decided.column("attempts").to_pylist() == [next_attempts]


def test_not_incremental_forces_and_retry_failed_retries():
    index = current(("a", "ua", "ok", "K", 0), ("b", "ub", "failed", "K", 3))
    listed = listing(("a", "ua"), ("b", "ub"), ("c", "uc"))
    forced = decide(listed, index, "K", incremental=False, max_retries=3)
    assert forced.column("reason").to_pylist() == ["forced", "forced", "new"]
    retried = decide(listed, index, "K", max_retries=3, retry_failed=True)
    assert retried.column("reason").to_pylist() == ["skipped", "retry", "new"]
    assert reason_counts(retried) == {"new": 1, "retry": 1, "skipped": 1}
    assert to_process(retried).column("uri").to_pylist() == ["ub", "uc"]
    assert to_process(retried, limit=1).column("uri").to_pylist() == ["ub"]


def test_config_key_covers_what_changes_rows_only():
    base = job_config(
        "/in", "/out", models=[{"name": "motion-cnn", "top_k": 3}, {"name": "synth-detector"}]
    )
    models = [describe_model("motion-cnn"), describe_model("synth-detector")]
    key = config_key(config_from_dict(base), models)

    def key_with(**changes) -> str:
        return config_key(config_from_dict({**base, **changes}), models)

    # Unread or not row-deciding: the classifier's own clip spec wins over sampling.clips;
    # paths, resources and exact decode modes give the same rows.
    assert key_with(sampling={"clips": {"frames": 4, "fps": 2, "size": 32}}) == key
    assert key_with(output={"uri": "/elsewhere"}, resources={"commit_every": 7}) == key
    assert key_with(sampling={"decode_mode": "all"}) == key
    # Row-deciding: the detector's frame rate and a classifier option.
    assert key_with(sampling={"frames": {"fps": 2, "size": 320}}) != key
    changed = {**base, "models": [{"name": "motion-cnn", "top_k": 2}, {"name": "synth-detector"}]}
    assert config_key(config_from_dict(changed), models) != key
    before = row_config(config_from_dict(base), models)
    after = row_config(config_from_dict(changed), models)
    assert changed_keys(before, after) == ["models[0].top_k"]


def probe_units(paths, **limits) -> list[dict]:
    stage = ProbeStage(limits=Limits(**limits), timeout_s=0, segment_seconds=60.0)
    stage.setup()
    videos = pa.table(
        {
            "video_id": [f"v{i}" for i in range(len(paths))],
            "uri": [str(p) for p in paths],
            "source": [str(p) for p in paths],
            "size_bytes": [p.stat().st_size for p in paths],
            "error": [None] * len(paths),
            "chunk": [0] * len(paths),
        }
    )
    try:
        return stage.process(videos).to_pylist()
    finally:
        stage.teardown()


def test_headers_claiming_absurd_durations_become_one_failed_unit(tmp_path):
    real = crafted.tiny_mp4(tmp_path / "real.mp4")
    timescale = crafted.with_mdhd_timescale(real, tmp_path / "timescale.mp4")  # 1 s -> 2.8 h
    stts = crafted.with_stts_delta(real, tmp_path / "stts.mp4")  # 1 s -> 582 h
    assert real.stat().st_size < 2048
    units = {u["uri"].rsplit("/", 1)[-1]: u for u in probe_units([real, timescale, stts])}
    assert units["real.mp4"]["error"] == "" and units["real.mp4"]["segment_count"] == 1
    assert units["stts.mp4"]["error"].startswith(
        "probe: duration 582.5 h is over limits.max_video_hours=24"
    )
    assert units["timescale.mp4"]["error"].startswith("probe: header claims 10240 s for ")
    assert "under limits.min_bitrate_bps=1000" in units["timescale.mp4"]["error"]
    assert all(u["segment_count"] == 1 for u in units.values())  # one unit each, never thousands


def test_segment_cap_names_the_limit(tmp_path):
    real = crafted.tiny_mp4(tmp_path / "real.mp4", seconds=3)
    (unit,) = probe_units([real], max_segments_per_video=1, min_bitrate_bps=0)
    assert unit["error"] == ""  # 3 s in 60 s segments: one
    stage_units = ProbeStage(
        limits=Limits(max_segments_per_video=2), timeout_s=0, segment_seconds=1.0
    )
    stage_units.setup()
    videos = pa.table(
        {
            "video_id": ["v"],
            "uri": [str(real)],
            "source": [str(real)],
            "size_bytes": [real.stat().st_size],
            "error": [None],
            "chunk": [0],
        }
    )
    (failed,) = stage_units.process(videos).to_pylist()
    assert failed["error"] == (
        "probe: 3 segments is over limits.max_segments_per_video=2 "
        "(raise it or sampling.segment_seconds)"
    )


def test_keyframes_mode_refuses_a_classifier_before_anything_starts(tmp_path):
    from vidbatch.errors import ConfigError
    from vidbatch.job.run import plan_run

    config = config_from_dict(
        job_config(str(tmp_path), str(tmp_path / "out"), sampling={"decode_mode": "keyframes"})
    )
    with pytest.raises(ConfigError, match="keyframes only suits detectors"):
        plan_run(config)
    assert not (tmp_path / "out").exists()


def test_work_units_past_the_last_packet_are_not_planned(tmp_path):
    short = crafted.cut_short(tmp_path / "short.mp4")  # says 60 s, packets stop near 9 s
    stage = ProbeStage(timeout_s=0, segment_seconds=10.0)
    stage.setup()
    videos = pa.table(
        {
            "video_id": ["v"],
            "uri": [str(short)],
            "source": [str(short)],
            "size_bytes": [short.stat().st_size],
            "error": [None],
            "chunk": [0],
        }
    )
    (unit,) = stage.process(videos).to_pylist()
    stage.teardown()
    assert unit["error"].startswith("probe: stream ends at ")
    assert unit["error"].endswith("but the container says 60.00s: truncated or corrupt")
    end = float(unit["error"].split("stream ends at ")[1].split("s ")[0])
    assert 3 < end < 20
