"""Security (issue #8 item 6): weights never run code, credentials never leak, and names taken
from models or keys never write outside the output prefix.

Already covered elsewhere and not repeated here: a pickle named `.safetensors` for a vidbatch
checkpoint (tests/models/test_model_checkpoint.py), a pickle `.pth` for the torchvision
detection zoo (tests/models/test_detection.py) and video zoo (tests/models/test_zoo_and_custom.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import secrets
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from tests.conftest import job_config, make_bucket
from tests.support import media
from tests.support.hostile_models import ESCAPE_LABELS
from tests.support.hostile_models import ESCAPE_NAME as ESCAPE
from tests.support.index import read
from vidbatch.cli import main
from vidbatch.config import config_from_dict
from vidbatch.models import load_model


class _Payload:
    """Unpickling this creates a file: proof that the weights file ran as code."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def _evil(path: Path, target: Path, writer: str) -> Path:
    payload = {"weight": torch.zeros(2), "payload": _Payload(str(target))}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    return path


# ------------------------------------------------------------ (a) pickles disguised as weights


FAST = ["tests.support.custom_model:build", "synth-detector", "motion-cnn"]
CASES = [
    *[
        (m, s, w)
        for m in FAST
        for s in (".pt", ".pth", ".safetensors")
        for w in ("pickle", "torch.save")
    ],
    # torchvision zoo (.pth covered in tests/models): other suffixes take the same safe path
    ("ssdlite320_mobilenet_v3_large", ".safetensors", "torch.save"),
    ("r3d_18", ".pt", "pickle"),
]


@pytest.mark.parametrize(("model", "suffix", "writer"), CASES)
def test_pickle_weights_are_refused_in_one_line_and_never_run(tmp_path, model, suffix, writer):
    target = tmp_path / "pwned"
    path = _evil(tmp_path / f"evil{suffix}", target, writer)
    with pytest.raises(ValueError) as info:
        load_model(model, str(path), device="cpu")
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    assert not target.exists()
    # The payload is live: an unsafe load would have written the file.
    if writer == "torch.save" and suffix != ".safetensors":  # torch.load reads that as safetensors
        torch.load(path, weights_only=False)
        assert target.exists()


def test_pickle_weights_in_a_job_config_stop_the_run_before_anything_starts(tmp_path, capsys):
    target = tmp_path / "pwned"
    weights = _evil(tmp_path / "evil.pt", target, "torch.save")
    (tmp_path / "videos").mkdir()
    config = job_config(
        str(tmp_path / "videos"),
        str(tmp_path / "out"),
        models=[{"name": "tests.support.custom_model:build", "weights": str(weights)}],
    )
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "job.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "models[0]" in err and str(weights) in err, err
    assert not target.exists() and not (tmp_path / "out").exists()


# ------------------------------------------- (b) secrets and (c) escaping names, one job run


@pytest.fixture(scope="module")
def s3_job(ray_session, s3_server, tmp_path_factory):
    """S3 source with unicode/space keys and one broken video, read with distinctive
    credentials; local output several folders deep in a sandbox so an escape would land in it."""
    import s3fs

    from vidbatch.job.run import run_job

    token = secrets.token_hex(8)
    creds = {
        "key": f"AKIAVIDBATCH{token.upper()}",
        "secret": f"vidbatch-secret-{token}",
        "token": f"vidbatch-session-{token}",
    }
    options = {**creds, "client_kwargs": {"endpoint_url": s3_server, "region_name": "us-east-1"}}
    bucket = f"secure-{token}"
    make_bucket(s3_server, bucket)
    local = tmp_path_factory.mktemp("sources")
    fs = s3fs.S3FileSystem(**options)
    keys = {
        "ünïcödé 视频 #1 50%.mp4": media.counter_video(
            local / "a.mp4", seconds=2, width=160, height=120
        ),
        "with space (2).mp4": media.counter_video(
            local / "b.mp4", seconds=2, width=160, height=120
        ),
        "broken video.mp4": media.random_bytes(local / "c.mp4"),
    }
    for key, path in keys.items():
        fs.put(str(path), f"{bucket}/videos/{key}")

    sandbox = tmp_path_factory.mktemp("sandbox")
    out = sandbox / "a" / "b" / "c" / "index"
    config = job_config(
        f"s3://{bucket}/videos/",
        str(out),
        models=[
            {"name": "tests.support.hostile_models:counter", "top_k": 1},
            {"name": ESCAPE, "top_k": len(ESCAPE_LABELS)},
        ],
        max_failed_fraction=0.5,
    )
    config["source"]["storage_options"] = options
    lines: list[str] = []
    handler = _ListHandler(lines)
    root = logging.getLogger()
    root.addHandler(handler)
    streams = tmp_path_factory.mktemp("streams") / "stdout+stderr"
    try:
        with _fd_capture(streams):  # everything this process prints, C libraries included
            summary = run_job(config_from_dict(config))
    finally:
        root.removeHandler(handler)
    lines.append(streams.read_text(errors="replace"))
    return {
        "summary": summary,
        "creds": creds,
        "bucket": bucket,
        "keys": keys,
        "sandbox": sandbox,
        "out": out,
        "logs": lines,
        "ray_logs": _ray_logs_dir(),
    }


