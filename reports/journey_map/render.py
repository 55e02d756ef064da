"""The journey map written out: one self-contained HTML page (plotly, its JavaScript embedded: no network)
with a segment selector, a PNG of each chart (matplotlib), the frames as CSV and summary.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reports.html import esc, page, png, table
from reports.journey_map.charts import charts
from reports.journey_map.figures import Chart
from reports.journey_map.frames import MapFrames
from reports.journey_map.panel import ALL, OUTCOMES


@dataclass(frozen=True)
class MapPaths:
    """What `JourneyMap.write` wrote."""

    folder: Path
    html: Path
    pngs: dict[str, Path]
    csvs: dict[str, Path]
    summary: Path


def _table(frame: pd.DataFrame, columns: dict[str, str], percent: set[str]) -> str:
    """An HTML table with one body row per (segment, stage); rows of other segments start hidden."""
    rows, attrs = [], []
    for _, r in frame.iterrows():
        cells = []
        for col in columns:
            v = r[col]
            if isinstance(v, float | np.floating):
                text = "" if not np.isfinite(v) else f"{v:.1%}" if col in percent else f"{v:.1f}"
            else:
                text = f"{v:,}" if isinstance(v, int | np.integer) else str(v)
            cells.append(text)
        rows.append(cells)
        hidden = "" if r["segment"] == ALL else " hidden"
        attrs.append(f' data-segment="{esc(r["segment"])}"{hidden}')
    return table(list(columns.values()), rows, attrs)


_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1100px;
color:#222;padding:0 16px}
h1{margin-bottom:4px} .meta{color:#555;font-size:14px} .caption{color:#444;font-size:14px;max-width:900px}
section{margin:28px 0} .chart{border:1px solid #eee;border-radius:6px}
.selector{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #ddd;z-index:10}
table{border-collapse:collapse;font-size:13px} th,td{border-bottom:1px solid #eee;padding:4px 8px;
text-align:right} th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}
.notes li{color:#555;font-size:14px}
"""

_SCRIPT = """
(function () {
  var select = document.getElementById('segment');
  if (!select) { return; }
  function show(segment) {
    document.querySelectorAll('.chart[data-by-segment] .plotly-graph-div').forEach(function (div) {
      if (!div.data) { return; }
      Plotly.restyle(div, {visible: div.data.map(function (t) { return t.meta === segment; })});
    });
    document.querySelectorAll('tr[data-segment]').forEach(function (row) {
      row.hidden = row.dataset.segment !== segment;
    });
  }
  select.addEventListener('change', function () { show(select.value); });
  // A link can open the page on one segment: journey_map.html#segment=web
  var wanted = decodeURIComponent((window.location.hash.match(/segment=([^&]*)/) || [])[1] || '');
  if (wanted && Array.prototype.some.call(select.options, function (o) { return o.value === wanted; })) {
    select.value = wanted;
    show(wanted);
  }
})();
"""


def _html(journey: MapFrames, made: list[Chart]) -> str:
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    meta = journey.meta
    title = meta.get("title", "Journey map")
    facts = [
        f"model: {meta.get('model', 'unknown')}",
        f"features: {meta.get('features', 'given frame')}",
        f"events: {meta.get('events_path', 'given frame' if meta.get('events') else 'none')}",
        f"{meta['customers']:,} customers, {meta['rows']:,} customer-cutoffs, {meta['events']:,} events",
        f"made {meta.get('created_at', '')}",
    ]
    parts = [
        f"<h1>{esc(title)}</h1>",
        f"<p class='meta'>{' &middot; '.join(esc(f) for f in facts)}</p>",
        "<section id='headlines'><h2>Headlines</h2><ul>",
        *(f"<li>{esc(line)}</li>" for line in journey.headlines),
        "</ul>",
    ]
    if meta.get("notes"):
        parts += ["<ul class='notes'>", *(f"<li>{esc(n)}</li>" for n in meta["notes"]), "</ul>"]
    parts.append("</section>")
    if len(journey.segments) > 1:
        options = "".join(f"<option value='{esc(s)}'>{esc(s)}</option>" for s in journey.segments)
        parts.append(
            f"<div class='selector'><label>Segment ({esc(meta['segmentation'])}): "
            f"<select id='segment'>{options}</select></label> "
            "<span class='meta'>switches every chart and table below "
            "but the side-by-side comparison</span></div>"
        )
    config = {"displaylogo": False, "responsive": True}
    for chart in made:
        div = pio.to_html(
            chart.figure, include_plotlyjs=False, full_html=False, div_id=f"chart-{chart.key}", config=config
        )
        flag = " data-by-segment='1'" if chart.by_segment else ""
        parts += [
            f"<section id='{chart.key}'><h2>{esc(chart.title)}</h2>",
            f"<p class='caption'>{esc(chart.caption)}</p>",
            f"<div class='chart' data-chart='{chart.key}'{flag}>{div}</div></section>",
        ]
    k = meta["k"]
    friction_cols = {
        "segment": "segment",
        "stage": "stage",
        "customers": "customer-steps",
        "advance": "advance",
        "stall": "stall",
        "back": "back",
        "drop": "drop",
        "exit": "leave",
        "next_1": "next, 1 step",
        "next_k": f"next, {k} steps",
        "advance_k": f"any later, {k} steps",
    }
    time_cols = {
        "segment": "segment",
        "stage": "stage",
        "runs": "runs",
        "median_days": "median days",
        "p75_days": "p75 days",
        "mean_days": "mean days",
        "censored": "cut by the edges",
    }
    parts += [
        "<section id='tables'><h2>Friction in numbers</h2>",
        _table(journey.friction, friction_cols, set(OUTCOMES) | {"next_1", "next_k", "advance_k"}),
        "<h2>Time in stage in numbers</h2>",
        _table(journey.time_in_stage, time_cols, {"censored"}),
        "<p class='caption'>The frames behind every chart are beside this page as CSV (mix.csv, "
        "transitions.csv, touchpoints.csv, friction.csv, time_in_stage.csv), each chart as a PNG, and "
        "summary.json holds these headlines and settings.</p></section>",
        f"<script type='text/javascript'>{_SCRIPT}</script>",
    ]
    # Plotly's JavaScript is embedded once: the page opens without any network.
    plotly_js = f"<script type='text/javascript'>{get_plotlyjs()}</script>"
    return page(title, _STYLE, parts, head=[plotly_js])


def write_map(journey: MapFrames, out_dir: Path) -> MapPaths:
    """Writes journey_map.html (self-contained), a PNG per chart, the frames as CSV and summary.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = charts(journey)
    pngs: dict[str, Path] = {}
    for chart in made:
        if chart.png is not None:
            pngs[chart.key] = out_dir / f"{chart.key}.png"
            pngs[chart.key].write_bytes(png(chart.png))
    csvs = {name: out_dir / f"{name}.csv" for name in journey.frames()}
    for name, frame in journey.frames().items():
        frame.to_csv(csvs[name], index=False)
    html_path = out_dir / "journey_map.html"
    html_path.write_text(_html(journey, made), encoding="utf-8")
    summary = out_dir / "summary.json"
    summary.write_text(
        json.dumps(
            {
                "headlines": journey.headlines,
                "meta": journey.meta,
                "segments": journey.segments,
                "charts": [c.key for c in made],
            },
            indent=2,
            default=str,
        )
    )
    return MapPaths(out_dir, html_path, pngs, csvs, summary)
