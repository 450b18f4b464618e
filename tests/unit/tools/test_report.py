"""`vidbatch report` on a real Delta index of real synthetic videos, rendered and driven by a
real headless Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import time
from datetime import timedelta
from html import escape, unescape
from pathlib import Path

import numpy as np
import pytest

from tests.unit.tools.test_query import (
    NOW,
    clip,
    detection,
    run_row,
    shot,
    video,
    write_index,
)
from vidbatch.media.synth import write_video
from vidbatch.tools.report import build_report, draw_box, encode_png, video_link

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ERRORS = [
    "decode: stream ends at 1.20s but the container says 4.00s: truncated or corrupt",
    "probe: cannot open as a video container (InvalidDataError: <data> & more)",
]
SHAPES = {"moving_right": "circle", "growing": "square", "rotating_cw": "triangle"}
LONG_NAME = "harbour-camera-" + "north-pier-" * 16 + "2026-11-30T08-00-00Z.mp4"  # 200+ chars
BULK = 55  # videos past the first pages: paging and search must reach them
PAGE = 20
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs chromium (apt-get install -y chromium)"
)


def _nearest_box(boxes: list[dict], t: float) -> dict:
    return min(boxes, key=lambda row: abs(row["frame_time_s"] - t))


def _lecture(uri: str) -> tuple[list[dict], list[dict]]:
    """A 40-minute video: 1200 two-second clips, the label changing every 30 s, and 40 shots."""
    clips = [
        clip(uri, 2.0 * k, 2.0 * k + 2, ("talking", "slides")[(k // 15) % 2], 0.8)
        for k in range(1200)
    ]
    shots = [shot(uri, k, 60.0 * k, 60.0 * (k + 1)) for k in range(40)]
    return clips, shots


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    """Three real 4 s videos (clips and detections made by hand from their ground truth, shots
    on the first), a deleted one, two failed ones, a 40-minute lecture, a video with a
    200-character name and 55 more: 63 videos, more than three pages."""
    root = tmp_path_factory.mktemp("report")
    videos, clips, detections, shots = [], [], [], []
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
    shots += [shot(videos[0]["uri"], 0, 0.0, 1.5), shot(videos[0]["uri"], 1, 1.5, 4.0)]
    ghost = str(root / "moved-away.mp4")  # indexed, then deleted: its thumbnail cannot be cut
    videos.append(video(ghost, duration_s=4.0))
    detections.append(detection(ghost, 1.0, "circle", 0.99))
    for n, error in enumerate(ERRORS):
        videos.append(video(str(root / f"bad-{n}.mp4"), status="failed", error=error))
    lecture = str(root / "lecture-40min.mp4")
    videos.append(video(lecture, duration_s=2400.0, width=1280, height=720))
    lecture_clips, lecture_shots = _lecture(lecture)
    clips += lecture_clips
    shots += lecture_shots
    long_uri = str(root / "footage" / LONG_NAME)
    videos.append(video(long_uri, duration_s=30.0))
    clips.append(clip(long_uri, 0.0, 30.0, "growing", 0.7))
    for n in range(BULK):
        uri = str(root / "zz-bulk" / f"cam-{n:02d}.mp4")
        videos.append(video(uri, duration_s=10.0))
        clips.append(clip(uri, 0.0, 10.0, "static", 0.5))
    runs = [
        run_row(
            "20261125T020000Z-abc123",
            NOW - timedelta(days=2),
            listed=6,
            ok=4,
            failed=2,
            clips=6,
            detections=10,
            planned={"new": 6},
            failures={"decode": 1, "probe": 1},
            timings={"plan": 1.5, "decode+infer": 180.0},
        ),
        run_row(  # the nightly after it: nothing changed, every video skipped
            "20261126T020000Z-bcd234",
            NOW - timedelta(days=1),
            listed=6,
            ok=0,
            failed=0,
            skipped=6,
            planned={"skipped": 6},
        ),
        {  # running now (what the job writes when it starts)
            **run_row("20261127T020000Z-def456", NOW - timedelta(minutes=5)),
            "finished_at": None,
            "status": "running",
        },
    ]
    index = write_index(
        str(root / "index"),
        videos=videos,
        clips=clips,
        detections=detections,
        shots=shots,
        runs=runs,
    )
    return {
        "root": root,
        "index": index,
        "videos": videos,
        "labels": [*SHAPES, "static", *SHAPES.values()],
    }


@pytest.fixture(scope="module")
def report(archive) -> tuple[Path, str]:
    path = Path(build_report(archive["index"], archive["root"] / "out" / "report.html"))
    return path, path.read_text()


def page_data(html: str) -> dict:
    """The timelines' data as the page's script reads it."""
    text = re.search(r'<script id="vidbatch-data" type="application/json">(.*?)</script>', html)
    return json.loads(text.group(1))


def test_report_shows_labels_failures_runs_and_thumbnails(archive, report):
    path, html = report
    assert path.name == "report.html" and not list(path.parent.glob(".*partial"))
    for label in archive["labels"]:
        assert escape(label) in html
    for error in ERRORS:
        assert escape(error) in html
    assert "<data>" not in html  # text from the index is escaped, never markup
    runs = html.split("<h2>Runs</h2>", 1)[1]
    assert runs.index("def456") < runs.index("bcd234") < runs.index("abc123")  # newest first
    assert "3:12" in runs and "failed in decode ×1, probe ×1" in runs and "running" in runs
    assert "planned 6 new" in runs and "planned 6 skipped" in runs
    # 9 frames of the three real videos; the deleted one says why it has no picture
    assert len(re.findall(r"<img ", html)) == 9
    assert len(re.findall(r"src='data:image/(?:jpeg|png);base64,", html)) == 9
    assert "frame unavailable" in html and "moved-away.mp4" in html


def test_summary_is_the_current_state_and_skipped_videos_count_as_indexed(archive, report):
    """The last run skipped every video (nothing changed): they are indexed, not missing."""
    _, html = report
    found = re.findall(r'<div class="v">([^<]+)</div><div class="k">([^<]+)</div>', html)
    stats = {key: value for value, key in found}
    ok = sum(v["status"] == "ok" for v in archive["videos"])
    assert stats["Videos"] == f"{len(archive['videos'])}" and stats["Indexed ok"] == f"{ok}"
    assert stats["Failed"] == "2" and stats["Shots"] == "42"
    assert "Skipped" not in stats  # no such status in the current state
    assert "Last finished run 20261126T020000Z-bcd234: 6 listed, 0 indexed, 6 skipped" in html


def test_report_is_self_contained(report):
    _, html = report
    sources = re.findall(r"""<\w+[^>]*?\ssrc\s*=\s*['"]?([^'" >]+)""", html)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert not re.search(r"""(?:src|href)\s*=\s*['"]?(?:https?:|//)""", html)
    assert "@import" not in html and "url(" not in html and "<link" not in html
    assert re.search(r"<script(?: id=\"vidbatch-data\" type=\"application/json\")?>", html)
    assert not re.search(r"<script[^>]*\bsrc=", html)
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'none'" in policy and "img-src data:" in policy


