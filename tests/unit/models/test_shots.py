"""Shot boundaries: TransNetV2 with its shipped weights on real footage cut at known times, the
rule that turns probabilities into shots, and shot models of a user's own."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from tests.support.real_footage import assemble_cuts_video, decode_every_frame
from vidbatch.models import (
    ShotDetector,
    describe_model,
    get_model_spec,
    load_model,
    shots_from_probabilities,
)
from vidbatch.models.transnetv2 import CONTEXT_FRAMES
from vidbatch.specs import ShotSpec

TOLERANCE_S = 0.25


@pytest.fixture(scope="module")
def transnet() -> ShotDetector:
    return load_model("transnetv2", device="cpu")


@pytest.fixture(scope="module")
def footage(tmp_path_factory, transnet):
    """The assembled real-footage video, every frame at 48x27, and TransNetV2's probabilities."""
    video = assemble_cuts_video(tmp_path_factory.mktemp("footage") / "cuts.mp4")
    times, frames = decode_every_frame(video.path)
    assert len(frames) == video.frames
    return video, times, frames, transnet.predict(frames)


def test_transnetv2_is_registered_with_shipped_weights(transnet):
    spec = get_model_spec("transnetv2")
    assert (spec.family, spec.task) == ("transnetv2", "shots") and spec.weights_shipped
    data = open(spec.default_weights, "rb").read()
    assert transnet.version == hashlib.sha256(data).hexdigest()[:12]
    assert transnet.spec == ShotSpec(width=48, height=27)
    assert transnet.context_frames == CONTEXT_FRAMES == 25 and transnet.window == 100
    info = describe_model("transnetv2")
    assert (info.task, info.version, info.shot, info.context_frames) == (
        "shots",
        transnet.version,
        transnet.spec,
        transnet.context_frames,
    )
    assert info.weights_shipped and info.input == "every frame, 48x27"


def test_hard_cuts_in_real_footage_are_found(footage):
    video, times, _, probs = footage
    shots = shots_from_probabilities(times, probs, duration_s=video.duration_s)
    boundaries = np.array([s.start_s for s in shots[1:]])
    for cut in video.cuts_s:
        nearest = np.abs(boundaries - cut).min()
        assert nearest <= TOLERANCE_S, (cut, boundaries)
    # No boundary inside a real clip: every one is a known cut or inside the dissolve.
    lo, hi = video.dissolve_s
    for at in boundaries:
        near_cut = np.abs(np.array(video.cuts_s) - at).min() <= TOLERANCE_S
        assert near_cut or lo - TOLERANCE_S <= at <= hi + TOLERANCE_S, (at, video.shots_s)
    for start, end in video.shots_s:  # no frame well inside a shot scores as a transition
        inside = (times > start + TOLERANCE_S) & (times < end - TOLERANCE_S)
        assert not inside.any() or probs[inside].max() < 0.5, (start, end, probs[inside].max())


def test_dissolve_is_found_once_in_its_middle(footage):
    video, times, _, probs = footage
    shots = shots_from_probabilities(times, probs, duration_s=video.duration_s)
    lo, hi = video.dissolve_s
    inside = [s for s in shots if lo <= s.start_s <= hi + 1 / 25]
    assert len(inside) == 1, shots
    assert abs(inside[0].start_s - (lo + hi) / 2) <= TOLERANCE_S
    assert inside[0].transition_score > 0.5
    # One shot per clip part, tiling the video in time order.
    assert len(shots) == len(video.shots_s)
    assert [s.shot_index for s in shots] == list(range(len(shots)))
    assert shots[0].start_s == 0.0 and shots[-1].end_s == video.duration_s
    assert all(a.end_s == b.start_s for a, b in zip(shots, shots[1:], strict=False))


def test_a_range_scored_with_context_matches_the_whole_video(footage, transnet):
    """Two adjacent ranges, each given `context_frames` frames on both sides, stitch into the
    same probabilities as one pass, and the cut on their border (frame 132) is found once."""
    video, times, frames, probs = footage
    ctx = transnet.context_frames
    border, lo, hi = 132, 60, 155
    assert abs(times[border] - video.cuts_s[0]) < 1e-6
    parts = []
    for a, b in ((lo, border), (border, hi)):
        scored = transnet.predict(frames[a - ctx : b + ctx])
        parts.append(scored[ctx : ctx + b - a])
    stitched = np.concatenate(parts)
    np.testing.assert_allclose(stitched, probs[lo:hi], atol=0.05)
    shots = shots_from_probabilities(times[lo:hi], stitched, duration_s=times[hi])
    assert [s.start_s for s in shots[1:]] == [pytest.approx(video.cuts_s[0])]


