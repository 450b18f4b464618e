"""What a person watching a run sees: a live bar on a terminal, one line a minute in logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Progress:
    """Videos and segments done, failures, video-hours per hour and ETA.

    On a terminal a tqdm bar redraws in place; otherwise (a log file, a Ray Job's output) a line
    is printed at most every `interval_s`, and once at the end."""

    def __init__(
        self,
        total_videos: int,
        *,
        log: Log = _stderr,
        stream: IO[str] | None = None,
        interval_s: float = 60.0,
        enabled: bool = True,
    ) -> None:
        self.total, self.log, self.interval_s, self.enabled = total_videos, log, interval_s, enabled
        self.started = time.monotonic()
        self.last_line = self.started
        self.videos = self.segments = self.failed = self.chunks = 0
        self.video_seconds = 0.0
        stream = stream or sys.stderr
        self.bar: Any = None
        if enabled and total_videos and getattr(stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total_videos, unit="video", file=stream, dynamic_ncols=True)

    def note(self, message: str) -> None:
        """A line that must not tear the bar."""
        if self.bar is not None:
            self.bar.write(message)
        elif self.enabled:
            self.log(message)

    def segment_done(self) -> None:
        self.segments += 1

    def chunk_committed(self) -> None:
        self.chunks += 1

    def video_done(self, seconds: float, failed: bool) -> None:
        self.videos += 1
        self.failed += int(failed)
        self.video_seconds += seconds
        self._show()

    def _rates(self) -> tuple[float, str]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        per_hour = self.video_seconds / elapsed  # video-hours per hour = video-s per s
        left = self.total - self.videos
        eta = elapsed / self.videos * left if self.videos else None
        return per_hour, (time.strftime("%H:%M:%S", time.gmtime(eta)) if eta is not None else "?")

    def _show(self) -> None:
        per_hour, eta = self._rates()
        status = (
            f"{self.segments} segments, {self.failed} failed, {self.chunks} chunks committed, "
            f"{per_hour:.1f} video-h/h"
        )
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(status, refresh=False)
            return
        now = time.monotonic()
        if self.enabled and (now - self.last_line >= self.interval_s or self.videos == self.total):
            self.last_line = now
            self.log(f"progress: {self.videos}/{self.total} videos, {status}, ETA {eta}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