def test_timeline_data_has_every_video_its_lanes_and_links(archive, report):
    _, html = report
    data = page_data(html)
    assert [v["uri"] for v in data["videos"]] == sorted(v["uri"] for v in archive["videos"])
    by_name = {v["name"]: v for v in data["videos"]}
    first = by_name["vid-0.mp4"]
    assert first["href"] == Path(first["uri"]).as_uri()
    lanes = {lane["name"]: lane for lane in first["lanes"]}
    assert sorted(lanes) == ["motion-cnn · clips", "ssdlite · circle", "transnetv2 · shots"]
    labels = data["labels"]
    clips = [(s, e, labels[i]) for s, e, i, *_ in lanes["motion-cnn · clips"]["items"]]
    assert clips == [(0.0, 2.0, "moving_right"), (2.0, 4.0, "static")]
    circles = [(s, e, hits) for s, e, _, _, hits in lanes["ssdlite · circle"]["items"]]
    assert len(circles) == 2 and circles[0][2] == 2 and circles[1][2] == 1  # 0-1 s and 3 s
    assert [item[:3] for item in lanes["transnetv2 · shots"]["items"]] == [
        [0.0, 1.5, 0],
        [1.5, 4.0, 1],
    ]
    lecture = by_name["lecture-40min.mp4"]
    assert lecture["dur"] == 2400.0 and len(lecture["lanes"][0]["items"]) == 80
    failed = by_name["bad-1.mp4"]
    assert failed["status"] == "failed" and failed["error"] == ERRORS[1] and not failed["lanes"]
    assert len(data["videos"]) == 63 and data["page_size"] == PAGE


