"""resources.probe_timeout_s through a real job: a video server that answers HEAD but never
sends a byte of the body costs that one video, a `failed` row saying it timed out."""

from __future__ import annotations

import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import job_config
from tests.support.index import read
from vidbatch.config import config_from_dict
from vidbatch.job.run import run_job


class _Stuck(BaseHTTPRequestHandler):
    release = threading.Event()

    def do_HEAD(self) -> None:  # the listing learns a size, as from any web server
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:  # the body never comes (until the test ends)
        self.release.wait(120)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stuck_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stuck)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Stuck.release.set()
    server.shutdown()


def test_a_hanging_source_fails_its_video_after_the_probe_deadline(
    ray_session, tmp_path, small_archive, stuck_server
):
    good = tmp_path / "good.mp4"
    shutil.copy(small_archive.uris[0], good)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"uri\n{good}\n{stuck_server}/stuck.mp4\n")
    config = job_config(
        str(manifest),
        str(tmp_path / "out"),
        resources={"probe_timeout_s": 2, "decode_timeout_s": 30},
        max_failed_fraction=1.0,
    )
    summary = run_job(config_from_dict(config))
    assert (summary.ok, summary.failed) == (1, 1)
    rows = {v["uri"].rsplit("/", 1)[-1]: v for v in read(tmp_path / "out", "videos")}
    assert rows["good.mp4"]["status"] == "ok"
    assert rows["stuck.mp4"]["error"] == (
        "probe: isolated probe failed twice: timed out after 2 s; timed out after 2 s"
    )
