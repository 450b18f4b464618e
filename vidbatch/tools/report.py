"""`vidbatch report`: one self-contained HTML page to look at an index without writing SQL.

Everything is inline (CSS, the script that draws the timelines, their data, thumbnails as data
URIs) so the file can be mailed, attached to a ticket or opened from object storage with no
server and no network; its Content-Security-Policy lets it load nothing but the videos its
links play. The page shows the index's current state (one snapshot) and the runs table.
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
from urllib.parse import quote

from vidbatch.storage import options_for
from vidbatch.tools.report_html import hex_rgb, label_colour, render_page
from vidbatch.tools.search import add_storage_options, find_intervals

if TYPE_CHECKING:  # NumPy, DuckDB, fsspec load when a report is built, not for `vidbatch --help`
    import numpy as np

_THUMB_SIZE = 320  # longer side of a thumbnail, pixels
_SAME_DECODE_S = 10.0  # thumbnails of one video closer than this share one decode pass
THUMBNAIL_TIMEOUT_S = 60.0  # per decode pass, in a child process

_VIDEOS = """
SELECT video_id, uri, duration_s, fps, width, height, codec, status, error, attempts, run_id,
       processed_at
FROM videos ORDER BY uri
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
_SHOTS = """
SELECT uri, model, shot_index, start_s, end_s, transition_score
FROM shots ORDER BY uri, model, start_s
"""
_RUNS = "SELECT * FROM runs ORDER BY started_at DESC"
_TOTALS = """
SELECT (SELECT count(*) FROM clips) AS clips, (SELECT count(*) FROM detections) AS detections,
       (SELECT count(*) FROM shots) AS shots
"""
# What a browser can open as a link; anything else (javascript:, data:) gets no link.
_LINKABLE = ("http://", "https://", "file://")
# Stores a browser cannot open: the uri stays the link (with its fragment) unless mapped.
_STORE_SCHEMES = ("s3://", "s3a://", "gs://", "gcs://", "az://", "abfs://", "abfss://")


def build_report(
    output_uri: str,
    html_uri: str | Path,
    *,
    storage_options: Mapping[str, Any] | None = None,
    html_storage_options: Mapping[str, Any] | None = None,
    max_thumbnails: int = 24,
    thumbnail_timeout_s: float = THUMBNAIL_TIMEOUT_S,
    link_prefixes: Mapping[str, str] | None = None,
    as_of: int | str | None = None,
) -> str:
    """Write the report of the index at `output_uri` to `html_uri` (a local path or any fsspec
    URI, e.g. s3://; written whole or not at all); returns `html_uri` as text.

    `link_prefixes` map uri prefixes to what a browser can open (e.g. {"s3://bucket/":
    "https://bucket.s3.amazonaws.com/"}); `html_storage_options` are fsspec options for the
    page's own location (default: `storage_options` when it is on the same kind of store)."""
    from vidbatch.tools.query import connect

    con = connect(output_uri, storage_options, as_of=as_of)
    try:
        videos = con.sql(_VIDEOS).to_arrow_table().to_pylist()
        counts = con.sql(_LABEL_COUNTS).to_arrow_table().to_pylist()
        intervals = find_intervals(con).to_pylist()
        shots = con.sql(_SHOTS).to_arrow_table().to_pylist()
        top = con.sql(_TOP_DETECTIONS, params={"n": max_thumbnails}).to_arrow_table().to_pylist()
        runs = con.sql(_RUNS).to_arrow_table().to_pylist()
        totals = con.sql(_TOTALS).to_arrow_table().to_pylist()[0]
    finally:
        con.close()
    labels = sorted({r["label"] for r in counts})
    colours = {label: label_colour(label, i) for i, label in enumerate(labels)}
    thumbnails = cut_thumbnails(top, colours, storage_options, timeout_s=thumbnail_timeout_s)
    uris = {v["uri"] for v in videos} | {t["uri"] for t in thumbnails}
    links = {uri: link for uri in uris if (link := video_link(uri, link_prefixes))}
    page = render_page(
        output_uri,
        videos=videos,
        counts=counts,
        intervals=intervals,
        shots=shots,
        thumbnails=thumbnails,
        runs=runs,
        totals=totals,
        colours=colours,
        links=links,
        link_note=_link_note(uris, link_prefixes),
    )
    html_uri = str(html_uri)
    if html_storage_options is None:
        html_storage_options = options_for(html_uri, output_uri, storage_options)
    write_whole(html_uri, page.encode("utf-8"), html_storage_options)
    return html_uri


def video_link(uri: str, prefixes: Mapping[str, str] | None = None) -> str | None:
    """What a browser opens for a video: a mapped prefix (longest first) with the rest of the
    uri percent-encoded, a file:// URI for an absolute local path, http(s) and file URIs as
    they are, object-store URIs as they are (a browser cannot open them; map them with
    `prefixes`); None for anything else."""
    for prefix in sorted(prefixes or {}, key=len, reverse=True):
        if uri.startswith(prefix):
            return prefixes[prefix] + quote(uri[len(prefix) :], safe="/")
    if "://" not in uri:
        return Path(uri).as_uri() if os.path.isabs(uri) else None
    if uri.lower().startswith(_LINKABLE + _STORE_SCHEMES):
        return uri
    return None


def _link_note(uris: set[str], prefixes: Mapping[str, str] | None) -> str:
    mapped = tuple(prefixes or {})
    unmapped = sorted(
        {u.split("://", 1)[0] for u in uris if u.lower().startswith(_STORE_SCHEMES)}
        - {p.split("://", 1)[0] for p in mapped}
    )
    if not unmapped:
        return ""
    schemes = ", ".join(f"{s}://" for s in unmapped)
    return (
        f"Links to {schemes} videos keep the store's URI, which a browser cannot open: give "
        "--link-prefix s3://bucket/=https://host/path/ (a website, CDN or proxy in front of "
        "the bucket) to make them play."
    )