def test_video_links_open_what_a_browser_can_play():
    assert video_link("/videos/a b#1.mp4") == "file:///videos/a%20b%231.mp4"
    assert video_link("https://cdn.example.com/a.mp4") == "https://cdn.example.com/a.mp4"
    assert video_link("s3://bucket/cam 1/a.mp4") == "s3://bucket/cam 1/a.mp4"  # not mapped
    prefixes = {"s3://bucket/": "https://bucket.s3.amazonaws.com/", "s3://bucket/cam 1/": "/m/"}
    assert video_link("s3://bucket/cam 1/a.mp4", prefixes) == "/m/a.mp4"  # the longest prefix
    assert video_link("s3://bucket/x/a#b.mp4", prefixes) == (
        "https://bucket.s3.amazonaws.com/x/a%23b.mp4"
    )
    assert video_link("javascript:alert(1)") is None
    assert video_link("relative/a.mp4") is None


def test_max_thumbnails_and_no_runs(tmp_path):
    index = write_index(
        str(tmp_path / "index"),
        videos=[video(f"/nowhere/{n}.mp4", run_id=f"run-{n}") for n in range(3)],
        detections=[detection(f"/nowhere/{n}.mp4", 1.0, "cat") for n in range(3)],
    )
    html = Path(build_report(index, tmp_path / "r.html", max_thumbnails=2)).read_text()
    assert html.count("<figure class='thumb'>") == 2
    assert "No runs recorded." in html


def test_a_hanging_file_costs_its_thumbnail_not_the_report(tmp_path, archive):
    """Decoding runs in a child process with a deadline: a file whose read never returns (a
    FIFO nobody writes, like a stalled mount) is cut off there; the other frames still come."""
    stuck = tmp_path / "stuck.mp4"
    os.mkfifo(stuck)
    real = next(v for v in archive["videos"] if v["uri"].endswith("vid-1.mp4"))["uri"]
    index = write_index(
        str(tmp_path / "index"),
        videos=[video(str(stuck)), video(real, duration_s=4.0)],
        detections=[detection(str(stuck), 1.0, "cat", 0.99), detection(real, 1.0, "square")],
    )
    began = time.monotonic()
    out = build_report(index, tmp_path / "r.html", thumbnail_timeout_s=3.0)
    assert time.monotonic() - began < 60
    html = Path(out).read_text()
    assert "frame unavailable: decoding timed out after 3 s" in html
    assert len(re.findall(r"<img ", html)) == 1  # the real video's frame


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
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    data = encode_png(rgb)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert (np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) == rgb).all()


def test_cli_writes_the_page(archive, tmp_path, capsys):
    from vidbatch.cli import main

    out = tmp_path / "cli.html"
    argv = ["report", archive["index"], "--html", str(out), "--max-thumbnails", "1"]
    argv += ["--link-prefix", f"{archive['root']}/=https://videos.example.com/"]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    html = out.read_text()
    assert html.count("<figure class='thumb'>") == 1
    assert "href='https://videos.example.com/moved-away.mp4#t=1'" in html  # the thumbnail's
    hrefs = {v["href"] for v in page_data(html)["videos"]}
    assert "https://videos.example.com/zz-bulk/cam-00.mp4" in hrefs
    with pytest.raises(SystemExit) as info:
        main(["report", archive["index"], "--html", str(out), "--link-prefix", "nope"])
    assert info.value.code == 2
    assert "--link-prefix: expected FROM=TO" in capsys.readouterr().err


def test_report_from_and_to_object_storage(s3, s3_server, tmp_path, capsys, monkeypatch):
    """Index, videos and page all on moto S3: thumbnails are cut from the S3 videos, the page
    is written to s3:// (not to a local folder named `s3:`) and says how to map s3:// links."""
    from tests.conftest import make_bucket
    from vidbatch.cli import main

    fs, options = s3
    make_bucket(s3_server, "report-s3")
    local = tmp_path / "v.mp4"
    boxes = write_video(
        local, label="growing", shape="square", seconds=3.0, fps=12, width=160, height=120
    )
    fs.put_file(str(local), "report-s3/videos/v.mp4")
    uri = "s3://report-s3/videos/v.mp4"
    box = _nearest_box(boxes, 1.0)
    coords = {k: box[k] for k in ("x1", "y1", "x2", "y2")}
    index = write_index(
        "s3://report-s3/index",
        storage_options=options,
        videos=[video(uri, duration_s=3.0)],
        clips=[clip(uri, 0.0, 3.0, "growing")],
        detections=[detection(uri, box["frame_time_s"], "square", 0.9, **coords)],
    )
    monkeypatch.chdir(tmp_path)  # a bug writing a local ./s3:/... folder would land here
    argv = ["report", index, "--html", "s3://report-s3/pages/r.html"]
    assert main([*argv, "--storage-options", json.dumps(options)]) == 0
    assert "wrote s3://report-s3/pages/r.html" in capsys.readouterr().out
    assert not (tmp_path / "s3:").exists()
    html = fs.cat_file("report-s3/pages/r.html").decode()
    assert len(re.findall(r"src='data:image/(?:jpeg|png);base64,", html)) == 1
    assert page_data(html)["videos"][0]["href"] == uri  # the fragment is added on the uri
    assert "--link-prefix s3://bucket/=https://" in html