def test_predict_checks_its_input(transnet):
    assert transnet.predict(np.empty((0, 27, 48, 3), np.uint8)).shape == (0,)
    few = np.random.default_rng(0).integers(0, 256, (7, 27, 48, 3), dtype=np.uint8)
    out = transnet.predict(few)  # shorter than one window: padded, not refused
    assert out.shape == (7,) and out.dtype == np.float32 and np.all((out >= 0) & (out <= 1))
    with pytest.raises(ValueError, match=r"expects uint8 frames \(N, 27, 48, 3\)"):
        transnet.predict(np.zeros((4, 48, 27, 3), np.uint8))
    with pytest.raises(ValueError, match="expects uint8 frames"):
        transnet.predict(few.astype(np.float32))


def test_transnetv2_weights_are_read_without_unpickling_code(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"fc1.weight": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(ValueError, match="refused") as info:
        load_model("transnetv2", str(path), device="cpu")
    assert "\n" not in str(info.value) and not marker.exists()


def test_other_weights_give_another_version(tmp_path, transnet):
    path = tmp_path / "tuned.pth"
    state = {k: v.clone() for k, v in transnet.module.state_dict().items()}
    state["cls_layer1.bias"] += 1.0
    torch.save(state, path)
    tuned = load_model("transnetv2", str(path), device="cpu")
    assert tuned.version == hashlib.sha256(path.read_bytes()).hexdigest()[:12] != transnet.version
    assert describe_model("transnetv2", str(path)).version == tuned.version


# ---------------------------------------------------------------- probabilities -> shots

T25 = np.arange(100) / 25.0


def test_a_cut_starts_the_new_shot_at_the_frame_after_the_peak():
    p = np.zeros(100)
    p[49] = 0.9  # TransNetV2 marks the last frame of the outgoing shot
    shots = shots_from_probabilities(T25, p, duration_s=4.0)
    assert shots == [(0, 0.0, 2.0, 0.0), (1, 2.0, 4.0, pytest.approx(0.9))]


def test_a_run_is_one_transition_at_its_peak():
    p = np.zeros(100)
    p[40:52] = np.linspace(0.55, 0.7, 12)
    p[46] = 0.95  # the dissolve's middle
    shots = shots_from_probabilities(T25, p, duration_s=4.0)
    assert [s.start_s for s in shots] == [0.0, 47 / 25]
    assert shots[1].transition_score == pytest.approx(0.95)


def test_threshold_and_edges():
    p = np.zeros(100)
    p[[0, 30, 60, 99]] = [0.9, 0.4, 0.6, 0.9]
    # At the first frame the boundary (frame 1) is kept; at the last frame it would be the end.
    shots = shots_from_probabilities(T25, p, duration_s=4.0)
    assert [s.start_s for s in shots] == [0.0, 1 / 25, 61 / 25]
    low = shots_from_probabilities(T25, p, duration_s=4.0, threshold=0.3)
    assert [s.start_s for s in low] == [0.0, 1 / 25, 31 / 25, 61 / 25]
    assert shots_from_probabilities([], [], duration_s=0.0) == []
    assert shots_from_probabilities(T25, np.zeros(100), duration_s=4.0) == [(0, 0.0, 4.0, 0.0)]
    with pytest.raises(ValueError, match="equal 1-D"):
        shots_from_probabilities(T25, p[:10], duration_s=4.0)
    with pytest.raises(ValueError, match="increasing"):
        shots_from_probabilities(T25[::-1], p, duration_s=4.0)


# ---------------------------------------------------------------- a user's shot model


def test_a_factory_shot_model_runs_in_windows():
    model = load_model("tests.support.custom_model:build_shots", device="cpu")
    assert isinstance(model, ShotDetector) and model.family == "custom"
    assert (model.spec, model.window, model.context_frames) == (ShotSpec(16, 9), 20, 5)
    frames = np.zeros((93, 9, 16, 3), np.uint8)
    frames[37:] = 200  # one hard cut: frame 37 is the first of the new shot
    times = np.arange(93) / 25.0
    probs = model.predict(frames)
    shots = shots_from_probabilities(times, probs, duration_s=93 / 25)
    assert [s.start_s for s in shots] == [0.0, pytest.approx(37 / 25)]
    info = describe_model("tests.support.custom_model:build_shots")
    assert (info.task, info.shot, info.context_frames) == ("shots", ShotSpec(16, 9), 5)
    assert info.version == model.version
