"""Rewrite the generated results section of a docs page, keeping the prose around it."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, section: str, begin: str, end: str, title: str) -> None:
    """Put `section` (which starts with `begin` and ends with `end`) where the page's old
    section was, or append it; a missing page starts with the heading `title`."""
    text = path.read_text() if path.exists() else f"{title}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
