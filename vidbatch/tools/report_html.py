"""HTML of `vidbatch report`: each section as an HTML fragment, poured into report_template.html.

Kept apart from reading the index so the look can change without touching queries or decoding.
Every string that comes from the index goes through `escape`.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Mapping
from datetime import datetime, timezone
from html import escape
from importlib import resources
from string import Template
from typing import Any

_PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#edc948",
    "#76b7b2", "#ff9da7", "#9c755f", "#2f4b7c", "#d45087", "#00a2b8",
)  # fmt: skip

_MAX_FAILURES = 200  # rows in the failures table; SQL finds the rest


def render_page(
    output_uri: str,
    *,
    videos: list[dict],
    counts: list[dict],
    intervals: list[dict],
    thumbnails: list[dict],
    runs: list[dict],
    runs_note: str,
    totals: tuple,
    colours: Mapping[str, str],
    max_videos: int,
) -> str:
    """The whole page: summary, label counts, timelines, gallery, failures, runs."""
    body = "\n".join(
        [
            _summary(videos, totals, counts),
            _counts_section(counts, colours),
            _timelines_section(videos, intervals, colours, max_videos),
            _gallery_section(thumbnails, colours),
            _failures_section(videos),
            _runs_section(runs, runs_note),
        ]
    )
    template = Template((resources.files("vidbatch.tools") / "report_template.html").read_text("utf-8"))
    return template.substitute(
        title=escape(output_uri),
        output_uri=escape(output_uri),
        generated_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        body=body,
    )


def label_colour(label: str, index: int) -> str:
    """A palette colour by label order; past the palette, a hue hashed from the label."""
    if index < len(_PALETTE):
        return _PALETTE[index]
    hue = int(hashlib.sha256(label.encode()).hexdigest()[:4], 16) / 0xFFFF
    r, g, b = colorsys.hls_to_rgb(hue, 0.48, 0.55)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _ink(hex_colour: str) -> str:
    """Dark text on light colours, white on dark ones (relative luminance)."""
    r, g, b = (c / 255 for c in hex_rgb(hex_colour))
    return "#1d2433" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.6 else "#ffffff"


def hex_rgb(hex_colour: str) -> tuple[int, int, int]:
    """(r, g, b) of "#rrggbb"."""
    value = hex_colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _summary(videos: list[dict], totals: tuple, counts: list[dict]) -> str:
    status = [v["status"] for v in videos]
    seconds = sum(v["duration_s"] or 0 for v in videos if v["status"] == "ok")
    models = sorted({r["model"] for r in counts})
    stats = [
        ("Videos", f"{len(videos):,}", ""),
        ("Indexed ok", f"{status.count('ok'):,}", "ok"),
        ("Failed", f"{status.count('failed'):,}", "bad" if "failed" in status else ""),
        ("Skipped", f"{status.count('skipped'):,}", ""),
        ("Video time", _clock(seconds), ""),
        ("Clip rows", f"{totals[0]:,}", ""),
        ("Detections", f"{totals[1]:,}", ""),
        ("Models", f"{len(models)}", ""),
    ]
    cards = "".join(
        f'<div class="stat {cls}"><div class="v">{value}</div><div class="k">{key}</div></div>'
        for key, value, cls in stats
    )
    return f'<div class="stats">{cards}</div>'


def _chip(label: str, colours: Mapping[str, str]) -> str:
    return f'<span class="chip" style="--c:{colours.get(label, "#999")}">{escape(label)}</span>'


def _legend(colours: Mapping[str, str]) -> str:
    return '<div class="legend">' + "".join(_chip(lb, colours) for lb in colours) + "</div>"


def _counts_section(counts: list[dict], colours: Mapping[str, str]) -> str:
    if not counts:
        return _card("Labels", "No clips or detections in this index.", "")
    most = {
        src: max(r["rows"] for r in counts if r["source"] == src)
        for src in {"clips", "detections"}
        if any(r["source"] == src for r in counts)
    }
    rows = []
    for r in counts:
        width = 100 * r["rows"] / most[r["source"]]
        seconds = "" if r["seconds"] is None else f"{r['seconds']:,.1f}"
        rows.append(
            f"<tr><td>{_chip(r['label'], colours)}</td><td class='mono'>{escape(r['model'])}</td>"
            f"<td>{r['source']}</td><td><div class='bar' style='--c:{colours[r['label']]}'>"
            f"<i style='width:{width:.1f}%'></i>{r['rows']:,}</div></td>"
            f"<td class='num'>{seconds}</td><td class='num'>{r['best']:.2f}</td></tr>"
        )
    table = (
        "<table><tr><th>Label</th><th>Model</th><th>Source</th><th>Rows</th>"
        "<th class='num'>Seconds</th><th class='num'>Best score</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    hint = (
        "Rows per label and model: top-1 clip labels and detected objects. "
        "Bars compare rows within a source."
    )
    return _card("Labels by model", hint, _legend(colours) + table)


def _timelines_section(
    videos: list[dict], intervals: list[dict], colours: Mapping[str, str], max_videos: int
) -> str:
    by_uri: dict[str, list[dict]] = {}
    for item in intervals:
        by_uri.setdefault(item["uri"], []).append(item)
    drawable = [v for v in videos if v["status"] != "failed" or v["uri"] in by_uri]
    parts = [_timeline(v, by_uri.get(v["uri"], []), colours) for v in drawable[:max_videos]]
    hint = (
        "Where each label appears along each video: merged clips and detection frames; "
        "one lane per model's clips, one per detected class."
    )
    if len(drawable) > max_videos:
        hint += f" Showing {max_videos} of {len(drawable)} videos (--max-videos)."
    body = _legend(colours) + ("".join(parts) or "<p class='empty'>No indexed videos.</p>")
    return _card("Timelines", hint, body)


def _timeline(video: dict, found: list[dict], colours: Mapping[str, str]) -> str:
    """One video: a lane per model for clips (top-1 labels never overlap), and a lane per
    model and class for detections (objects of several classes share a frame)."""
    duration = video["duration_s"] or max((i["end_s"] for i in found), default=0.0) or 1.0
    lanes: dict[tuple[str, ...], list[dict]] = {}
    for item in found:
        key = (
            item["source"] != "clips",
            item["model"],
            item["label"] if item["source"] != "clips" else "",
        )
        lanes.setdefault(key, []).append(item)
    rows = []
    for (is_detection, model, label), items in sorted(lanes.items()):
        who = f"{model} · {label}" if is_detection else f"{model} · clips"
        bars = "".join(_bar(i, duration, colours) for i in items)
        rows.append(
            f"<div class='lane'><div class='who' title='{escape(who)}'>{escape(who)}</div>"
            f"<div class='track'>{bars}</div></div>"
        )
    ticks = "".join(_tick(t, duration) for t in _ticks(duration))
    name = video["uri"].rstrip("/").rsplit("/", 1)[-1]
    facts = [_clock(duration)]
    if video.get("width") and video.get("height"):
        facts.append(f"{video['width']}×{video['height']}")
    facts += [str(video[k]) for k in ("codec", "status") if video.get(k)]
    body = "".join(rows) or "<div class='lane'><div></div><div class='empty'>no labels</div></div>"
    return (
        f"<div class='video'><div class='name'>{escape(name)} <span class='muted'>· "
        f"{escape(' · '.join(facts))}</span></div><div class='uri'>{escape(video['uri'])}</div>"
        f"{body}<div class='axis'><div></div><div class='ticks'>{ticks}</div></div></div>"
    )


def _bar(item: dict, duration: float, colours: Mapping[str, str]) -> str:
    left = 100 * item["start_s"] / duration
    width = max(100 * (item["end_s"] - item["start_s"]) / duration, 0.5)  # a lone frame shows
    tip = (
        f"{item['label']}: {item['start_s']:.2f}–{item['end_s']:.2f} s, "
        f"max score {item['max_score']:.2f}, {item['hits']} {item['source']}"
    )
    text = escape(item["label"]) if width >= 8 else ""
    return (
        f"<div class='seg' style='left:{left:.2f}%;width:{width:.2f}%;"
        f"--c:{colours[item['label']]};color:{_ink(colours[item['label']])}' "
        f"title='{escape(tip)}'>{text}</div>"
    )


def _tick(t: float, duration: float) -> str:
    left = 100 * t / duration
    shift = "0" if t == 0 else "-100%" if left > 95 else "-50%"  # keep end labels inside
    text = f"{t:g}s" if duration < 60 else _clock(t)
    return f"<span style='left:{left:.2f}%;transform:translateX({shift})'>{text}</span>"


def _ticks(duration: float) -> list[float]:
    """Round tick positions, at most about 8 along the axis."""
    step = next(
        (s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600) if duration / s <= 8),
        3600 * max(1, round(duration / 3600 / 8)),
    )
    return [float(k * step) for k in range(int(duration // step) + 1)]


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _gallery_section(thumbnails: list[dict], colours: Mapping[str, str]) -> str:
    cards = []
    for t in thumbnails:
        name = t["uri"].rstrip("/").rsplit("/", 1)[-1]
        alt = f"{t['label']} at {t['frame_time_s']:.2f} s in {name}"
        picture = (
            f"<img src='{t['image']}' alt='{escape(alt)}'>"
            if "image" in t
            else f"<div class='missing'>{escape(t.get('error', 'no frame'))}</div>"
        )
        cards.append(
            f"<figure class='thumb'>{picture}<figcaption><div class='top'>"
            f"{_chip(t['label'], colours)}<span class='score'>{t['score']:.2f}</span></div>"
            f"<div class='where' title='{escape(t['uri'])}'>{escape(name)} · "
            f"{t['frame_time_s']:.2f} s · {escape(t['model'])}</div></figcaption></figure>"
        )
    hint = (
        "Best-scoring detections, one per label and video first; frames cut from the source videos."
    )
    body = (
        f"<div class='gallery'>{''.join(cards)}</div>"
        if cards
        else "<p class='empty'>No detections.</p>"
    )
    return _card("Detections", hint, body)


def _failures_section(videos: list[dict]) -> str:
    failed = [v for v in videos if v["status"] == "failed"]
    if not failed:
        return _card("Failed videos", "Latest status of each video.", "<p class='empty'>None.</p>")
    rows = "".join(
        f"<tr><td class='mono break'>{escape(v['uri'])}</td>"
        f"<td><code>{escape(v['error'] or '')}</code></td>"
        f"<td class='mono muted nowrap'>{escape(v['run_id'] or '')}</td>"
        f"<td class='nowrap'>{escape(str(v['date']))}</td></tr>"
        for v in failed[:_MAX_FAILURES]
    )
    table = f"<table><tr><th>Video</th><th>Error</th><th>Run</th><th>Date</th></tr>{rows}</table>"
    hint = "Latest status of each video: stage and message."
    if len(failed) > _MAX_FAILURES:
        hint += f" The first {_MAX_FAILURES}; all: SELECT uri, error FROM videos WHERE status = 'failed'."
    return _card(f"Failed videos ({len(failed):,})", hint, table)


def _runs_section(runs: list[dict], note: str) -> str:
    if not runs:
        return _card("Runs", note, "<p class='empty'>No runs.</p>")
    rows = []
    for r in runs:
        counts = r.get("counts") if isinstance(r.get("counts"), dict) else r
        status = str(r.get("status") or "")
        cls = {"ok": "ok", "failed": "bad", "unreadable": "bad"}.get(status, "")
        cells = [
            counts.get(k) for k in ("videos", "ok", "failed", "skipped", "clips", "detections")
        ]
        badge = f"<span class='badge {cls}'>{escape(status)}</span>" if status else ""
        rows.append(
            f"<tr><td class='mono nowrap'>{escape(str(r.get('run_id', '')))}</td>"
            f"<td>{badge}</td><td class='nowrap'>{_when(r.get('started_at'))}</td>"
            f"<td class='num'>{_took(r)}</td>"
            + "".join(f"<td class='num'>{_number(c)}</td>" for c in cells)
            + f"<td class='muted notes'>{escape(_run_notes(r))}</td></tr>"
        )
    head = "".join(
        f"<th class='num'>{h}</th>"
        for h in ("Took", "Videos", "Ok", "Failed", "Skipped", "Clips", "Detections")
    )
    head = f"<tr><th>Run</th><th>Status</th><th>Started</th>{head}<th>Notes</th></tr>"
    table = f"<table>{head}{''.join(rows)}</table>"
    return _card("Runs", note or "From the _runs/ records, newest first.", table)


def _run_notes(record: dict) -> str:
    """Why a record is unreadable, else failures by stage and stage timings."""
    if record.get("error"):
        return str(record["error"])
    notes = []
    failures = record.get("failures")
    if isinstance(failures, dict) and failures:
        notes.append("failed in " + ", ".join(f"{k} ×{v}" for k, v in sorted(failures.items())))
    timings = record.get("timings")
    if isinstance(timings, dict):
        notes += [f"{k} {v:.1f}s" for k, v in timings.items() if isinstance(v, (int, float))]
    return " · ".join(notes)


def _number(value: Any) -> str:
    """Counts from run records written by another program: format what is a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else escape(str(value))


def _when(value: Any) -> str:
    if value in (None, ""):
        return ""
    parsed = _parse_time(value)
    return parsed.strftime("%Y-%m-%d %H:%M:%S") if parsed else escape(str(value))


def _took(record: dict) -> str:
    start, end = _parse_time(record.get("started_at")), _parse_time(record.get("finished_at"))
    if not start or not end:
        return ""
    return _clock((end - start).total_seconds())


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _card(title: str, hint: str, body: str) -> str:
    return (
        f"<section class='card'><h2>{escape(title)}</h2>"
        f"<p class='hint'>{escape(hint)}</p>{body}</section>"
    )
