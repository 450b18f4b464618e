from __future__ import annotations

import math

import av
import pytest

from tests.support import media
from vidbatch.errors import StageError
from vidbatch.media.decode import decode_clips, decode_samples, probe
from vidbatch.media.synth import write_keyframed
from vidbatch.specs import ClipSpec, FrameSpec


@pytest.fixture(scope="module")
def counter(tmp_path_factory):
    return media.counter_video(tmp_path_factory.mktemp("v") / "counter.mp4", seconds=20, fps=25)


def test_probe_reads_header(counter):
    info = probe(str(counter))
    assert (info.width, info.height, info.codec) == (320, 240, "h264")
    assert info.fps == pytest.approx(25)
    assert info.duration_s == pytest.approx(20, abs=0.05)


@pytest.mark.parametrize("start", [0.0, 3.0, 10.0, 17.5])
def test_clip_frames_are_those_displayed_at_sample_times(counter, start):
    clip = ClipSpec(frames=8, fps=4, size=96)
    clips = decode_clips(str(counter), [start], clip)
    assert clips.shape == (1, 8, 96, 96, 3)
    shown = [media.read_counter(f) for f in clips[0]]
    expected = [math.floor((start + j / clip.fps) * 25 + 1e-6) for j in range(clip.frames)]
    assert shown == expected


def test_one_pass_serves_several_specs_and_detector_frames(counter):
    a, b = ClipSpec(frames=4, fps=2, size=64), ClipSpec(frames=16, fps=8, size=112)
    out = decode_samples(
        str(counter),
        clips={a: [4.0, 6.0], b: [4.0]},
        frame_spec=FrameSpec(fps=1, size=160),
        frame_times=[4.0, 5.0, 6.0],
    )
    assert out.clips[a].shape == (2, 4, 64, 64, 3) and out.clips[b].shape == (1, 16, 112, 112, 3)
    assert out.frames.shape == (3, 120, 160, 3)  # aspect kept, longer side 160
    assert [media.read_counter(f) for f in out.frames] == [100, 125, 150]
    assert media.read_counter(out.clips[a][1, 0]) == 150
    # Seeking to the keyframe before 4 s: far fewer frames decoded than the 200 up to 8 s.
    assert out.frames_decoded < 130
    assert out.frames_used <= 2 * 4 + 16 + 3


def test_truncated_moov_last_file_fails_at_probe(counter, tmp_path):
    cut = media.truncated(counter, tmp_path / "cut.mp4", 0.5)
    with pytest.raises(StageError) as err:
        probe(str(cut))
    assert err.value.stage == "probe"


@pytest.mark.parametrize("start", [12.0, 18.0])
def test_truncated_faststart_file_is_a_decode_error_not_silent_padding(tmp_path, start):
    whole = media.counter_video(tmp_path / "fs.mp4", seconds=20, fps=25, faststart=True)
    cut = media.truncated(whole, tmp_path / "cut.mp4", 0.5)
    assert probe(str(cut)).duration_s == pytest.approx(20, abs=0.05)  # the header still claims 20 s
    assert decode_clips(str(cut), [2.0], ClipSpec(frames=4, fps=4, size=32)).shape[0] == 1
    with pytest.raises(StageError, match="truncated or corrupt") as err:
        decode_clips(str(cut), [start], ClipSpec(frames=16, fps=4, size=32))
    assert err.value.stage == "decode"


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (media.text_as_video, "cannot open"),
        (media.audio_only, "no video stream"),
    ],
)
def test_not_a_video_is_one_line_probe_error(tmp_path, make, needle):
    path = make(tmp_path / "bad.mp4")
    with pytest.raises(StageError) as err:
        probe(str(path))
    assert err.value.stage == "probe"
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def gop2(tmp_path_factory):
    """12 s at 25 fps with a keyframe every 2 s (50 frames)."""
    return media.counter_video(
        tmp_path_factory.mktemp("v") / "gop2.mp4", seconds=12, fps=25, gop=50
    )


@pytest.mark.parametrize("mode", ["all", "seek", "keyframes"])
def test_decode_modes_at_one_frame_per_second(gop2, mode):
    times = [float(t) for t in range(12)]  # up to 11 s: past the last keyframe (10 s)
    out = decode_samples(str(gop2), frame_spec=FrameSpec(1, 160), frame_times=times, mode=mode)
    shown = [media.read_counter(f) for f in out.frames]
    if mode == "keyframes":
        # Each sample is the latest keyframe at or before its time; only keyframes are decoded.
        with av.open(str(gop2)) as container:
            keys = [
                round(float(p.pts * p.time_base) * 25)
                for p in container.demux(video=0)
                if p.is_keyframe and p.pts is not None
            ]
        assert shown == [max(k for k in keys if k <= t * 25) for t in times]
        assert out.frames_decoded / out.frames_used <= 1.5
        # When each sample is shown: the keyframe's own time, not the requested one.
        assert [round(t * 25) for t in out.frame_times] == shown
    else:
        assert shown == [25 * int(t) for t in times]
        if mode == "all":
            assert out.frames_decoded >= 25 * 11  # every frame up to 11 s
        else:  # each GOP (50 frames) only up to its last sample (frame 25), B-frames skipped
            assert out.frames_decoded <= 6 * 26


@pytest.mark.parametrize("mode", ["seek", "keyframes"])
def test_irregular_keyframes_end_and_give_the_right_frames(tmp_path, mode):
    """Keyframes only at 0, 0.5 and 10 s of 20 s: a seek for 2 s lands back at 0.5 s, and
    jumping again would loop forever (it did); decoding goes through instead."""
    path = write_keyframed(tmp_path / "irregular.mp4", seconds=20, fps=10, keys=(0, 0.5, 10))
    times = [float(t) for t in range(20)]
    out = decode_samples(str(path), frame_spec=FrameSpec(1, 32), frame_times=times, mode=mode)
    shown = [round(float(f.mean())) for f in out.frames]
    if mode == "seek":
        expected = [10 * int(t) for t in times]
    else:  # the latest keyframe at or before each time
        expected = [max(k for k in (0, 5, 100) if k <= 10 * t) for t in times]
    assert all(abs(a - b) <= 2 for a, b in zip(shown, expected, strict=True)), shown
    assert out.frames_decoded <= 200 + 10


def test_keyframes_stage_reports_each_keyframe_once_at_its_own_time(gop2):
    from vidbatch.job.stages import DecodeStage, get_array

    row = {
        "video_id": "v",
        "source": str(gop2),
        "segment_index": 0,
        "segment_count": 1,
        "start_s": 0.0,
        "end_s": 12.0,
        "duration_s": 12.0,
        "error": "",
    }
    out = DecodeStage(frame_spec=FrameSpec(1, 160), mode="keyframes").decode(row)
    times = list(out["frame_times"])
    frames = get_array(out, "frames")
    assert len(frames) == len(times) == len(set(times)) < 12
    assert [media.read_counter(f) for f in frames] == [round(t * 25) for t in times]
