"""`vidbatch report` on an index of real synthetic videos, rendered by a real headless Chromium."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
from html import escape
from pathlib import Path

import numpy as np
import pytest

from tests.unit.tools.test_query import clip, detection, video, write_index
from vidbatch.media.synth import write_video
from vidbatch.tools.report import add_report_parser, build_report, draw_box, encode_png

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ERRORS = [
    "decode: stream ends at 1.20s but the container says 4.00s: truncated or corrupt",
    "probe: cannot open as a video container (InvalidDataError: <data> & more)",
]
SHAPES = {"moving_right": "circle", "growing": "square", "rotating_cw": "triangle"}


def _nearest_box(boxes: list[dict], t: float) -> dict:
    return min(boxes, key=lambda row: abs(row["frame_time_s"] - t))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    """Three real 4 s videos; clips and detections made by hand from their ground truth."""
    root = tmp_path_factory.mktemp("report")
    videos, clips, detections = [], [], []
    for i, (label, shape) in enumerate(SHAPES.items()):
        uri = str(root / f"vid-{i}.mp4")
        boxes = write_video(
            uri, label=label, shape=shape, seconds=4.0, fps=12, width=192, height=144, seed=i
        )
        videos.append(video(uri, duration_s=4.0, width=192, height=144, fps=12.0))
        clips += [clip(uri, 0.0, 2.0, label, 0.9), clip(uri, 2.0, 4.0, "static", 0.6)]
        for t in (0.0, 1.0, 3.0):  # a hole at 2 s: two intervals per video
            box = _nearest_box(boxes, t)
            coords = {k: box[k] for k in ("x1", "y1", "x2", "y2")}
            detections.append(detection(uri, box["frame_time_s"], shape, 0.5 + 0.1 * t, **coords))
    ghost = str(root / "moved-away.mp4")  # indexed, then deleted: its thumbnail cannot be cut
    videos.append(video(ghost, duration_s=4.0))
    detections.append(detection(ghost, 1.0, "circle", 0.99))
    for n, error in enumerate(ERRORS):
        videos.append(video(str(root / f"bad-{n}.mp4"), status="failed", error=error))
    index = write_index(str(root / "index"), videos=videos, clips=clips, detections=detections)
    runs = Path(index) / "_runs"
    runs.mkdir()
    running = {  # what the job writes when it starts (vidbatch.index.history.write_run_record)
        "run_id": "20261126T020000Z-def456",
        "started_at": "2026-11-26T02:00:00+00:00",
        "status": "running",
        "config_key": "k",
        "models": {"motion-cnn": "1"},
    }
    done = {  # ... and when it ends
        **running,
        "run_id": "20261125T020000Z-abc123",
        "started_at": "2026-11-25T02:00:00+00:00",
        "finished_at": "2026-11-25T02:03:12+00:00",
        "status": "ok",
        "counts": {"videos": 6, "ok": 4, "failed": 2, "skipped": 0, "clips": 6, "detections": 10},
        "failures": {"decode": 1, "probe": 1},
        "timings": {"plan": 1.5, "decode+infer": 180.0},
    }
    for record in (running, done):
        (runs / f"{record['run_id']}.json").write_text(json.dumps(record, indent=2))
    (runs / "half-written.json").write_text('{"run_id": ')
    return {"root": root, "index": index, "labels": [*SHAPES, "static", *SHAPES.values()]}


@pytest.fixture(scope="module")
def report(archive) -> tuple[Path, str]:
    path = build_report(archive["index"], archive["root"] / "out" / "report.html")
    return path, path.read_text()


def test_report_shows_labels_failures_runs_and_thumbnails(archive, report):
    path, html = report
    assert path.name == "report.html" and not list(path.parent.glob(".*partial"))
    for label in archive["labels"]:
        assert escape(label) in html
    for error in ERRORS:
        assert escape(error) in html
    assert "<data>" not in html  # text from the index is escaped, never markup
    runs = html.split("<h2>Runs</h2>", 1)[1]
    assert runs.index("def456") < runs.index("abc123") < runs.index("half-written")  # newest first
    assert "3:12" in runs and "failed in decode ×1, probe ×1" in runs and "running" in runs
    assert "unreadable" in runs and "Expecting value" in runs
    # 9 frames of the three real videos; the deleted one says why it has no picture
    assert len(re.findall(r"<img ", html)) == 9
    assert len(re.findall(r"src='data:image/(?:jpeg|png);base64,", html)) == 9
    assert "frame unavailable" in html and "moved-away.mp4" in html


def test_report_is_self_contained(report):
    _, html = report
    assert not re.search(r"""(?:src|href)\s*=\s*['"]?(?:https?:|//)""", html)
    assert "<script" not in html and "@import" not in html and "url(" not in html


def test_timelines_merge_intervals(report):
    _, html = report
    # Each video: moving/growing/rotating 0-2 s, static 2-4 s, and detections 0-1 s and 3 s.
    assert len(re.findall(r"class='seg'", html)) == 3 * 4 + 1  # + the deleted video's frame
    assert html.count("circle: 0.00–1.00 s") == 1 and html.count("2 detections") == 3


def test_max_thumbnails_and_run_history_fallback(archive, tmp_path):
    index = write_index(
        str(tmp_path / "index"),
        videos=[video(f"/nowhere/{n}.mp4", run_id=f"run-{n}") for n in range(3)],
        detections=[detection(f"/nowhere/{n}.mp4", 1.0, "cat") for n in range(3)],
    )
    html = build_report(index, tmp_path / "r.html", max_thumbnails=2).read_text()
    assert html.count("<figure class='thumb'>") == 2
    assert "No _runs/ records" in html and all(f"run-{n}" in html for n in range(3))


def test_missing_index_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no index at"):
        build_report(str(tmp_path / "missing"), tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_draw_box_outlines_the_normalized_box():
    image = np.full((100, 200, 3), 128, np.uint8)
    boxed = draw_box(image, (0.25, 0.5, 0.75, 0.9), (255, 0, 0))
    assert (boxed[50, 100] == (255, 0, 0)).all()  # top edge at y = 0.5 * 100
    assert (boxed[70, 50] == (255, 0, 0)).all()  # left edge at x = 0.25 * 200
    assert (boxed[70, 100] == 128).all() and (boxed[10, 10] == 128).all()  # inside, outside
    assert (image == 128).all()  # the source frame is untouched


def test_png_encoder_round_trips():
    image = pytest.importorskip("PIL.Image")
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    data = encode_png(rgb)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert (np.asarray(image.open(io.BytesIO(data)).convert("RGB")) == rgb).all()


def test_cli_writes_the_page(archive, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="vidbatch")
    add_report_parser(parser.add_subparsers(dest="verb", required=True))
    out = tmp_path / "cli.html"
    argv = ["report", archive["index"], "--html", str(out), "--max-thumbnails", "1"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert out.read_text().count("<figure class='thumb'>") == 1


def test_headless_chromium_renders_the_page(report, tmp_path):
    """The page as a browser draws it: not blank, with the thumbnails' and bars' colours."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs chromium (apt-get install -y chromium)")
    image = pytest.importorskip("PIL.Image")
    path, _ = report
    shot = tmp_path / "report.png"
    profile = tmp_path / "chromium-profile"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        path.as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 50_000
    pixels = np.asarray(image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 2000  # text, bars and video frames, not an empty page
    background = (pixels == pixels[-1, -1]).all(axis=2).mean()
    assert background < 0.6
    if os.environ.get("VIDBATCH_ARTIFACTS"):  # CI can keep the screenshot
        shutil.copy(shot, Path(os.environ["VIDBATCH_ARTIFACTS"]) / "report.png")
