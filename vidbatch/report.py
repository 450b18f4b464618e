"""`vidbatch report`: one self-contained HTML page to look at an index without writing SQL.

Everything is inline (CSS, SVG timelines, thumbnails as data URIs) so the file can be mailed,
attached to a ticket or opened from object storage with no server and no network.
"""

from __future__ import annotations

import argparse
import base64
import colorsys
import hashlib
import io
import json
import os
import struct
import zlib
from collections.abc import Mapping
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from vidbatch.query import connect
from vidbatch.report_html import Page, render_page
from vidbatch.search import find_intervals, storage_options_arg
from vidbatch.storage import filesystem, join

_PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#edc948",
    "#76b7b2", "#ff9da7", "#9c755f", "#2f4b7c", "#d45087", "#00a2b8",
)  # fmt: skip
_THUMB_SIZE = 320  # longer side of a thumbnail, pixels
_SAME_DECODE_S = 10.0  # thumbnails of one video closer than this share one decode pass

_LATEST_VIDEOS = """
SELECT * EXCLUDE (rn) FROM (
    SELECT *, row_number() OVER (PARTITION BY uri ORDER BY processed_at DESC, date DESC) AS rn
    FROM videos
) WHERE rn = 1 ORDER BY uri
"""
_LABEL_COUNTS = """
SELECT label, model, 'clips' AS source, count(*) AS rows,
       sum(clip_end_s - clip_start_s) AS seconds, max(score) AS best
FROM clips GROUP BY label, model
UNION ALL
SELECT label, model, 'detections' AS source, count(*) AS rows, NULL AS seconds, max(score) AS best
FROM detections GROUP BY label, model
ORDER BY label, model, source
"""
# Best first, but one per label before a second of any label, and one per video per label
# before a second frame of the same video: a gallery of 24 near-identical frames says little.
_TOP_DETECTIONS = """
WITH ranked AS (
    SELECT *, row_number() OVER (PARTITION BY label, uri ORDER BY score DESC, frame_time_s) AS per_video
    FROM detections
), spread AS (
    SELECT *, row_number() OVER (PARTITION BY label ORDER BY per_video, score DESC, uri) AS per_label
    FROM ranked
)
SELECT uri, frame_time_s, model, label, score, x1, y1, x2, y2
FROM spread ORDER BY per_label, score DESC, label, uri LIMIT $n
"""
_RUNS_FROM_VIDEOS = """
SELECT run_id, min(processed_at) AS started_at, max(processed_at) AS finished_at,
       count(*) AS videos, count_if(status = 'ok') AS ok, count_if(status = 'failed') AS failed,
       count_if(status = 'skipped') AS skipped
FROM videos GROUP BY run_id ORDER BY started_at DESC
"""


