"""Shared real components: one local Ray per session, one moto S3 server, synthetic archives."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ACCEPT_CALLABLE_CLASS", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session: it takes seconds to start on 2 cores."""
    import ray

    # Workers import user models by `module:factory` name, as a Ray Job's working dir allows.
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP endpoint (moto), as s3fs's own tests use."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    yield endpoint
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """(s3fs filesystem, storage_options) against the moto server, with fake credentials."""
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    options = {
        "key": "testing-key-id",
        "secret": "testing-secret",
        "client_kwargs": {"endpoint_url": s3_server, "region_name": "us-east-1"},
    }
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(**options)
    return fs, options


def make_bucket(endpoint: str, name: str) -> None:
    """Create a bucket the way us-east-1 wants it (no location constraint)."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing-key-id",
        aws_secret_access_key="testing-secret",
    )
    client.create_bucket(Bucket=name)


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory):
    """Eight short labeled videos, made once per session."""
    from vidbatch.media.synth import synthesize

    return synthesize(
        tmp_path_factory.mktemp("archive"), 8, seed=11, min_seconds=2.0, max_seconds=6.0
    )


def job_config(source: str, output: str, **extra) -> dict:
    """A minimal valid job config as plain data."""
    config = {
        "source": {"uri": source},
        "output": {"uri": output},
        "models": [{"name": "motion-cnn", "top_k": 3}],
        "incremental": False,
    }
    config.update(extra)
    return config


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


# ---------------------------------------------------------------- CI: a skip is a failure
# .ci/run sets VIDBATCH_FAIL_ON_SKIP=1. There a test that skips (a missing browser, codec, CLI
# ...) fails instead, unless it is marked `may_skip(reason)`: why it cannot run wherever CI
# runs. `gpu` tests are deselected in CI (-m "not gpu"), not skipped.
FAIL_ON_SKIP = "VIDBATCH_FAIL_ON_SKIP"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "may_skip(reason): may skip even in CI, for the reason given (see conftest)"
    )


def _skip_is_a_failure(report, marker) -> bool:
    if os.environ.get(FAIL_ON_SKIP) != "1" or not report.skipped or hasattr(report, "wasxfail"):
        return False
    return marker is None or not (marker.args or marker.kwargs.get("reason"))


def _as_failure(report) -> None:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr
    report.outcome = "failed"
    report.longrepr = (
        f"skipped with {FAIL_ON_SKIP}=1, which fails: {reason}\n"
        "Make what the test needs available in CI, or mark it @pytest.mark.may_skip(reason=...)."
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _skip_is_a_failure(report, item.get_closest_marker("may_skip")):
        _as_failure(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _skip_is_a_failure(report, None):  # a whole module skipped (importorskip at the top)
        _as_failure(report)
