"""HTML of `vidbatch report`: static sections as HTML fragments, the video timelines as data that
the page's own script draws (a page of them at a time, searchable, zoomable), all poured into
report_template.html.

Kept apart from reading the index so the look can change without touching queries or decoding.
Every string from the index goes through `escape` here, or into the page as JSON that the
script only ever sets as text (never as markup).
"""

from __future__ import annotations

import colorsys
import hashlib
import json
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

_MAX_FAILURES = 200  # rows in the failures table; the timelines' status filter finds them all
PAGE_SIZE = 20  # timelines per page


def render_page(
    output_uri: str,
    *,
    videos: list[dict],
    counts: list[dict],
    intervals: list[dict],
    shots: list[dict],
    thumbnails: list[dict],
    runs: list[dict],
    totals: Mapping[str, int],
    colours: Mapping[str, str],
    links: Mapping[str, str],
    link_note: str,
) -> str:
    """The whole page: summary, label counts, timelines, gallery, failures, runs.

    `links` maps a video uri to what a browser opens for it (no entry: no link)."""
    body = "\n".join(
        [
            _summary(videos, totals, counts, runs),
            _counts_section(counts, colours),
            _timelines_section(len(videos), link_note),
            _gallery_section(thumbnails, colours, links),
            _failures_section(videos),
            _runs_section(runs),
        ]
    )
    data = timeline_data(videos, intervals, shots, colours, links)
    template = Template(
        (resources.files("vidbatch.tools") / "report_template.html").read_text("utf-8")
    )
    return template.substitute(
        title=escape(output_uri),
        output_uri=escape(output_uri),
        generated_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        body=body,
        data=script_json(data),
    )