def build_report(
    output_uri: str,
    html_path: str | Path,
    *,
    storage_options: Mapping[str, Any] | None = None,
    max_thumbnails: int = 24,
    max_videos: int = 50,
) -> Path:
    """Write the report of the index at `output_uri` to `html_path` (complete or absent)."""
    con = connect(output_uri, storage_options)
    try:
        videos = con.sql(_LATEST_VIDEOS).to_arrow_table().to_pylist()
        counts = con.sql(_LABEL_COUNTS).to_arrow_table().to_pylist()
        intervals = find_intervals(con).to_pylist()
        top = con.sql(_TOP_DETECTIONS, params={"n": max_thumbnails}).to_arrow_table().to_pylist()
        runs, runs_note = read_runs(output_uri, storage_options), ""
        if not runs:
            runs = con.sql(_RUNS_FROM_VIDEOS).to_arrow_table().to_pylist()
            runs_note = "No _runs/ records: runs as the videos table shows them."
        totals = con.sql(
            "SELECT (SELECT count(*) FROM clips) AS clips, (SELECT count(*) FROM detections) AS dets"
        ).fetchone()
    finally:
        con.close()
    labels = sorted({r["label"] for r in counts})
    page = Page(
        output_uri=output_uri,
        generated_at=datetime.now(timezone.utc),
        colours={label: label_colour(label, i) for i, label in enumerate(labels)},
        videos=videos,
        counts=counts,
        intervals=intervals,
        thumbnails=cut_thumbnails(top, labels, storage_options),
        runs=runs,
        runs_note=runs_note,
        clip_rows=int(totals[0]),
        detection_rows=int(totals[1]),
        max_videos=max_videos,
    )
    path = Path(html_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(render_page(page), encoding="utf-8")
    os.replace(partial, path)
    return path


def label_colour(label: str, index: int) -> str:
    """A palette colour by label order; past the palette, a hue hashed from the label."""
    if index < len(_PALETTE):
        return _PALETTE[index]
    hue = int(hashlib.sha256(label.encode()).hexdigest()[:4], 16) / 0xFFFF
    r, g, b = colorsys.hls_to_rgb(hue, 0.48, 0.55)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def read_runs(output_uri: str, storage_options: Mapping[str, Any] | None = None) -> list[dict]:
    """Run records from `<output>/_runs/*.json`, newest first; a broken record says why."""
    fs, root = filesystem(output_uri, storage_options)
    records = []
    for path in sorted(fs.glob(join(root, "_runs", "*.json"))):
        try:
            record = json.loads(fs.cat_file(path))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (ValueError, OSError) as exc:
            name = path.rsplit("/", 1)[-1]
            record = {"run_id": name.removesuffix(".json"), "status": "unreadable", "error": str(exc)}
        records.append(record)
    return sorted(records, key=lambda r: str(r.get("started_at") or ""), reverse=True)


def cut_thumbnails(
    detections: list[dict], labels: list[str], storage_options: Mapping[str, Any] | None
) -> list[dict]:
    """Each detection with `image` (a data URI of its frame, box drawn) or `error`."""
    from vidbatch.decode import decode_samples
    from vidbatch.errors import StageError
    from vidbatch.specs import FrameSpec

    colours = {label: label_colour(label, i) for i, label in enumerate(labels)}
    spec = FrameSpec(fps=1.0, size=_THUMB_SIZE)
    out = [dict(d) for d in detections]
    by_uri: dict[str, list[dict]] = {}
    for item in out:
        by_uri.setdefault(item["uri"], []).append(item)
    for uri, items in by_uri.items():
        items.sort(key=lambda d: d["frame_time_s"])
        groups: list[list[dict]] = [[items[0]]]
        for item in items[1:]:
            if item["frame_time_s"] - groups[-1][-1]["frame_time_s"] > _SAME_DECODE_S:
                groups.append([])
            groups[-1].append(item)
        for group in groups:
            times = [d["frame_time_s"] for d in group]
            try:
                frames = decode_samples(
                    uri, frame_spec=spec, frame_times=times, storage_options=storage_options
                ).frames
            except (StageError, OSError) as exc:
                for d in group:
                    d["error"] = f"frame unavailable: {exc}"
                continue
            for d, frame in zip(group, frames, strict=True):
                box = (d["x1"], d["y1"], d["x2"], d["y2"])
                boxed = draw_box(frame, box, _rgb(colours[d["label"]]))
                d["image"] = data_uri(boxed)
    return out


def draw_box(rgb: np.ndarray, box: tuple[float, float, float, float], colour: tuple) -> np.ndarray:
    """A copy of `rgb` with the normalized box outlined in `colour` (and a dark edge for contrast)."""
    image = rgb.copy()
    height, width = image.shape[:2]
    x1, x2 = (int(np.clip(round(v * width), 0, width - 1)) for v in (box[0], box[2]))
    y1, y2 = (int(np.clip(round(v * height), 0, height - 1)) for v in (box[1], box[3]))
    x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
    thick = max(2, round(min(height, width) / 90))
    for pad, fill in ((thick, (20, 20, 20)), (thick - 1, colour)):
        ax1, ay1 = max(0, x1 - pad + thick - 1), max(0, y1 - pad + thick - 1)
        ax2, ay2 = min(width - 1, x2 + pad - thick + 1), min(height - 1, y2 + pad - thick + 1)
        t = pad + 1 if fill is colour else pad + 2
        image[ay1 : ay1 + t, ax1 : ax2 + 1] = fill
        image[max(ay1, ay2 - t + 1) : ay2 + 1, ax1 : ax2 + 1] = fill
        image[ay1 : ay2 + 1, ax1 : ax1 + t] = fill
        image[ay1 : ay2 + 1, max(ax1, ax2 - t + 1) : ax2 + 1] = fill
    return image


def data_uri(rgb: np.ndarray) -> str:
    """JPEG through Pillow when present (torchvision brings it), else a PNG made here."""
    try:
        from PIL import Image
    except ImportError:
        return "data:image/png;base64," + base64.b64encode(encode_png(rgb)).decode()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of a (H, W, 3) uint8 array: zlib and struct, nothing else."""
    height, width = rgb.shape[:2]
    rows = np.concatenate(
        [np.zeros((height, 1), np.uint8), np.ascontiguousarray(rgb, np.uint8).reshape(height, -1)],
        axis=1,
    )  # filter byte 0 (none) before each row

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _cmd_report(args: argparse.Namespace) -> int:
    path = build_report(
        args.output,
        args.html,
        storage_options=args.storage_options,
        max_thumbnails=args.max_thumbnails,
        max_videos=args.max_videos,
    )
    print(f"wrote {path}")
    return 0


def add_report_parser(verbs: Any) -> argparse.ArgumentParser:
    """Register `vidbatch report` on the CLI's subparsers."""
    p = verbs.add_parser(
        "report",
        help="one self-contained HTML page about an index",
        description="One self-contained HTML page: label counts, per-video timelines, "
        "detection thumbnails with boxes, failed videos and run history.",
    )
    p.add_argument("output", help="the job's output.uri")
    p.add_argument("--html", required=True, metavar="FILE", help="where to write the page")
    p.add_argument("--max-thumbnails", type=int, default=24, metavar="N")
    p.add_argument("--max-videos", type=int, default=50, metavar="N", help="timelines to draw")
    p.add_argument(
        "--storage-options", type=storage_options_arg, metavar="JSON", help="fsspec options"
    )
    p.set_defaults(func=_cmd_report)
    return p


__all__ = ["add_report_parser", "build_report", "draw_box", "encode_png", "escape", "read_runs"]