@contextlib.contextmanager
def _fd_capture(path: Path):
    """Everything this process writes for the duration: Python's sys.stdout/sys.stderr and file
    descriptors 1 and 2 (C libraries, child processes), into `path` (pytest's capture sits above)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab", buffering=0) as sink, open(path, "a", buffering=1) as text:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


class _ListHandler(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(level=logging.INFO)  # what a job logs; not third-party wire dumps
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _ray_logs_dir() -> Path | None:
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return Path(node.get_logs_dir_path()) if node is not None else None


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_s3_keys_with_unicode_and_spaces_are_indexed_by_their_exact_names(s3_job):
    summary = s3_job["summary"]
    assert (summary.videos, summary.ok, summary.failed) == (3, 2, 1)
    videos = read(s3_job["out"], "videos")
    rows = {v["uri"]: v for v in videos}
    expected = {f"s3://{s3_job['bucket']}/videos/{key}" for key in s3_job["keys"]}
    assert set(rows) == expected
    for uri, row in rows.items():
        if uri.endswith("broken video.mp4"):
            assert row["status"] == "failed" and row["error"].startswith("probe: cannot open")
        else:
            assert row["status"] == "ok" and (row["width"], row["height"]) == (160, 120)
    clips = read(s3_job["out"], "clips")
    counted = [c for c in clips if c["model"] == "tests.support.hostile_models:counter"]
    assert sorted((c["uri"], c["clip_start_s"], c["label"]) for c in counted) == sorted(
        (uri, float(s), str(25 * s)) for uri in expected if "broken" not in uri for s in (0, 1)
    )


def test_credentials_appear_in_no_output_file_record_row_or_log(s3_job):
    needles = list(s3_job["creds"].values())
    files = _files(s3_job["out"])
    assert any(p.suffix == ".parquet" for p in files) and any(
        p.parent.name == "_delta_log" for p in files
    )
    for path in files:
        if path.suffix == ".parquet":  # cells, not compressed bytes
            text = json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False)
        else:
            text = path.read_bytes().decode("utf-8", "replace")
        assert not [n for n in needles if n in text], path
    (record,) = read(s3_job["out"], "runs")
    options = json.loads(record["config"])["job"]["source"]["storage_options"]
    assert {options[k] for k in s3_job["creds"]} == {"***"}  # redacted, not dropped silently
    assert options["client_kwargs"]["endpoint_url"].startswith("http://127.0.0.1")

    logs = "\n".join(s3_job["logs"])  # the job's stdout, stderr and logging records
    assert "listed 3 videos" in logs
    assert not [n for n in needles if n in logs]

    # Ray's own logs of this session (drivers, workers, Ray Data), written during the job.
    ray_logs = s3_job["ray_logs"]
    if ray_logs is not None and ray_logs.exists():
        assert _files(ray_logs), ray_logs
        for path in _files(ray_logs):
            text = path.read_bytes().decode("utf-8", "replace")
            assert not [n for n in needles if n in text], path


def test_names_from_models_and_labels_stay_inside_the_output_prefix(s3_job):
    out, sandbox = s3_job["out"], s3_job["sandbox"]
    written = _files(sandbox)
    assert written and all(p.resolve().is_relative_to(out.resolve()) for p in written), [
        p for p in written if not p.resolve().is_relative_to(out.resolve())
    ]
    assert not [p for p in written if ".." in p.relative_to(out).parts]
    for table in ("clips", "videos"):
        for path in _files(out / table):
            if "_delta_log" not in path.parts:
                assert path.name.endswith(".parquet") and not path.name.startswith(".")

    from vidbatch.tools.query import query

    found = query(
        str(out),
        "SELECT model, label, labels FROM clips WHERE model <> 'tests.support.hostile_models:counter'",
    ).to_pylist()
    assert len(found) == 2  # one 2 s clip per ok video
    assert all(
        r["model"] == ESCAPE and r["label"] == ESCAPE_LABELS[0] and r["labels"] == ESCAPE_LABELS
        for r in found
    ), found[0]
    arrow = read(out, "clips")
    assert {r["model"] for r in arrow} == {ESCAPE, "tests.support.hostile_models:counter"}
    assert all(r["labels"] == ESCAPE_LABELS for r in arrow if r["model"] == ESCAPE)
    folders = sorted(os.listdir(out / "clips"))  # one folder per model, and the Delta log
    assert len(folders) == 3 and "_delta_log" in folders