def script_json(value: Any) -> str:
    """JSON safe inside a <script> element: no `<`, `>` or `&` that could end it."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---------------------------------------------------------------- timelines (data)


def timeline_data(
    videos: list[dict],
    intervals: list[dict],
    shots: list[dict],
    colours: Mapping[str, str],
    links: Mapping[str, str],
) -> dict[str, Any]:
    """What the page's script draws: every video (ordered by uri) with its lanes.

    A lane per model for clips (top-1 labels never overlap), one per model and class for
    detections (objects of several classes share a frame), one per shot model. Items are
    [start_s, end_s, label index, max score, rows merged]; shot items [start_s, end_s,
    shot index, transition score]."""
    labels = list(colours)
    index = {label: i for i, label in enumerate(labels)}
    lanes: dict[str, dict[tuple, list[list]]] = {}
    for item in intervals:
        clips = item["source"] == "clips"
        key = (0 if clips else 1, item["model"], "" if clips else item["label"])
        lanes.setdefault(item["uri"], {}).setdefault(key, []).append(
            [
                _num(item["start_s"]),
                _num(item["end_s"]),
                index[item["label"]],
                _num(item["max_score"]),
                int(item["hits"]),
            ]
        )
    for shot in shots:
        key = (2, shot["model"], "")
        lanes.setdefault(shot["uri"], {}).setdefault(key, []).append(
            [
                _num(shot["start_s"]),
                _num(shot["end_s"]),
                int(shot["shot_index"]),
                _num(shot["transition_score"]),
            ]
        )
    out = []
    for video in videos:
        uri = video["uri"]
        found = lanes.get(uri, {})
        ends = [item[1] for items in found.values() for item in items]
        duration = video.get("duration_s") or max(ends, default=0.0) or None
        out.append(
            {
                "uri": uri,
                "name": _name(uri),
                "href": links.get(uri, ""),
                "dur": _num(duration) if duration else None,
                "facts": " · ".join(_facts(video, duration)),
                "status": video.get("status") or "",
                "error": video.get("error") or "",
                "lanes": [
                    {
                        "name": f"{model} · {('clips', label, 'shots')[kind] or label}",
                        "kind": ("clips", "detections", "shots")[kind],
                        "items": items,
                    }
                    for (kind, model, label), items in sorted(found.items())
                ],
            }
        )
    return {
        "labels": labels,
        "colours": [colours[label] for label in labels],
        "inks": [_ink(colours[label]) for label in labels],
        "page_size": PAGE_SIZE,
        "videos": out,
    }


def _facts(video: dict, duration: float | None) -> list[str]:
    facts = [_clock(duration)] if duration else []
    if video.get("width") and video.get("height"):
        facts.append(f"{video['width']}×{video['height']}")
    if video.get("codec"):
        facts.append(str(video["codec"]))
    return facts


def _num(value: Any) -> float | None:
    """A float rounded for the page (ms), None for missing or non-finite values."""
    if value is None:
        return None
    value = float(value)
    return round(value, 3) if value == value and abs(value) != float("inf") else None


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1] or uri


# ---------------------------------------------------------------- colours


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


# ---------------------------------------------------------------- static sections


def _summary(
    videos: list[dict], totals: Mapping[str, int], counts: list[dict], runs: list[dict]
) -> str:
    status = [v["status"] for v in videos]
    seconds = sum(v["duration_s"] or 0 for v in videos if v["status"] == "ok")
    models = sorted({r["model"] for r in counts})
    stats = [
        ("Videos", f"{len(videos):,}", ""),
        ("Indexed ok", f"{status.count('ok'):,}", "ok"),
        ("Failed", f"{status.count('failed'):,}", "bad" if "failed" in status else ""),
        ("Video time", _clock(seconds), ""),
        ("Clip rows", f"{totals['clips']:,}", ""),
        ("Detections", f"{totals['detections']:,}", ""),
    ]
    if totals.get("shots"):
        stats.append(("Shots", f"{totals['shots']:,}", ""))
    stats.append(("Models", f"{len(models)}", ""))
    cards = "".join(
        f'<div class="stat {cls}"><div class="v">{value}</div><div class="k">{key}</div></div>'
        for key, value, cls in stats
    )
    note = (
        "The index as it is now: one row per video, its latest result. A video a nightly run "
        "skipped (unchanged, indexed already) counts as indexed."
    )
    last = next((r for r in runs if r.get("finished_at")), None)
    if last is not None:
        note += (
            f" Last finished run {escape(str(last.get('run_id') or ''))}: "
            f"{_count(last.get('listed'))} listed, {_count(last.get('ok'))} indexed, "
            f"{_count(last.get('skipped'))} skipped as unchanged, "
            f"{_count(last.get('failed'))} failed."
        )
    return f'<div class="stats">{cards}</div><p class="lead">{note}</p>'


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


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
            f"<span class='fill'><i style='width:{width:.1f}%'></i></span>"
            f"<span class='n'>{r['rows']:,}</span></div></td>"
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


def _timelines_section(count: int, link_note: str) -> str:
    hint = (
        "Where each label appears along each video: merged clips and detection frames, one "
        "lane per model's clips, one per detected class, one per shot model. Search by name, "
        "filter by label or status, page through all videos; zoom a long timeline with + "
        "and −. Each marked interval plays the video from its start (a #t= media fragment). "
        + link_note
    )
    controls = (
        "<div class='controls'>"
        "<input id='vb-search' type='search' placeholder='Search videos by name or URI' "
        "aria-label='Search videos by name or URI'>"
        "<select id='vb-label' aria-label='Only videos with this label'>"
        "<option value=''>any label</option></select>"
        "<select id='vb-status' aria-label='Only videos with this status'>"
        "<option value=''>any status</option><option value='ok'>ok</option>"
        "<option value='failed'>failed</option></select>"
        "<span id='vb-count' class='muted'></span></div>"
    )
    pager = (
        "<div class='pager'><button type='button' id='vb-prev'>← Previous</button>"
        "<span id='vb-page' class='muted'></span>"
        "<button type='button' id='vb-next'>Next →</button></div>"
    )
    body = (
        f"{controls}<div id='vb-videos' data-total='{count}'></div>{pager}"
        "<noscript><p class='empty'>The timelines are drawn by the page's own script; "
        "allow JavaScript for this file to see them.</p></noscript>"
    )
    return _card(f"Timelines ({count:,} videos)", hint, body, section_id="timelines")


def _gallery_section(
    thumbnails: list[dict], colours: Mapping[str, str], links: Mapping[str, str]
) -> str:
    cards = []
    for t in thumbnails:
        name = _name(t["uri"])
        alt = f"{t['label']} at {t['frame_time_s']:.2f} s in {name}"
        picture = (
            f"<img src='{t['image']}' alt='{escape(alt)}'>"
            if "image" in t
            else f"<div class='missing'>{escape(t.get('error', 'no frame'))}</div>"
        )
        where = f"{escape(name)} · {t['frame_time_s']:.2f} s · {escape(t['model'])}"
        href = links.get(t["uri"])
        if href:
            target = escape(media_fragment(href, t["frame_time_s"], None), quote=True)
            where = f"<a href='{target}' target='_blank' rel='noopener'>{where}</a>"
        cards.append(
            f"<figure class='thumb'>{picture}<figcaption><div class='top'>"
            f"{_chip(t['label'], colours)}<span class='score'>{t['score']:.2f}</span></div>"
            f"<div class='where' title='{escape(t['uri'])}'>{where}</div></figcaption></figure>"
        )
    hint = (
        "Best-scoring detections, one per label and video first; frames cut from the source "
        "videos (each decode isolated in a child process with a deadline)."
    )
    body = (
        f"<div class='gallery'>{''.join(cards)}</div>"
        if cards
        else "<p class='empty'>No detections.</p>"
    )
    return _card("Detections", hint, body)


def media_fragment(href: str, start: float, end: float | None) -> str:
    """`href#t=START,END` (W3C Media Fragments, seconds); `#t=START` for a single frame."""
    text = f"#t={_seconds(start)}"
    if end is not None and end > start:
        text += f",{_seconds(end)}"
    return href.split("#", 1)[0] + text


def _seconds(value: float) -> str:
    return f"{max(0.0, float(value)):.3f}".rstrip("0").rstrip(".")


def _failures_section(videos: list[dict]) -> str:
    failed = [v for v in videos if v["status"] == "failed"]
    if not failed:
        return _card("Failed videos", "Current status of each video.", "<p class='empty'>None.</p>")
    rows = "".join(
        f"<tr><td class='mono break'>{escape(v['uri'])}</td>"
        f"<td><code>{escape(v['error'] or '')}</code></td>"
        f"<td class='num'>{_number(v.get('attempts'))}</td>"
        f"<td class='mono muted nowrap'>{escape(v['run_id'] or '')}</td>"
        f"<td class='nowrap'>{_when(v.get('processed_at'))}</td></tr>"
        for v in failed[:_MAX_FAILURES]
    )
    table = (
        "<table><tr><th>Video</th><th>Error</th><th class='num'>Attempts</th><th>Run</th>"
        f"<th>When (UTC)</th></tr>{rows}</table>"
    )
    hint = "Current status of each video: stage and message, and failed runs in a row."
    if len(failed) > _MAX_FAILURES:
        hint += (
            f" The first {_MAX_FAILURES}; the timelines' status filter lists all, as does "
            "SELECT uri, error FROM videos WHERE status = 'failed'."
        )
    return _card(f"Failed videos ({len(failed):,})", hint, table)


def _runs_section(runs: list[dict]) -> str:
    note = "From the runs table, newest first: what each run listed, indexed, skipped and failed."
    if not runs:
        return _card("Runs", note, "<p class='empty'>No runs recorded.</p>")
    rows = []
    for r in runs:
        status = str(r.get("status") or "")
        cls = {"ok": "ok", "failed": "bad"}.get(status, "")
        cells = [r.get(k) for k in ("listed", "ok", "failed", "skipped")]
        cells += [r.get(k) for k in ("clips", "detections", "shots")]
        badge = f"<span class='badge {cls}'>{escape(status)}</span>" if status else ""
        notes = _run_notes(r)
        rows.append(
            f"<tr class='{'has-notes' if notes else ''}'>"
            f"<td class='mono nowrap'>{escape(str(r.get('run_id', '')))}</td>"
            f"<td>{badge}</td><td class='nowrap'>{_when(r.get('started_at'))}</td>"
            f"<td class='num'>{_took(r)}</td>"
            + "".join(f"<td class='num'>{_number(c)}</td>" for c in cells)
            + "</tr>"
        )
        if notes:  # a line of its own under the run: the table stays narrow
            rows.append(f"<tr class='notes'><td colspan='11'>{escape(notes)}</td></tr>")
    head = "".join(
        f"<th class='num'>{h}</th>"
        for h in ("Took", "Listed", "Indexed", "Failed", "Skipped", "Clips", "Detections", "Shots")
    )
    head = f"<tr><th>Run</th><th>Status</th><th>Started (UTC)</th>{head}</tr>"
    table = f"<div class='wide'><table>{head}{''.join(rows)}</table></div>"
    return _card("Runs", note + " Skipped: unchanged and indexed already.", table)


def as_dict(value: Any) -> dict:
    """A map column as a dict: Arrow gives maps as lists of (key, value) pairs."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list):
        return {k: v for k, v in value}
    return {}


