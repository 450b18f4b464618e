from __future__ import annotations

import pytest

from vidbatch.job.plan import clip_count, clip_starts, frame_times, in_segment, plan_segments
from vidbatch.specs import ClipSpec, FrameSpec

CLIP = ClipSpec(frames=16, fps=8, size=112)  # 2 s clips


@pytest.mark.parametrize(
    ("duration", "expected"), [(0.5, 1), (2.0, 1), (3.99, 1), (4.0, 2), (121.0, 60), (1200.0, 600)]
)
def test_clip_count_tiles_whole_clips(duration, expected):
    assert clip_count(duration, CLIP) == expected


def test_segments_cover_video_once_and_align_to_clips():
    segments = plan_segments(250.0, 121.0, [CLIP])
    assert [s.index for s in segments] == [0, 1, 2]
    assert segments[0].start_s == 0 and segments[-1].end_s == 250.0
    for a, b in zip(segments, segments[1:], strict=False):
        assert a.end_s == b.start_s
        assert a.end_s % CLIP.seconds == 0  # no clip straddles a boundary
    starts = clip_starts(250.0, CLIP)
    assigned = [
        t for s in segments for t in in_segment(starts, s, last=s.index == len(segments) - 1)
    ]
    assert assigned == starts  # each clip exactly once, in order


def test_short_video_is_one_segment():
    assert len(plan_segments(3.0, 120.0, [CLIP])) == 1


def test_segment_shorter_than_clip_is_widened_to_one_clip():
    segments = plan_segments(10.0, 1.0, [CLIP])
    assert all(s.end_s - s.start_s >= CLIP.seconds - 1e-9 for s in segments[:-1])


def test_frame_times_stay_inside_video():
    assert frame_times(2.5, FrameSpec(fps=1)) == [0.0, 1.0, 2.0]
    assert frame_times(3.0, FrameSpec(fps=2)) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