# ---------------------------------------------------------------- in a real browser


def _chromium(tmp_path: Path, *args: str, timeout: float = 120) -> str:
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
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
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={profile}",
        *args,
    ]
    done = subprocess.run(command, check=True, capture_output=True, timeout=timeout)
    return done.stdout.decode("utf-8", "replace")


@needs_chromium
def test_headless_chromium_renders_the_page_at_1400_px(report, tmp_path):
    """The page as a browser draws it at 1400 px wide, kept as a screenshot: not blank, with
    the thumbnails' and bars' colours."""
    from PIL import Image

    path, _ = report
    shot = tmp_path / "report-1400.png"  # the whole page: timelines, gallery, failures, runs
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,5000", path.as_uri())
    assert shot.exists() and shot.stat().st_size > 200_000
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (5000, 1400)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 2000  # text, bars and video frames, not an empty page
    background = (pixels == pixels[-1, -1]).all(axis=2).mean()
    assert background < 0.6
    if os.environ.get("VIDBATCH_ARTIFACTS"):  # CI can keep the screenshot
        shutil.copy(shot, Path(os.environ["VIDBATCH_ARTIFACTS"]) / "report.png")


# Appended to a copy of the page: drives it as a user would (typing, clicking) and writes
# what it measured into <pre id="probe"> for --dump-dom. Layout is measured, not guessed.
PROBE = r"""
<script>
(function () {
  var out = {};
  function all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function names() { return all("#vb-videos .video .name").map(function (n) { return n.textContent; }); }
  function type(value) {
    var box = document.getElementById("vb-search");
    box.value = value; box.dispatchEvent(new Event("input"));
  }
  function choose(id, value) {
    var select = document.getElementById(id);
    select.value = value; select.dispatchEvent(new Event("change"));
  }
  function overflowing() {
    return all("section.card, .stats, .video, .thumb figcaption .where").filter(function (node) {
      return node.scrollWidth > node.clientWidth + 1;
    }).map(function (node) { return node.className + ": " + node.textContent.slice(0, 60); });
  }
  out.first = { names: names(), page: document.getElementById("vb-page").textContent };
  out.overflow = overflowing();
  var long = all("#vb-videos .video").filter(function (v) { return v.textContent.indexOf("north-pier-north") >= 0; })[0];
  var card = document.getElementById("timelines").getBoundingClientRect();
  var name = long.querySelector(".name").getBoundingClientRect();
  out.long = { right: name.right, card_right: card.right, height: name.height };
  var where = all(".thumb .where").map(function (w) { return w.scrollWidth <= w.clientWidth + 1 && w.scrollHeight <= w.clientHeight + 1; });
  out.captions_whole = where;
  document.getElementById("vb-next").click();
  out.second = { names: names(), page: document.getElementById("vb-page").textContent };
  type("cam-5");
  out.search = { names: names(), count: document.getElementById("vb-count").textContent };
  type("");
  choose("vb-label", String(JSON.parse(document.getElementById("vidbatch-data").textContent).labels.indexOf("circle")));
  out.label = names();
  choose("vb-label", "");
  choose("vb-status", "failed");
  out.failed = all("#vb-videos .video").map(function (v) { return [v.querySelector(".name").textContent, (v.querySelector("code.err") || {}).textContent]; });
  choose("vb-status", "");
  var lecture = all("#vb-videos .video").filter(function (v) { return v.textContent.indexOf("lecture-40min") >= 0; })[0];
  function ticks() { return all(".ticks span", lecture).map(function (t) { return t.textContent; }); }
  function width() { return lecture.querySelector(".track").getBoundingClientRect().width; }
  function labelled() { return all(".seg", lecture).filter(function (s) { return s.textContent; }).length; }
  out.zoom = [{ width: width(), ticks: ticks(), labelled: labelled(), segs: all(".seg", lecture).length }];
  var zoomIn = lecture.querySelector('[data-zoom="in"]');
  zoomIn.click();
  out.zoom.push({ width: width(), ticks: ticks(), labelled: labelled() });
  for (var n = 0; n < 20 && !zoomIn.disabled; n++) zoomIn.click();
  out.zoom.push({ width: width(), ticks: ticks().slice(0, 4), scroll: lecture.querySelector(".scroller").scrollWidth,
                  view: lecture.querySelector(".scroller").clientWidth, level: lecture.querySelector(".zoom .level").textContent });
  out.zoom_overflow = overflowing();
  var first = all("#vb-videos .video").filter(function (v) { return v.querySelector(".name").textContent === "vid-0.mp4"; })[0];
  out.links = all("a.seg", first).map(function (a) { return [a.getAttribute("href"), a.textContent]; });
  var seg = all("a.seg", first).filter(function (a) { return /#t=2,4$/.test(a.getAttribute("href")); })[0];
  var media = document.getElementById("vb-video");
  function finish(how) {
    out.player = { how: how, src: media.currentSrc || media.src, time: media.currentTime,
                   hidden: document.getElementById("vb-player").hidden };
    var pre = document.createElement("pre"); pre.id = "probe";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  media.addEventListener("seeked", function () { finish("seeked"); }, { once: true });
  media.addEventListener("error", function () { finish("error"); }, { once: true });
  seg.click();
  setTimeout(function () { if (!document.getElementById("probe")) finish("timeout"); }, 8000);
})();
</script>
"""


