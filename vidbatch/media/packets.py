"""Which packets a decode needs: GOP-aware planning over the demuxed packet stream.

`PacketPlanner` sees packets in decode order with their timestamps (pts, dts, key flag; no
decoding) and settles each one:

- FEED: the decoder must show it (a sample's frame, a shot frame);
- REFS: it lies between samples, so the decoder keeps only what later frames reference
  (FFmpeg's skip_frame NONREF);
- DROP: no remaining sample needs it, and a later keyframe restarts decoding for all of them.

Times are integer stream ticks, so "the frame shown at t" (the latest frame presented at or
before t) is exact. Two rules keep it exact:

- A sample's frame is settled only once a packet with dts > its time has been demuxed (every
  later packet has pts >= dts). Until then the packets that might be it are held, not guessed.
- A stretch is dropped only up to a keyframe presented at or before the earliest need still
  open: every remaining frame then follows that keyframe. Open GOPs stay exact: a leading
  picture (decoded after its keyframe, shown before it) is reached by decoding on from the
  previous keyframe; after a drop, the next keyframe's leading pictures are dropped too (their
  references are gone), and nothing needs them.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

FEED, REFS, DROP, RESTART = "feed", "refs", "drop", "restart"
Action = tuple[str, Any]  # (FEED | REFS | DROP, packet) or (RESTART, None) before a fresh start

# Packets not needed are held while a keyframe may still make them droppable; past these
# bounds they are fed (decoding them is never wrong, only slower).
HOLD_PACKETS = 4096
HOLD_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Sample:
    """A frame wanted at `limit` (ticks): the latest frame with pts <= limit; or, when the
    latest keyframe at or before `limit` has pts >= `keyframe_from`, that keyframe."""

    limit: int
    keyframe_from: float = math.inf


class _Entry:
    __slots__ = ("item", "pts", "key", "size", "state")

    def __init__(self, item: Any, pts: int, key: bool, size: int) -> None:
        self.item, self.pts, self.key, self.size = item, pts, key, size
        self.state: str | None = None  # FEED | REFS (not needed) | None (not yet known)


class PacketPlanner:
    """Give `push` every demuxed packet in decode order; it returns the actions settled so
    far, in decode order. `finish` at the end of the stream; `restart` after a seek."""

    def __init__(self, samples: Sequence[Sample], shots: tuple[int, int] | None = None) -> None:
        self.samples = list(samples)
        self.shots = shots  # every frame with lo <= pts < hi
        self._order = sorted(range(len(self.samples)), key=lambda i: self.samples[i].limit)
        self._limits = [self.samples[i].limit for i in self._order]
        self.targets: list[int | None] = [None] * len(self.samples)  # pts shown per sample
        self._fed = [False] * len(self.samples)
        self._settled = 0  # samples with a target: a prefix of the limit order
        self._unfed = 0  # the first sample (limit order) whose frame is not yet fed
        self._seen: list[int] = []  # sorted pts of every packet demuxed
        self._seen_keys: list[int] = []
        self._seen_key_set: set[int] = set()
        # How far before a sample a keyframe it may take instead of its exact frame can lie
        # (keyframes mode; 0: no sample may, inf: any keyframe will do).
        self._keyframe_reach = max(
            (s.limit - s.keyframe_from for s in self.samples if s.keyframe_from != math.inf),
            default=0,
        )
        self._horizon = -math.inf  # every packet not yet demuxed has pts >= this
        self._queue: deque[_Entry] = deque()
        self._queued: dict[int, _Entry] = {}
        self._undecided: list[_Entry] = []
        self._keys: list[_Entry] = []  # keyframes in the queue
        self._need = 0  # FEED entries in the queue
        self._shot_need = 0
        self._held = 0  # bytes in the queue
        self._by_target: dict[int, list[int]] = {}
        self._fresh = True  # the decoder holds nothing: the next packet fed starts afresh
        self._after_seek = False  # ...and must be a keyframe (a file's first packet need not)
        self._restart_key: int | None = None  # pts of the keyframe decoding restarted at
        self.keyframe_interval = 0  # the longest distance between two keyframes seen (ticks)

    # ------------------------------------------------------------------ what callers read

    @property
    def done(self) -> bool:
        """Every sample's frame and every shot frame has gone to the decoder."""
        return self._unfed >= len(self._limits) and self._shots_done

    @property
    def horizon(self) -> float:
        return self._horizon

    @property
    def needed_from(self) -> float:
        """The earliest time (ticks) still needed: decoding may restart at any keyframe
        presented at or before it."""
        sample = self._limits[self._unfed] if self._unfed < len(self._limits) else math.inf
        return sample if self._shots_done else min(sample, self.shots[0])

    @property
    def holds_needed(self) -> bool:
        """Packets the decoder must get are queued (a seek now would lose them)."""
        return self._need > 0

    @property
    def settled(self) -> int:
        return self._settled

    def settled_since(self, count: int) -> list[int]:
        """The samples (indexes into `samples`) settled after the first `count`."""
        return self._order[count : self._settled]

    def final(self, pts: int) -> bool:
        """No sample still to settle can choose the frame presented at `pts`."""
        first, last = self._candidates(pts, pts in self._seen_key_set)
        return last <= first or last <= self._settled

    @property
    def last_pts(self) -> int | None:
        """The latest presentation time demuxed."""
        return self._seen[-1] if self._seen else None

    # ------------------------------------------------------------------ input

    def push(self, item: Any, pts: int, dts: int | None, key: bool, size: int = 0) -> list[Action]:
        if self._after_seek and not key:
            return [(DROP, item)]  # after a seek nothing decodes before a keyframe
        self._after_seek = False
        _insert(self._seen, pts)
        if key:
            self._seen_key_set.add(pts)
            if _insert(self._seen_keys, pts):
                j = bisect.bisect_left(self._seen_keys, pts)
                if j:
                    gap = pts - self._seen_keys[j - 1]
                    self.keyframe_interval = max(self.keyframe_interval, gap)
        if dts is not None:
            self._horizon = max(self._horizon, dts)
        elif len(self._seen) == 1:
            self._horizon = max(self._horizon, pts)  # a first packet without dts (Matroska)
        entry = _Entry(item, pts, key, size)
        self._queue.append(entry)
        self._queued[pts] = entry
        self._held += size
        if key:
            self._keys.append(entry)
        self._undecided.append(entry)
        return self._advance()

    def finish(self) -> list[Action]:
        """The stream ended: every sample settles."""
        self._horizon = math.inf
        return self._advance()

    def restart(self) -> None:
        """The caller seeked: queued packets are forgotten and decoding restarts at the next
        keyframe demuxed (what was learned about timestamps stays true)."""
        self._queue.clear()
        self._queued.clear()
        self._undecided.clear()
        self._keys.clear()
        self._need = self._shot_need = self._held = 0
        self._fresh = self._after_seek = True
        self._restart_key = None

    # ------------------------------------------------------------------ planning

    @property
    def _shots_done(self) -> bool:
        return self.shots is None or (self._horizon >= self.shots[1] and not self._shot_need)

    def _advance(self) -> list[Action]:
        self._settle_samples()
        undecided = []
        for entry in self._undecided:
            state = self._decide(entry)
            if state is None:
                undecided.append(entry)
            else:
                self._set(entry, state)
        self._undecided = undecided
        return list(self._release())

    def _settle_samples(self) -> None:
        """Choose the frame of every sample whose time the horizon has passed."""
        while self._settled < len(self._limits) and self._horizon > self._limits[self._settled]:
            limit, index = self._limits[self._settled], self._order[self._settled]
            i = bisect.bisect_right(self._seen, limit)
            if i:
                target = self._seen[i - 1]
            elif self._seen:
                target = self._seen[0]  # before the first frame: the first frame is shown
            else:
                return
            k = bisect.bisect_right(self._seen_keys, limit)
            if k and self._seen_keys[k - 1] >= self.samples[index].keyframe_from:
                target = self._seen_keys[k - 1]
            self.targets[index] = target
            self._by_target.setdefault(target, []).append(index)
            self._settled += 1
            entry = self._queued.get(target)
            if entry is not None:
                self._set(entry, FEED)
            else:
                # Fed already (shown at an earlier sample too) or, in a stream breaking the
                # keyframe rules, gone: nothing more can be done for it here.
                self._mark_fed(index)

    def _decide(self, entry: _Entry) -> str | None:
        pts = entry.pts
        if entry.state is not None:
            return entry.state
        if self.shots is not None and self.shots[0] <= pts < self.shots[1]:
            return FEED
        if pts in self._by_target:
            return FEED
        first, last = self._candidates(pts, entry.key)
        if last <= first or last <= self._settled:
            return REFS  # none of them took it (it would be in _by_target)
        return None

    def _candidates(self, pts: int, key: bool) -> tuple[int, int]:
        """The samples (a range of the limit order) that could show the frame at `pts`: up to
        the next frame presented after it; for a keyframe that samples may take instead of
        their exact frame, up to the next keyframe."""
        first = bisect.bisect_left(self._limits, pts)
        last = self._first_limit_at_or_after(self._seen, pts)
        if key and self._keyframe_reach:
            by_key = self._first_limit_at_or_after(self._seen_keys, pts)
            if self._keyframe_reach != math.inf:  # samples further on may not take it
                by_key = min(by_key, bisect.bisect_right(self._limits, pts + self._keyframe_reach))
            last = max(last, by_key)
        return first, last

    def _first_limit_at_or_after(self, times: list[int], pts: int) -> int:
        nxt = bisect.bisect_right(times, pts)
        if nxt == len(times):
            return len(self._limits)
        return bisect.bisect_left(self._limits, times[nxt])

    def _set(self, entry: _Entry, state: str) -> None:
        if entry.state == state:
            return
        delta = (state == FEED) - (entry.state == FEED)
        self._need += delta
        if self.shots is not None and self.shots[0] <= entry.pts < self.shots[1]:
            self._shot_need += delta
        entry.state = state

    def _release(self) -> Iterator[Action]:
        while self._queue:
            head = self._queue[0]
            if head.state is None:
                return
            if head.state == FEED:
                yield from self._out(FEED)
            elif self.done:
                yield from self._out(DROP)
            elif self._leading(head):
                yield from self._out(DROP)  # shown before the restart keyframe: undecodable
            elif (dropped := self._drop_to_keyframe()) is not None:
                yield from dropped
            elif self._need or len(self._queue) > HOLD_PACKETS or self._held > HOLD_BYTES:
                yield from self._out(REFS)  # a later frame may reference it
            else:
                return  # held: a keyframe may yet make it droppable

    def _leading(self, entry: _Entry) -> bool:
        return not entry.key and self._restart_key is not None and entry.pts < self._restart_key

    def _drop_to_keyframe(self) -> list[Action] | None:
        """Drop the queue's head up to the latest queued keyframe presented at or before every
        open need, when nothing before it is needed or presented after it."""
        needed_from = self.needed_from
        for key in reversed(self._keys):
            if key is self._queue[0] or key.pts > needed_from:
                continue
            count = 0
            for entry in self._queue:
                if entry is key:
                    break
                if entry.state == FEED or entry.pts >= key.pts:
                    return None  # a stream that breaks the keyframe rules: decode through
                count += 1
            actions: list[Action] = []
            for _ in range(count):
                actions.extend(self._out(DROP))
            self._fresh = True
            return actions
        return None

    def _out(self, action: str) -> Iterator[Action]:
        entry = self._queue.popleft()
        if self._queued.get(entry.pts) is entry:
            del self._queued[entry.pts]
        if entry.state is None:
            self._undecided.remove(entry)
        self._set(entry, REFS)  # leaves the FEED counts
        self._held -= entry.size
        if entry.key:
            self._keys.remove(entry)
        if action != DROP:
            if self._fresh:
                self._fresh = False
                yield (RESTART, None)
                self._restart_key = entry.pts if entry.key else None
            elif entry.key:
                self._restart_key = None  # a keyframe decoded in sequence: no leading gap
        if action == FEED:
            for index in self._by_target.get(entry.pts, ()):
                self._mark_fed(index)
        yield (action, entry.item)

    def _mark_fed(self, index: int) -> None:
        self._fed[index] = True
        while self._unfed < len(self._order) and self._fed[self._order[self._unfed]]:
            self._unfed += 1


def _insert(values: list[int], value: int) -> bool:
    """Insert into a sorted list unless present; True when inserted."""
    i = bisect.bisect_left(values, value)
    if i < len(values) and values[i] == value:
        return False
    values.insert(i, value)
    return True
