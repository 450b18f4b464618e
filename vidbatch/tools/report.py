"""`vidbatch report`: one self-contained HTML page to look at an index without writing SQL.

Everything is inline (CSS, timelines, thumbnails as data URIs) so the file can be mailed,
attached to a ticket or opened from object storage with no server and no network.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vidbatch.tools.report_html import hex_rgb, label_colour, render_page
from vidbatch.tools.search import find_intervals, storage_options_arg

if TYPE_CHECKING:  # NumPy, DuckDB, fsspec load when a report is built, not for `vidbatch --help`
    import numpy as np

_THUMB_SIZE = 320  # longer side of a thumbnail, pixels
_SAME_DECODE_S = 10.0  # thumbnails of one video closer than this share one decode pass

_VIDEOS = "SELECT * FROM videos ORDER BY uri"
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
    SELECT *, row_number() OVER (
        PARTITION BY label, uri ORDER BY score DESC, frame_time_s
    ) AS per_video
    FROM detections
), spread AS (
    SELECT *, row_number() OVER (
        PARTITION BY label ORDER BY per_video, score DESC, uri
    ) AS per_label
    FROM ranked
)
SELECT uri, frame_time_s, model, label, score, x1, y1, x2, y2
FROM spread ORDER BY per_label, score DESC, label, uri LIMIT $n
"""
_RUNS = "SELECT *, listed AS videos FROM runs ORDER BY started_at DESC"


def build_report(
    output_uri: str,
    html_path: str | Path,
    *,
    storage_options: Mapping[str, Any] | None = None,
    max_thumbnails: int = 24,
    max_videos: int = 50,
) -> Path:
    """Write the report of the index at `output_uri` to `html_path` (complete or absent)."""
    from vidbatch.tools.query import connect

    con = connect(output_uri, storage_options)
    try:
        videos = con.sql(_VIDEOS).to_arrow_table().to_pylist()
        counts = con.sql(_LABEL_COUNTS).to_arrow_table().to_pylist()
        intervals = find_intervals(con).to_pylist()
        top = con.sql(_TOP_DETECTIONS, params={"n": max_thumbnails}).to_arrow_table().to_pylist()
        runs, runs_note = con.sql(_RUNS).to_arrow_table().to_pylist(), "From the runs table, newest first."
        totals = con.sql(
            "SELECT (SELECT count(*) FROM clips), (SELECT count(*) FROM detections)"
        ).fetchall()[0]
    finally:
        con.close()
    labels = sorted({r["label"] for r in counts})
    colours = {label: label_colour(label, i) for i, label in enumerate(labels)}
    thumbnails = cut_thumbnails(top, colours, storage_options)
    page = render_page(
        output_uri,
        videos=videos,
        counts=counts,
        intervals=intervals,
        thumbnails=thumbnails,
        runs=runs,
        runs_note=runs_note,
        totals=totals,
        colours=colours,
        max_videos=max_videos,
    )
    path = Path(html_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, path)
    return path


def cut_thumbnails(
    detections: list[dict], colours: Mapping[str, str], storage_options: Mapping[str, Any] | None
) -> list[dict]:
    """Detections with `image` (a data URI of the frame, box drawn), best first, then one card
    with `error` per video whose frames could not be read (moved, deleted, no access)."""
    from vidbatch.errors import StageError
    from vidbatch.media.decode import decode_samples
    from vidbatch.specs import FrameSpec

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
                boxed = draw_box(frame, box, hex_rgb(colours[d["label"]]))
                d["image"] = data_uri(boxed)
    unreadable = {d["uri"]: d for d in reversed(out) if "error" in d}  # the best per video
    return [d for d in out if "image" in d] + [d for d in out if unreadable.get(d["uri"]) is d]


def draw_box(rgb: np.ndarray, box: tuple[float, float, float, float], colour: tuple) -> np.ndarray:
    """A copy of `rgb` with the normalized box outlined in `colour`, edged dark for contrast."""
    import numpy as np

    image = rgb.copy()
    height, width = image.shape[:2]
    x1, x2 = sorted(int(np.clip(round(v * width), 0, width - 1)) for v in (box[0], box[2]))
    y1, y2 = sorted(int(np.clip(round(v * height), 0, height - 1)) for v in (box[1], box[3]))
    thick = max(3, round(min(height, width) / 80))
    _outline(image, x1 - 1, y1 - 1, x2 + 1, y2 + 1, thick + 2, (17, 24, 39))
    _outline(image, x1, y1, x2, y2, thick, colour)
    return image


def _outline(image: np.ndarray, x1: int, y1: int, x2: int, y2: int, t: int, fill: tuple) -> None:
    height, width = image.shape[:2]
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width - 1, x2), min(height - 1, y2)
    image[y1 : y1 + t, x1 : x2 + 1] = fill
    image[max(y1, y2 - t + 1) : y2 + 1, x1 : x2 + 1] = fill
    image[y1 : y2 + 1, x1 : x1 + t] = fill
    image[y1 : y2 + 1, max(x1, x2 - t + 1) : x2 + 1] = fill


def data_uri(rgb: np.ndarray) -> str:
    """JPEG through Pillow when present (torchvision brings it), else a PNG made here."""
    import numpy as np

    try:
        from PIL import Image
    except ImportError:
        return "data:image/png;base64," + base64.b64encode(encode_png(rgb)).decode()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of a (H, W, 3) uint8 array: zlib and struct, nothing else."""
    import numpy as np

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
