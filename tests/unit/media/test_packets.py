"""The packet planner on hand-built packet streams (one tick per frame): what it feeds, keeps
for references only, drops, and where decoding restarts."""

from __future__ import annotations

import math

from vidbatch.media.packets import DROP, FEED, REFS, RESTART, PacketPlanner, Sample

# Decode order of two GOPs of 6 frames with 2 B-frames, as (pts, key); dts = index - 1.
CLOSED = [(0, 1), (3, 0), (1, 0), (2, 0), (5, 0), (4, 0), (6, 1), (9, 0), (7, 0), (8, 0)]
CLOSED += [(11, 0), (10, 0), (12, 1), (15, 0), (13, 0), (14, 0)]
# Open GOPs: each keyframe is decoded before the two B-frames shown just before it.
OPEN = [(0, 1), (3, 0), (1, 0), (2, 0), (6, 1), (4, 0), (5, 0), (9, 0), (7, 0), (8, 0)]
OPEN += [(12, 1), (10, 0), (11, 0), (15, 0), (13, 0), (14, 0)]


def plan(stream, samples, shots=None) -> list[tuple[str, int | None]]:
    planner = PacketPlanner(samples, shots)
    actions = []
    for index, (pts, key) in enumerate(stream):
        actions += planner.push(pts, pts, index - 1, bool(key))
        if planner.done:
            break
    else:
        actions += planner.finish()
    return [(action, item) for action, item in actions]


def by_action(actions) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {FEED: [], REFS: [], DROP: []}
    for action, pts in actions:
        if action != RESTART:
            out[action].append(pts)
    return out


def test_closed_gop_stops_after_the_last_sample_and_restarts_at_the_next_keyframe():
    actions = plan(CLOSED, [Sample(1), Sample(7)])
    got = by_action(actions)
    assert got[FEED] == [1, 7]
    assert got[REFS] == [0, 3, 6, 9]  # references of 1 and of 7, decoded but not shown
    assert got[DROP][:3] == [2, 5, 4]  # after 1 in its GOP: never decoded
    # The decoder starts afresh at the keyframe (6) after the dropped stretch.
    assert actions[actions.index((DROP, 4)) + 1] == (RESTART, None)
    assert actions.index((REFS, 6)) == actions.index((DROP, 4)) + 2


def test_a_leading_picture_is_decoded_on_from_the_previous_keyframe():
    """5 is shown before keyframe 6 but decoded after it (open GOP): nothing before it drops."""
    actions = plan(OPEN, [Sample(5)])
    got = by_action(actions)
    assert got[FEED] == [5]
    assert got[REFS] == [0, 3, 1, 2, 6, 4]
    assert actions[-2:] == [(FEED, 5), (DROP, 9)]  # 9 was read to settle 5, then left


def test_after_a_restart_the_keyframes_leading_pictures_are_dropped():
    actions = plan(OPEN, [Sample(7)])
    got = by_action(actions)
    assert got[FEED] == [7]
    assert got[DROP][:6] == [0, 3, 1, 2, 4, 5]  # 4 and 5 reference the first GOP
    assert (RESTART, None) in actions and got[REFS] == [6, 9]


def test_a_sample_is_settled_only_once_no_later_frame_can_be_shown_before_it():
    planner = PacketPlanner([Sample(2)])
    assert planner.push(0, 0, -1, True) == []
    planner.push(3, 3, 0, False)
    planner.push(1, 1, 1, False)
    assert planner.targets == [None]  # dts 1: frame 2 may still come
    planner.push(2, 2, 2, False)
    assert planner.targets == [None]  # dts 2: something at 2 could still come
    actions = planner.push(5, 5, 3, False)
    assert planner.targets == [2]
    assert (FEED, 2) in actions and planner.done


def test_a_sample_may_take_the_latest_keyframe_within_its_tolerance():
    # Sample at 8: keyframe 6 is 2 ticks before it. Allowed from 6 on: the keyframe.
    near = plan(CLOSED, [Sample(8, keyframe_from=6)])
    assert by_action(near)[FEED] == [6] and by_action(near)[REFS] == []
    # Allowed only from 7 on: decode on to the exact frame.
    exact = plan(CLOSED, [Sample(8, keyframe_from=7)])
    assert by_action(exact)[FEED] == [8]
    # No tolerance limit: every sample takes a keyframe; nothing else is decoded.
    every = plan(CLOSED, [Sample(t, keyframe_from=-math.inf) for t in (1, 4, 8, 13)])
    assert by_action(every)[FEED] == [0, 6, 12] and by_action(every)[REFS] == []


def test_shot_frames_are_every_frame_in_the_range_with_their_references():
    got = by_action(plan(OPEN, [], shots=(5, 8)))
    assert sorted(got[FEED]) == [5, 6, 7]
    assert got[REFS] == [0, 3, 1, 2, 4, 9]  # 5 needs the first GOP; 7 needs 9


def test_a_keyframe_too_early_for_the_tolerance_is_not_held_back_for_the_rest_of_the_gop():
    """One GOP of 1000 frames; the sample at 50 may take a keyframe from 45 on: keyframe 0 is
    settled (a reference of the exact frame) once frame 50 is, not at the end of the GOP."""
    planner = PacketPlanner([Sample(50, keyframe_from=45), Sample(900, keyframe_from=895)])
    released_at = None
    for i in range(1000):
        actions = planner.push(i, i, i - 1, i == 0)
        if released_at is None and any(item == 0 for _, item in actions):
            released_at = i
    assert released_at is not None and released_at <= 52
