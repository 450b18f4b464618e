"""The job config: one YAML file, validated whole before anything starts."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from vidbatch.errors import ConfigError
from vidbatch.specs import ClipSpec, FrameSpec


@dataclass(frozen=True)
class Location:
    uri: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold secrets


@dataclass(frozen=True)
class ClipSampling(ClipSpec):
    """How clips are laid out. `align: grid` tiles each video with clips back to back (each
    classifier's own clip spec); `align: shots` classifies each shot instead: one clip per
    shot (per piece of a shot, where a shot crosses a work-unit border), its frames spread
    evenly over the shot. frames/fps/size are the spec for models that bring none."""

    align: str = "grid"  # grid | shots


@dataclass(frozen=True)
class Sampling:
    segment_seconds: float = 120.0
    clips: ClipSampling = ClipSampling()
    frames: FrameSpec = FrameSpec()
    decode_mode: str = "seek"  # seek | all | keyframes (see vidbatch.media.decode.decode_samples)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    weights: str | None = None  # None: the registry's shipped weights
    top_k: int = 5  # classifiers: labels kept per clip
    min_score: float = 0.3  # detectors: detections below are dropped
    max_detections: int = 100  # detectors: per frame
    threshold: float = 0.5  # shot models: transition probability that makes a cut
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold secrets


@dataclass(frozen=True)
class Resources:
    gpus_per_actor: float | str = "auto"
    actors: int | str = "auto"  # inference actors
    batch_size: int | str = "auto"  # inputs (clips or frames) per model forward pass
    # Decode workers. auto: with GPUs one per CPU left; without GPUs decoding runs inside the
    # inference workers (no copy of decoded frames between processes). A number splits them.
    decode_actors: int | str = "auto"
    decode_cpus: float = 1.0
    commit_every: int = 64  # videos per committed chunk: what a killed driver can lose
    # Probe and decode run in a child process with these deadlines (seconds; 0: in-process,
    # unguarded): a decoder crash or hang then fails one video instead of the worker.
    probe_timeout_s: float = 60.0
    decode_timeout_s: float = 600.0  # per segment


@dataclass(frozen=True)
class Limits:
    """Checked while planning, before any decoding: a video over a limit is one failed row."""

    max_video_hours: float = 24.0
    max_segments_per_video: int = 2000
    # A header whose duration implies less than this many bits per second of video is not
    # believed (a 2 KB file cannot hold 24 hours).
    min_bitrate_bps: float = 1000.0


@dataclass(frozen=True)
class JobConfig:
    source: Location
    output: Location
    models: tuple[ModelConfig, ...]
    sampling: Sampling = Sampling()
    resources: Resources = Resources()
    limits: Limits = Limits()
    incremental: bool = True
    max_retries: int = 3  # failed runs in a row on unchanged content before a video is left failed
    prune: bool = False  # remove the rows of videos no longer at the source
    compact: bool = False  # optimize and vacuum the tables after the run
    max_failed_fraction: float = 0.05

    def validate(self) -> JobConfig:
        if not self.models:
            raise ConfigError("models: at least one model is required")
        if not 0 <= self.max_failed_fraction <= 1:
            raise ConfigError("max_failed_fraction: must be between 0 and 1")
        if self.sampling.segment_seconds <= 0:
            raise ConfigError("sampling.segment_seconds: must be > 0")
        if self.sampling.decode_mode not in ("seek", "all", "keyframes"):
            raise ConfigError("sampling.decode_mode: expected seek, all or keyframes")
        clips, frames = self.sampling.clips, self.sampling.frames
        if clips.frames < 1 or clips.fps <= 0 or clips.size < 8:
            raise ConfigError("sampling.clips: frames >= 1, fps > 0 and size >= 8 required")
        if clips.align not in ("grid", "shots"):
            raise ConfigError(f"sampling.clips.align: expected grid or shots, got {clips.align!r}")
        if frames.fps <= 0 or frames.size < 16:
            raise ConfigError("sampling.frames: fps > 0 and size >= 16 required")
        for i, model in enumerate(self.models):
            if model.top_k < 1:
                raise ConfigError(f"models[{i}].top_k: must be >= 1")
            if not 0 < model.threshold < 1:
                raise ConfigError(f"models[{i}].threshold: must be between 0 and 1")
        if self.max_retries < 0:
            raise ConfigError("max_retries: must be >= 0")
        limits = self.limits
        if limits.max_video_hours <= 0 or limits.max_segments_per_video < 1:
            raise ConfigError(
                "limits: max_video_hours > 0 and max_segments_per_video >= 1 required"
            )
        if limits.min_bitrate_bps < 0:
            raise ConfigError("limits.min_bitrate_bps: must be >= 0")
        offset = self.sampling.frames.max_offset_s
        if offset is not None and offset < 0:
            raise ConfigError("sampling.frames.max_offset_s: must be >= 0 (or null: any keyframe)")
        if self.resources.commit_every < 1:
            raise ConfigError("resources.commit_every: must be >= 1")
        for key in ("probe_timeout_s", "decode_timeout_s"):
            if getattr(self.resources, key) < 0:
                raise ConfigError(f"resources.{key}: must be >= 0 (0 turns isolation off)")
        for key in ("gpus_per_actor", "actors", "batch_size", "decode_actors"):
            value = getattr(self.resources, key)
            if isinstance(value, str) and value != "auto":
                raise ConfigError(f"resources.{key}: expected a number or 'auto', got {value!r}")
        return self


def parse(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from plain data, naming the exact key on any mistake."""
    label = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown key '{key}' (allowed: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name in data:
            values[name] = _coerce(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key '{key}'")
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: unexpected value {value!r}")
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, key)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if hint is int and value != int(value):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return hint(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set a.b=value` overrides; values are parsed as YAML (numbers, bools, lists)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        dotted, raw = item.split("=", 1)
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                node = node.setdefault(part, {}) if isinstance(node, dict) else None
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        leaf = parts[-1]
        if isinstance(node, list):
            if not leaf.isdigit() or int(leaf) >= len(node):
                raise ConfigError(f"--set {dotted}: no list item {leaf}")
            node[int(leaf)] = yaml.safe_load(raw)
        else:
            node[leaf] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path, overrides: Sequence[str] | None = None) -> JobConfig:
    """Read, override and validate a job config; every mistake is a one-line ConfigError."""
    return config_from_dict(read_yaml(path, overrides, "source:, output:, models: ..."))


def read_yaml(path: str | Path, overrides: Sequence[str] | None, keys: str) -> dict[str, Any]:
    """A YAML file's mapping with `--set` overrides applied; a file that cannot be read, bad
    YAML (with its line and column) or another shape is a one-line ConfigError. `keys` names
    the top-level keys expected, for that error."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}:{_yaml_problem(exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys ({keys}), got {type(data).__name__}")
    try:
        return apply_overrides(data, list(overrides or []))
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set:{_yaml_problem(exc, where=False)}") from exc


def _yaml_problem(exc: yaml.YAMLError, *, where: bool = True) -> str:
    """`LINE:COLUMN: not valid YAML: problem (context at LINE:COLUMN)`, 1-based, one line."""
    mark = getattr(exc, "problem_mark", None)
    at = f"{mark.line + 1}:{mark.column + 1}:" if mark is not None and where else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None and where:
        context = f"{context} at {context_mark.line + 1}:{context_mark.column + 1}"
    detail = f"{problem} ({context})" if context else problem
    return f"{at} not valid YAML: {detail}"


def config_from_dict(data: dict[str, Any]) -> JobConfig:
    return parse(JobConfig, data).validate()


def to_dict(config: Any) -> Any:
    """Plain data for hashing and records (dataclasses -> dicts, tuples -> lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config