def write_whole(uri: str, data: bytes, storage_options: Mapping[str, Any] | None) -> None:
    """Write `data` at a local path or fsspec URI so that it is complete or absent: locally a
    file beside the target renamed into place, on object stores one PUT."""
    from vidbatch.errors import describe
    from vidbatch.storage import filesystem, is_local, needs_folders

    fs, path = filesystem(uri, storage_options if not is_local(uri) else None)
    try:
        if is_local(uri):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            partial = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial")
            with open(partial, "wb") as handle:
                handle.write(data)
            os.replace(partial, path)
            return
        if needs_folders(fs):
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, data)
    except OSError as exc:  # name the page, not only the folder the library tripped on
        raise OSError(f"cannot write {uri}: {describe(exc)}") from exc


def cut_thumbnails(
    detections: list[dict],
    colours: Mapping[str, str],
    storage_options: Mapping[str, Any] | None,
    *,
    timeout_s: float = THUMBNAIL_TIMEOUT_S,
) -> list[dict]:
    """Detections with `image` (a data URI of the frame, box drawn), best first, then one card
    with `error` per video whose frames could not be read (moved, deleted, no access, a
    decoder that crashed or missed its deadline).

    Decoding runs in a child process (`vidbatch.media.isolation.Sandbox`) with a deadline per
    pass, as the job decodes: a file that hangs or crashes the decoder costs its thumbnails,
    never the report. After a crash or timeout the file's other passes are not tried."""
    from vidbatch.errors import StageError, describe
    from vidbatch.media.decode import decode_samples
    from vidbatch.media.isolation import Sandbox, SandboxError
    from vidbatch.specs import FrameSpec

    spec = FrameSpec(fps=1.0, size=_THUMB_SIZE)
    out = [dict(d) for d in detections]
    by_uri: dict[str, list[dict]] = {}
    for item in out:
        by_uri.setdefault(item["uri"], []).append(item)
    sandbox = Sandbox(timeout_s)
    try:
        for uri, items in by_uri.items():
            items.sort(key=lambda d: d["frame_time_s"])
            groups: list[list[dict]] = [[items[0]]]
            for item in items[1:]:
                if item["frame_time_s"] - groups[-1][-1]["frame_time_s"] > _SAME_DECODE_S:
                    groups.append([])
                groups[-1].append(item)
            for n, group in enumerate(groups):
                times = [d["frame_time_s"] for d in group]
                try:
                    frames = sandbox.call(
                        decode_samples,
                        uri,
                        frame_spec=spec,
                        frame_times=times,
                        storage_options=storage_options,
                    ).frames
                except SandboxError as exc:  # the same file would hang or crash again
                    for d in (d for g in groups[n:] for d in g):
                        d["error"] = f"frame unavailable: decoding {exc}"
                    break
                except Exception as exc:  # moved, deleted, no access, corrupt
                    why = str(exc) if isinstance(exc, StageError) else describe(exc)
                    for d in group:
                        d["error"] = f"frame unavailable: {why}"
                    continue
                for d, frame in zip(group, frames, strict=True):
                    box = (d["x1"], d["y1"], d["x2"], d["y2"])
                    boxed = draw_box(frame, box, hex_rgb(colours[d["label"]]))
                    d["image"] = data_uri(boxed)
    finally:
        sandbox.close()
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
        thumbnail_timeout_s=args.thumbnail_timeout,
        link_prefixes=dict(args.link_prefix),
        as_of=args.as_of,
    )
    print(f"wrote {path}")
    return 0


def link_prefix_arg(text: str) -> tuple[str, str]:
    """argparse type for --link-prefix FROM=TO."""
    source, sep, target = text.partition("=")
    if not sep or not source or not target:
        raise argparse.ArgumentTypeError(
            "expected FROM=TO, e.g. s3://bucket/videos/=https://cdn.example.com/videos/"
        )
    return source, target


def add_report_parser(verbs: Any) -> argparse.ArgumentParser:
    """Register `vidbatch report` on the CLI's subparsers."""
    p = verbs.add_parser(
        "report",
        help="one self-contained HTML page about an index",
        description="One self-contained HTML page of the index's current state: label counts, "
        "per-video timelines (searchable, paged, zoomable, each interval a link that plays the "
        "video there), detection thumbnails with boxes, failed videos and the run history.",
    )
    p.add_argument("output", help="the job's output.uri")
    p.add_argument(
        "--html", required=True, metavar="FILE|URI", help="where to write the page (s3:// too)"
    )
    p.add_argument("--max-thumbnails", type=int, default=24, metavar="N")
    p.add_argument(
        "--thumbnail-timeout",
        type=float,
        default=THUMBNAIL_TIMEOUT_S,
        metavar="SECONDS",
        help="deadline for decoding one video's thumbnails (in a child process)",
    )
    p.add_argument(
        "--link-prefix",
        type=link_prefix_arg,
        action="append",
        default=[],
        metavar="FROM=TO",
        help="link videos under FROM to TO instead, e.g. "
        "s3://bucket/=https://bucket.s3.amazonaws.com/ (repeatable)",
    )
    p.add_argument(
        "--as-of", metavar="VERSION|TIMESTAMP", help="the index as it was (see vidbatch query)"
    )
    add_storage_options(p)
    p.set_defaults(func=_cmd_report)
    return p
