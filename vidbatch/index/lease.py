"""One writer per output: a lease file created exclusively, refreshed while the run lives.

Delta's own commit protocol already keeps two writers from committing the same version, but
two runs appending to one index would each index the same new videos. So a run first creates
`_vidbatch/writer.json` with an exclusive create (O_EXCL locally; S3's conditional put,
If-None-Match), refreshes it while it runs and removes it at the end. A second run is refused
with one line naming the output and the holder. A lease whose holder is gone (a process of
this host that no longer exists, or no refresh for `ttl_s`) is taken over, so a SIGKILLed
driver does not lock the output forever.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any

from vidbatch.errors import IndexBusyError
from vidbatch.storage import is_local, local_path, retrying, scrub

LEASE_PATH = "_vidbatch/writer.json"
log = logging.getLogger("vidbatch.index")
_HELD: set[str] = set()  # run ids whose lease this process holds now


class WriterLease:
    """Held by one run between `acquire()` and `release()`; `check()` before each commit."""

    def __init__(self, fs: Any, root: str, output_uri: str, run_id: str, ttl_s: float = 600.0):
        self.fs, self.path = fs, f"{root}/{LEASE_PATH}"
        self.output_uri, self.run_id, self.ttl_s = output_uri, run_id, ttl_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        now = datetime.now(timezone.utc).isoformat()
        return json.dumps(
            {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(), "at": now}
        ).encode()

    def _create(self) -> None:
        """Exclusive create: FileExistsError when a lease exists."""
        if is_local(self.output_uri):
            path = local_path(self.path)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(self._record())
        else:
            self.fs.pipe_file(self.path, self._record(), mode="create")

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except ValueError:  # a torn or foreign file: treat as abandoned
            return {}

    def _abandoned(self, holder: dict[str, Any]) -> bool:
        if not holder:
            return True
        if holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid():
            # This process's own, left behind when storage failed during a release.
            return holder.get("run_id") not in _HELD
        if holder.get("host") == socket.gethostname():
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, KeyError, ValueError, TypeError):
                pass
        try:
            age = time.time() - datetime.fromisoformat(holder["at"]).timestamp()
        except (KeyError, ValueError, TypeError):
            return True
        return age > self.ttl_s

    def acquire(self) -> WriterLease:
        def attempt() -> None:
            for _ in range(2):
                try:
                    self._create()
                    return
                except FileExistsError:
                    holder = self._holder()
                    if holder is None:
                        continue  # released meanwhile
                    if not self._abandoned(holder):
                        raise IndexBusyError(
                            f"output {scrub(self.output_uri)} is being written by run "
                            f"{holder.get('run_id')} (host {holder.get('host')}, pid "
                            f"{holder.get('pid')}, refreshed {holder.get('at')}): one writer "
                            "per output at a time"
                        ) from None
                    log.warning("taking over the lease of run %s (gone)", holder.get("run_id"))
                    self.fs.rm_file(self.path)
            raise IndexBusyError(
                f"output {scrub(self.output_uri)}: could not take the writer lease"
            )

        retrying(attempt, self.output_uri, action="take the writer lease")
        _HELD.add(self.run_id)
        self._thread = threading.Thread(target=self._refresh_loop, daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        """Raise IndexBusyError when another run took the lease over (this one stalled)."""
        holder = retrying(self._holder, self.output_uri, action="read the writer lease")
        if not holder or holder.get("run_id") != self.run_id:
            owner = holder.get("run_id") if holder else "nobody"
            raise IndexBusyError(
                f"output {scrub(self.output_uri)}: this run ({self.run_id}) lost the writer lease "
                f"to {owner}; nothing more is committed"
            )

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.check()
                self.fs.pipe_file(self.path, self._record())
            except Exception as exc:  # the next commit's check() decides
                log.warning("writer lease not refreshed: %s", scrub(str(exc)))

    def release(self) -> None:
        self._stop.set()
        _HELD.discard(self.run_id)
        try:
            holder = self._holder()
            if holder and holder.get("run_id") == self.run_id:
                self.fs.rm_file(self.path)
        except Exception as exc:  # left behind: the next run sees it abandoned
            log.warning("writer lease not removed: %s", scrub(str(exc)))

    def __enter__(self) -> WriterLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
