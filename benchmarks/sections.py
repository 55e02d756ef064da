"""BENCHMARKS.md is written by several benchmarks, each between its own pair of markers."""

from __future__ import annotations

from pathlib import Path


def update_section(path: Path, section: str, start: str, end: str) -> None:
    """Writes `section` (which begins with `start` and ends with `end`) into `path`, keeping the rest.

    The file is read right before it is written, so sections that other benchmarks wrote meanwhile are
    kept; without the markers the section is appended at the end.
    """
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
