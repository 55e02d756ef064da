"""What every report draws and writes the same way: matplotlib figures on their own canvas, PNGs, and the
HTML around them (escaping, tables, the page), so that the journey map, the campaign report and the
evaluation plots share one of each.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence

from matplotlib.figure import Figure

PNG_DPI = 110


def figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot, no global backend).

    Nothing touches pyplot's global state or backend, so a report is safe to draw in a server, a test or a
    notebook, and a figure is freed as soon as it is no longer referenced.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png(fig: Figure, dpi: int = PNG_DPI) -> bytes:
    """The figure as PNG bytes (what a report writes beside its page, or embeds in it)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def esc(value: object) -> str:
    """Text (or anything printable) made safe for HTML, quotes included (for attribute values)."""
    return html.escape(str(value))


def img(data: bytes, alt: str) -> str:
    """A PNG embedded in the page as base64: the page opens without any network or side files."""
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{encoded}">'


def table(
    header: Sequence[str], rows: Iterable[Sequence[object]], row_attrs: Iterable[str] | None = None
) -> str:
    """An HTML table of already formatted cells (escaped here).

    Args:
        header: the column titles.
        rows: the body rows, one cell per column.
        row_attrs: raw attributes of each body row (e.g. ` data-segment="web" hidden`), escaped by the
            caller; None: none.
    """
    head = "".join(f"<th>{esc(title)}</th>" for title in header)
    attrs = iter(row_attrs) if row_attrs is not None else None
    body = []
    for row in rows:
        cells = "".join(f"<td>{esc(cell)}</td>" for cell in row)
        body.append(f"<tr{next(attrs) if attrs is not None else ''}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, css: str, body: Iterable[str], *, head: Iterable[str] = ()) -> str:
    """A whole self-contained page: its title, style, extra head elements (e.g. an embedded script) and
    body parts, one per line."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{css}</style>",
        *head,
        "</head><body>",
        *body,
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
