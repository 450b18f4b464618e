"""Error types: configuration errors stop a run before it starts; stage errors become rows."""

from __future__ import annotations


class ConfigError(ValueError):
    """A job or training config is wrong; raised before any video is decoded."""


class StageError(Exception):
    """One video failed in one stage; recorded as `failed` with `stage: message`, never raised past it."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message

    def __reduce__(self):  # crosses process boundaries (sandbox, Ray) intact
        return (type(self), (self.stage, self.message))


def describe(exc: BaseException) -> str:
    """One line for an error row: the exception type and its first line, never a traceback."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class IndexBusyError(RuntimeError):
    """Another run holds the output's writer lease; one line naming the output and holder."""