@needs_chromium
def test_a_browser_can_search_page_zoom_and_play(report, tmp_path):
    """Driven in headless Chromium at 1400 px: every card contains its content (a 200-character
    name wraps, captions are whole), paging reaches all 63 videos, the search box and the label
    and status filters narrow them, + zooms the 40-minute timeline (wider track, finer ticks,
    labels inside the bars), and a click on an interval plays the video from its start."""
    path, html = report
    probe = path.with_name("probed.html")
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = _chromium(
        tmp_path,
        "--window-size=1400,1000",
        "--virtual-time-budget=15000",
        "--dump-dom",
        probe.as_uri(),
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, flags=re.S)
    assert found, dom[-2000:]
    out = json.loads(unescape(found.group(1)))

    assert out["overflow"] == [] and out["zoom_overflow"] == []
    assert out["long"]["right"] <= out["long"]["card_right"] and out["long"]["height"] > 30
    assert out["captions_whole"] and all(out["captions_whole"])
    assert len(out["first"]["names"]) == PAGE and out["first"]["page"] == "1–20 of 63 · page 1 of 4"
    assert out["first"]["names"][:5] == [
        "bad-0.mp4", "bad-1.mp4", LONG_NAME, "lecture-40min.mp4", "moved-away.mp4",
    ]  # fmt: skip
    assert out["second"]["page"] == "21–40 of 63 · page 2 of 4"
    assert out["second"]["names"][0] == "cam-12.mp4"
    assert out["search"]["names"] == [f"cam-{n}.mp4" for n in range(50, 55)]
    assert out["search"]["count"] == "5 of 63 videos"
    assert out["label"] == ["moved-away.mp4", "vid-0.mp4"]
    assert out["failed"] == [["bad-0.mp4", ERRORS[0]], ["bad-1.mp4", ERRORS[1]]]

    fit, twice, most = out["zoom"]
    assert twice["width"] == pytest.approx(2 * fit["width"], rel=0.01)
    assert fit["segs"] == 80 + 40  # label intervals and shots
    assert twice["labelled"] > fit["labelled"]  # wider bars have room for their labels
    assert len(twice["ticks"]) > len(fit["ticks"]) >= 5
    assert most["level"].startswith("×") and most["scroll"] > 20 * most["view"]
    steps = [int(t.split(":")[0]) * 60 + int(t.split(":")[1]) for t in most["ticks"]]
    assert steps[1] - steps[0] <= 5  # seconds apart, not minutes

    video_uri = Path(page_data(html)["videos"][0]["uri"]).parent.joinpath("vid-0.mp4").as_uri()
    assert [video_uri + "#t=0,2", "moving_right"] in out["links"]
    assert [video_uri + "#t=2,4", "static"] in out["links"]
    player = out["player"]
    assert player["how"] == "seeked" and not player["hidden"]
    assert player["src"] == video_uri + "#t=2,4" and player["time"] == pytest.approx(2.0, abs=0.1)


@needs_chromium
def test_the_page_opens_at_the_search_in_its_address(report, tmp_path):
    """The search, filters and page live in the address (#q=...&page=...): a link to them works."""
    path, _ = report
    dom = _chromium(
        tmp_path, "--window-size=1400,1000", "--dump-dom", path.as_uri() + "#q=cam-3&page=1"
    )
    names = re.findall(r'<span class="name">([^<]+)</span>|<a class="name"[^>]*>([^<]+)</a>', dom)
    assert [a or b for a, b in names] == [f"cam-{n}.mp4" for n in range(30, 40)]
