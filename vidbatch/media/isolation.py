"""Crash and hang isolation for native code: run a call in a long-lived child process.

A decoder that segfaults or loops forever on one crafted file would otherwise take its Ray
worker down (and Ray would retry the same file until the job dies). In a `Sandbox` the call
runs in a child process: a crash or a missed deadline kills only the child, the caller gets
a `SandboxError` naming which, and the next call starts a fresh child. The child lives across
calls, so the cost of starting one (importing PyAV) is paid once per worker, not per segment.
"""

from __future__ import annotations

import ctypes
import functools
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from vidbatch.errors import StageError

# A fresh interpreter (not fork: forking a Ray worker, with its threads and gRPC, can deadlock
# the child; not multiprocessing's spawn: it re-runs the parent's __main__ script, which a
# user's driver script without a main guard would turn into a second job).
_CHILD = "import sys; from vidbatch.media.isolation import serve; serve(int(sys.argv[1]))"
STARTUP_S = 60.0


@functools.cache  # a process setting: once is enough
def bound_heap() -> None:
    """Keep a decoding process's memory flat however long the video: large buffers (frames,
    clips) are mmapped and go back to the OS when freed. glibc's default raises that threshold
    after the first large free, and then holds a few segments' worth in its heap (measured:
    peak RSS +19% after five segments; flat with this)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, not dynamic
        except (AttributeError, OSError):  # not glibc
            pass


class SandboxError(Exception):
    """The child crashed or missed its deadline; `kind` is "crash" or "timeout"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def serve(fd: int) -> None:
    """Child loop: run each (function, args, kwargs) received on the socket `fd`; send back
    ("ok" | "raise", value)."""
    if sys.platform.startswith("linux"):  # die with the parent, even if stuck in native code
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    bound_heap()
    conn = Connection(fd)
    conn.send(("ready", None))
    while True:
        try:
            fn, args, kwargs = conn.recv()
        except EOFError:  # the parent went away
            return
        try:
            reply = ("ok", fn(*args, **kwargs))
        except BaseException as exc:  # raised in Python: the caller handles it like a local call
            reply = ("raise", exc)
        try:
            conn.send(reply)
        except Exception as exc:  # e.g. an exception that does not pickle
            conn.send(("raise", RuntimeError(f"{type(exc).__name__}: {exc}")))


class Sandbox:
    """Run picklable calls in one child process with a deadline per call."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._process: Any = None
        self._conn: Connection | None = None

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        conn = self._start()
        conn.send((fn, args, kwargs))
        if not conn.poll(self.timeout_s):
            self.close()
            raise SandboxError("timeout", f"timed out after {self.timeout_s:g} s")
        try:
            status, value = conn.recv()
        except (EOFError, ConnectionError):
            code = self._reap()
            raise SandboxError("crash", f"crashed ({_exit_reason(code)})") from None
        if status == "raise":
            raise value
        return value

    def _start(self) -> Connection:
        if self._process is None or self._process.poll() is not None:
            self.close()
            mine, theirs = socket.socketpair()
            # The child imports what this process can: give it this process's import path.
            path = os.pathsep.join(p for p in sys.path if p)
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path},
            )
            theirs.close()
            self._conn = Connection(mine.detach())
            # Starting (interpreter + imports) must not eat into the first call's deadline.
            if (
                not self._conn.poll(max(STARTUP_S, self.timeout_s))
                or self._conn.recv()[0] != "ready"
            ):
                self.close()
                raise SandboxError("crash", "child process did not start")
        assert self._conn is not None
        return self._conn

    def _reap(self) -> int | None:
        code = None
        if self._process is not None:
            try:
                code = self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.close()
        return code

    def close(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None

    @property
    def pid(self) -> int | None:
        """The child's process id, while one runs."""
        return self._process.pid if self._process is not None else None


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def run_isolated(
    sandbox: Sandbox | None, stage: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """`fn(*args, **kwargs)` in `sandbox` (here, when None), tried twice: a crash or timeout
    on both tries becomes a `StageError` of `stage` saying what happened each time."""
    if sandbox is None:
        return fn(*args, **kwargs)
    reasons = []
    for _ in range(2):
        try:
            return sandbox.call(fn, *args, **kwargs)
        except SandboxError as exc:
            reasons.append(str(exc))
    raise StageError(stage, f"isolated {stage} failed twice: {'; '.join(reasons)}")


_LOCAL = threading.local()


def worker_sandbox(timeout_s: float) -> Sandbox | None:
    """This thread's sandbox (None when isolation is off, `timeout_s` 0): one child per
    decode worker, kept across tasks."""
    bound_heap()
    if not timeout_s:
        return None
    box = getattr(_LOCAL, "sandbox", None)
    if box is None:
        box = _LOCAL.sandbox = Sandbox(timeout_s)
    box.timeout_s = timeout_s
    return box


class SandboxPool:
    """Sandboxes lent to the threads of a thread pool, one call at a time; closed together."""

    def __init__(self, size: int, timeout_s: float) -> None:
        self._all = [Sandbox(timeout_s) for _ in range(size)] if timeout_s else []
        self._free: queue.SimpleQueue[Sandbox] = queue.SimpleQueue()
        for box in self._all:
            self._free.put(box)

    def run(self, stage: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._all:
            return fn(*args, **kwargs)
        box = self._free.get()
        try:
            return run_isolated(box, stage, fn, *args, **kwargs)
        finally:
            self._free.put(box)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        for box in self._all:
            box.close()
