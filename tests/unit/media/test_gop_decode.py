"""GOP-aware decoding (issue 14): to the frame with counter videos of every GOP kind, bit-exact
against decoding everything on real-looking footage, and decoding little."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.support import gop_media, media
from vidbatch.media.decode import decode_samples, probe
from vidbatch.media.footage import write_footage
from vidbatch.specs import ClipSpec, FrameSpec, ShotSpec

FPS = 25

# name -> gop_counter arguments: GOP 2 s and 10 s, x264 B-frames, closed and open GOPs, HEVC,
# Matroska, and VFR with B-frames and open GOPs.
KINDS = {
    "h264_gop2_closed.mp4": dict(gop=50),
    "h264_gop2_open.mp4": dict(gop=50, open_gop=True),
    "h264_gop10_open.mp4": dict(gop=250, open_gop=True),
    "h264_gop2_open_b5.mkv": dict(gop=50, open_gop=True, bframes=5, format="matroska"),
    "hevc_gop2_open.mp4": dict(gop=50, open_gop=True, codec="libx265"),
    "h264_vfr_open.mp4": dict(gop=30, open_gop=True, times=gop_media.vfr_times(24, FPS)),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gop")
    made = {}
    for name, kw in KINDS.items():
        path = gop_media.gop_counter(folder / name, seconds=24, fps=FPS, **kw)
        made[name] = (path, gop_media.presentation_times(path))
    return made


def sample_times(times: list[float], keys: list[float], seed: int = 0) -> list[float]:
    """1 fps, every frame around each keyframe (the leading pictures of an open GOP and the
    frames just after), and random times."""
    end = times[-1]
    edge = {
        times[i + d]
        for i, t in enumerate(times)
        if t in keys
        for d in (-2, -1, 0, 1)
        if 0 <= i + d < len(times)
    }
    rng = np.random.default_rng(seed)
    grid = [float(k) for k in range(math.floor(end) + 1)]
    return sorted({*grid, *edge, *rng.uniform(0, end, 30).round(4).tolist()})


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("mode", ["seek", "keyframes", "all"])
def test_each_sample_is_the_frame_shown_at_its_time(videos, name, mode):
    path, times = videos[name]
    keys = gop_media.keyframe_times(path)
    wanted = sample_times(times, keys)
    spec = FrameSpec(1, 160, max_offset_s=0.0)  # keyframes mode with no tolerance: exact
    out = decode_samples(str(path), frame_spec=spec, frame_times=wanted, mode=mode)
    expected = [media.shown_at(times, t) for t in wanted]
    assert [media.read_counter(f) for f in out.frames] == expected
    assert np.allclose(out.frame_times, [times[i] for i in expected], atol=1e-6)


@pytest.mark.parametrize("name", list(KINDS))
def test_a_later_unit_starting_at_a_leading_picture_is_exact(videos, name):
    """A work unit whose first sample is the frame just before a keyframe: in an open GOP it
    is decoded after that keyframe, so the seek must land on the keyframe before."""
    path, times = videos[name]
    keys = gop_media.keyframe_times(path)
    i = times.index(keys[min(3, len(keys) - 1)])
    wanted = [times[i - 1], times[i - 1] + 0.5, times[i] + 1.0]
    out = decode_samples(str(path), frame_spec=FrameSpec(1, 160), frame_times=wanted)
    assert [media.read_counter(f) for f in out.frames] == [media.shown_at(times, t) for t in wanted]


def test_clips_and_frames_in_one_pass_are_exact(videos):
    path, times = videos["h264_gop10_open.mp4"]
    clip = ClipSpec(frames=8, fps=8, size=96)
    starts = [0.5, 7.9, 9.9, 19.0]
    wanted = [float(t) for t in range(24)]
    out = decode_samples(
        str(path), clips={clip: starts}, frame_spec=FrameSpec(1, 160), frame_times=wanted
    )
    got = [media.read_counter(f) for c in out.clips[clip] for f in c]
    clip_times = [s + j / clip.fps for s in starts for j in range(clip.frames)]
    assert got == [media.shown_at(times, t) for t in clip_times]
    assert [media.read_counter(f) for f in out.frames] == [media.shown_at(times, t) for t in wanted]


# ---------------------------------------------------------------- how much is decoded


@pytest.fixture(scope="module")
def gop2_30fps(tmp_path_factory):
    path = tmp_path_factory.mktemp("gop") / "gop2_30fps.mp4"
    return gop_media.gop_counter(path, seconds=20, fps=30, gop=60, bframes=3)


def test_gop_aware_seek_decodes_little_at_one_frame_per_second(gop2_30fps):
    """GOP 2 s at 30 fps, samples each second: each GOP is decoded up to its last sample, and
    non-reference B-frames before it are skipped (target: <= 16 frames decoded per frame used)."""
    wanted = [float(t) for t in range(20)]
    spec = FrameSpec(1, 160)
    seek = decode_samples(str(gop2_30fps), frame_spec=spec, frame_times=wanted)
    every = decode_samples(str(gop2_30fps), frame_spec=spec, frame_times=wanted, mode="all")
    assert seek.frames_used == every.frames_used == 20
    assert seek.frames_decoded / seek.frames_used <= 16
    assert every.frames_decoded >= 19 * 30
    assert np.array_equal(seek.frames, every.frames)


# ---------------------------------------------------------------- keyframes mode tolerance


@pytest.mark.parametrize("tolerance", [None, 0.0, 0.3, 0.9])
def test_keyframes_mode_takes_the_keyframe_within_the_tolerance(videos, tolerance):
    path, times = videos["h264_gop2_open.mp4"]
    keys = gop_media.keyframe_times(path)
    wanted = [k / 4 for k in range(4 * 23)]
    spec = FrameSpec(4, 160, max_offset_s=tolerance)
    out = decode_samples(str(path), frame_spec=spec, frame_times=wanted, mode="keyframes")
    expected = []
    for t in wanted:
        key = max(k for k in keys if k <= t + 1e-6)
        near = tolerance is None or t - key <= tolerance + 1e-6
        expected.append(times.index(key) if near else media.shown_at(times, t))
    assert [media.read_counter(f) for f in out.frames] == expected
    # When each sample is shown, so the frame rate delivered can be reported.
    assert np.allclose(out.frame_times, [times[i] for i in expected], atol=1e-6)
    assert out.frames_delivered == len(set(expected))
    if tolerance is None:
        assert out.frames_decoded == out.frames_used == len(set(expected))  # keyframes only


# ---------------------------------------------------------------- every frame for shot models


@pytest.mark.parametrize("name", ["h264_gop2_open.mp4", "h264_vfr_open.mp4", "hevc_gop2_open.mp4"])
@pytest.mark.parametrize("span", [(0.0, 3.0), (3.9, 8.05), (20.0, None)])
def test_shot_frames_are_every_frame_in_the_range(videos, name, span):
    path, times = videos[name]
    start, end = span
    shots = ShotSpec(width=96, height=54)
    detector = [start + 0.5, start + 1.5]
    out = decode_samples(
        str(path),
        frame_spec=FrameSpec(1, 160),
        frame_times=detector,
        shots=shots,
        shot_range=(start, end if end is not None else math.inf),
    )
    expected = [i for i, t in enumerate(times) if start - 1e-6 <= t < (end or 1e9) - 1e-6]
    assert out.shot_frames.shape == (len(expected), 54, 96, 3)
    assert [media.read_counter(f) for f in out.shot_frames] == expected
    assert np.allclose(out.shot_times, [times[i] for i in expected], atol=1e-6)
    # The detector frames came from the same pass.
    assert [media.read_counter(f) for f in out.frames] == [
        media.shown_at(times, t) for t in detector
    ]


def test_shot_frames_alone_default_to_the_whole_video_at_transnet_size(videos):
    path, times = videos["h264_gop2_closed.mp4"]
    out = decode_samples(str(path), shots=ShotSpec())
    assert out.shot_frames.shape == (len(times), 27, 48, 3)
    assert out.shot_frames.dtype == np.uint8
    assert np.allclose(out.shot_times, times)
    assert out.frames is None and out.clips == {}


# ---------------------------------------------------------------- real-looking footage


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    folder = tmp_path_factory.mktemp("footage")
    return {
        (keyint, open_gop): write_footage(
            folder / f"k{keyint}-{open_gop}.mp4",
            seconds=12,
            fps=24,
            width=320,
            height=180,
            keyint=keyint,
            open_gop=open_gop,
            seed=keyint,
        )
        for keyint, open_gop in [(48, False), (48, True), (240, True)]
    }


@pytest.mark.parametrize("kind", [(48, False), (48, True), (240, True)])
def test_seek_is_bit_exact_against_decoding_everything(footage, kind):
    """Skipped non-reference frames and restarts after skipped GOPs change no pixel."""
    path = str(footage[kind])
    rng = np.random.default_rng(7)
    wanted = sorted({*[float(t) for t in range(12)], *rng.uniform(0, 11.9, 25).tolist()})
    clip = ClipSpec(frames=8, fps=8, size=64)
    args = dict(clips={clip: [0.5, 5.0, 9.75]}, frame_spec=FrameSpec(1, 160), frame_times=wanted)
    every = decode_samples(path, mode="all", **args)
    for mode in ("seek", "keyframes"):
        if mode == "keyframes":
            args["frame_spec"] = FrameSpec(1, 160, max_offset_s=0.0)
        out = decode_samples(path, mode=mode, **args)
        assert np.array_equal(out.frames, every.frames)
        assert np.array_equal(out.clips[clip], every.clips[clip])
        assert np.allclose(out.frame_times, every.frame_times)
        assert out.frames_decoded < every.frames_decoded


def test_footage_is_what_it_says(footage):
    info = probe(str(footage[48, True]))
    assert (info.width, info.height, info.codec) == (320, 180, "h264")
    assert info.fps == pytest.approx(24) and info.duration_s == pytest.approx(12, abs=0.05)
    keys = gop_media.keyframe_times(footage[48, True])
    assert keys == pytest.approx([0, 2, 4, 6, 8, 10])


def test_a_container_without_presentation_times_is_decoded_straight_through(tmp_path):
    """AVI numbers packets in decode order (no B-frame reordering): seek mode must give what
    decoding everything gives, not neighbours picked from packet numbers."""
    path = gop_media.gop_counter(tmp_path / "b.avi", seconds=6, gop=50, format="avi")
    times = [0.0, 1.0, 2.5, 3.3, 5.0]
    seek, every = (
        decode_samples(str(path), frame_spec=FrameSpec(1, 160), frame_times=times, mode=mode)
        for mode in ("seek", "all")
    )
    assert np.array_equal(seek.frames, every.frames)


@pytest.mark.parametrize(
    "name", ["h264_gop2_open.mp4", "hevc_gop2_open.mp4", "h264_gop2_open_b5.mkv"]
)
def test_far_apart_samples_seek_and_land_before_a_leading_picture(videos, name):
    """Samples 10 s apart: decoding seeks across the gap instead of reading through it, and a
    sample just before a keyframe (decoded after it in an open GOP) still gets its own frame."""
    path, times = videos[name]
    i = times.index(12.0)  # a keyframe (GOP 2 s)
    wanted = [0.3, times[i - 1], times[i - 1] + 10.0]
    out = decode_samples(str(path), frame_spec=FrameSpec(1, 160), frame_times=wanted)
    assert [media.read_counter(f) for f in out.frames] == [media.shown_at(times, t) for t in wanted]
    assert out.frames_decoded <= 3 * 2 * 50  # at most the three GOPs (and one before each)


def test_the_planning_probe_can_be_handed_in_and_modes_are_checked(videos):
    path, times = videos["h264_gop2_open_b5.mkv"]
    wanted = [0.5, 7.3, 19.96]
    spec = FrameSpec(1, 160)
    given = decode_samples(str(path), frame_spec=spec, frame_times=wanted, info=probe(str(path)))
    found = decode_samples(str(path), frame_spec=spec, frame_times=wanted)
    assert np.array_equal(given.frames, found.frames)
    assert [media.read_counter(f) for f in given.frames] == [
        media.shown_at(times, t) for t in wanted
    ]
    with pytest.raises(ValueError, match="mode"):
        decode_samples(str(path), frame_spec=spec, frame_times=wanted, mode="fast")