def _run_notes(record: dict) -> str:
    """The error of a failed run, what was planned, failures by stage, stage timings."""
    notes = [str(record["error"])] if record.get("error") else []
    planned = as_dict(record.get("planned"))
    if planned:
        notes.append("planned " + ", ".join(f"{v} {k}" for k, v in sorted(planned.items())))
    failures = as_dict(record.get("failures"))
    if failures:
        notes.append("failed in " + ", ".join(f"{k} ×{v}" for k, v in sorted(failures.items())))
    timings = as_dict(record.get("timings"))
    notes += [f"{k} {v:.1f}s" for k, v in timings.items() if isinstance(v, (int, float))]
    models = as_dict(record.get("models"))
    if models:
        notes.append("models " + ", ".join(f"{k}@{v}" for k, v in sorted(models.items())))
    return " · ".join(notes)


def _number(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else escape(str(value))


def _when(value: Any) -> str:
    if value in (None, ""):
        return ""
    parsed = _parse_time(value)
    return parsed.strftime("%Y-%m-%d %H:%M:%S") if parsed else escape(str(value))


def _took(record: dict) -> str:
    if isinstance(record.get("wall_s"), (int, float)):
        return _clock(record["wall_s"])
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


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _card(title: str, hint: str, body: str, *, section_id: str = "") -> str:
    ident = f" id='{section_id}'" if section_id else ""
    return (
        f"<section class='card'{ident}><h2>{escape(title)}</h2>"
        f"<p class='hint'>{escape(hint)}</p>{body}</section>"
    )
