"""Rates, revenue and lifts against the control group per group of decisions, with their intervals.

The lift (`campaign_results`): treated decisions of a group (all non-control decisions, including those
where the policy itself chose no_send: the engine is judged as a whole) against the control decisions of
the same stage and week, and, where the log records what the policy would have sent a control customer
(`intended_action`), of the same intended action. Without `intended_action` a per-action lift would compare
the customers the policy picked for an action with all control customers and mix the policy's targeting
into the "lift", so it is left out and only lifts over all actions (overall, per stage, per week) are given.

Intervals (95 % by default):

* conversion: Newcombe's hybrid score interval for a difference of proportions (Newcombe 1998, method 10),
  built from the two Wilson intervals. It has close to nominal coverage for the small control cells and
  low conversion rates of a campaign report, where the Wald interval undercovers and collapses to zero
  width at 0 or 100 %; it is closed form, so a test can check it by hand. It treats decisions as
  independent: with several decisions per customer it is somewhat too narrow, so the customer bootstrap
  interval of the same difference is reported beside it (`lift_conversion_boot_low/high`).
* revenue per decision: percentile bootstrap resampling customers, not decisions, within each arm.
  Control membership is drawn per customer and a customer's decisions share their spending habits, so
  customers are the independent units; resampling decisions would treat a big spender's ten decisions as
  ten independent draws and give intervals that are too narrow. Revenue is heavy-tailed, which is why it
  gets a bootstrap rather than a normal interval. With few customers in a cell the percentile interval is
  itself too narrow; read small cells with care.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from reports.campaign.log import LOG_COLUMNS, load_decision_log
from stats import newcombe_interval

DEFAULT_BY: tuple[str, ...] = ("action", "stage", "week")
ALL_GROUPS = "all"  # the value of a grouping key in the rows that do not split by it
_MAX_DRAWS = 2_000_000  # bootstrap indices drawn at once (16 MB), whatever the size of a group


def _clusters(group: pd.DataFrame) -> np.ndarray:
    """(customers, 3): decisions, conversions and revenue per customer of a group."""
    codes, uniques = pd.factorize(group["customer_id"])
    k = len(uniques)
    return np.stack(
        [
            np.bincount(codes, minlength=k).astype(np.float64),
            np.bincount(codes, weights=group["purchased"].to_numpy(np.float64), minlength=k),
            np.bincount(codes, weights=group["revenue"].to_numpy(np.float64), minlength=k),
        ],
        axis=1,
    )


def _bootstrap_rates(clusters: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, 2): conversion and revenue per decision on resamples of the customers (with replacement)."""
    m = len(clusters)
    columns = [np.ascontiguousarray(clusters[:, j]) for j in range(3)]  # np.take on a column is fastest
    out = np.empty((n_boot, 2))
    step = max(1, _MAX_DRAWS // max(m, 1))
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        idx = rng.integers(0, m, size=(b, m))
        decisions, conversions, revenue = (np.take(c, idx).sum(axis=1) for c in columns)
        out[start : start + b, 0] = conversions / decisions
        out[start : start + b, 1] = revenue / decisions
    return out


@dataclass(frozen=True)
class CampaignResults:
    """Rates and lifts per group, at several levels of grouping.

    Attributes:
        table: one row per (level, group). `level` is "overall", each key of `by` alone, and all keys of
            `by` together ("action_stage_week"); the key columns hold the group's values, "all" where the
            level does not split by them. Treated decisions (not in the control group): `decisions`,
            `customers`, `sends`, `opens`, `clicks`, `unsubscribes` (of sends), `conversions`, `revenue`,
            `open_rate`, `click_rate`, `unsubscribe_rate` (per send), `conversion_rate`,
            `revenue_per_decision` (per decision). The control decisions they are compared with:
            `control_decisions`, `control_customers`, `control_conversions`, `control_conversion_rate`,
            `control_revenue`, `control_revenue_per_decision`. Lift per decision: `lift_conversion`
            with `lift_conversion_low/high` (Newcombe) and `lift_conversion_boot_low/high` (customer
            bootstrap); `lift_revenue_per_decision` with `lift_revenue_low/high` (customer bootstrap);
            totals `incremental_conversions`, `incremental_revenue` (+ `_low/_high`) = lift x decisions.
            Lifts are NaN where there is nothing to compare with.
        by: the grouping keys.
        per_action_lift: every control decision records its intended action, so lifts per action exist.
        n_boot: bootstrap resamples.
        seed: random seed of the resamples.
        alpha: 1 - coverage of the intervals.
        period: first and last decision time (ISO strings).
    """

    table: pd.DataFrame
    by: tuple[str, ...]
    per_action_lift: bool
    n_boot: int
    seed: int
    alpha: float
    period: tuple[str, str]

    def level(self, name: str) -> pd.DataFrame:
        """The rows of one level ("overall", "action", "week", "action_stage_week", ...)."""
        rows = self.table[self.table["level"] == name]
        if rows.empty and name not in set(self.table["level"]):
            raise KeyError(f"no level {name!r}; levels: {', '.join(self.levels)}")
        return rows.reset_index(drop=True)

    @property
    def levels(self) -> list[str]:
        return list(dict.fromkeys(self.table["level"]))

    @property
    def overall(self) -> pd.Series:
        """The overall row: all treated decisions against all control decisions."""
        return self.level("overall").iloc[0]

    def headline(self) -> dict[str, float]:
        """The overall figures a marketer reads first (also the MLflow metrics of `log_report`)."""
        row = self.overall
        names = {
            "decisions": "decisions",
            "sends": "sends",
            "control_decisions": "control/decisions",
            "open_rate": "rates/open",
            "click_rate": "rates/click",
            "conversion_rate": "rates/conversion",
            "unsubscribe_rate": "rates/unsubscribe",
            "revenue": "revenue/total",
            "revenue_per_decision": "revenue/per_decision",
            "control_conversion_rate": "control/conversion",
            "control_revenue_per_decision": "control/revenue_per_decision",
            "lift_conversion": "lift/conversion",
            "lift_conversion_low": "lift/conversion_low",
            "lift_conversion_high": "lift/conversion_high",
            "lift_revenue_per_decision": "lift/revenue_per_decision",
            "lift_revenue_low": "lift/revenue_per_decision_low",
            "lift_revenue_high": "lift/revenue_per_decision_high",
            "incremental_conversions": "incremental/conversions",
            "incremental_revenue": "incremental/revenue",
        }
        return {metric: float(row[column]) for column, metric in names.items()}


def campaign_results(
    log: pd.DataFrame,
    by: Sequence[str] = DEFAULT_BY,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> CampaignResults:
    """Per group of decisions: rates, revenue, and the lift against the control group with intervals.

    Treated decisions of a group are compared with the control decisions that share the group's values of
    every key but `action`, and whose `intended_action` is the group's action when `action` is a key. The
    key `action` needs the intended action of every control decision; without it lifts per action are NaN
    (see the module docstring). The overall row compares all treated with all control decisions.

    Args:
        log: a frame of `load_decision_log` (a raw log is normalised by it first).
        by: grouping keys, columns of the log ("action", "stage", "week", or others such as "channel").
        n_boot: bootstrap resamples of customers (0: no bootstrap intervals).
        seed: random seed; each group draws from its own stream derived from it and its key, so a group's
            interval does not depend on which other groups are computed.
        alpha: 1 - coverage of every interval.

    Returns:
        The results (see `CampaignResults`).
    """
    if not set(LOG_COLUMNS) <= set(log.columns):
        log = load_decision_log(log)
    by = tuple(by)
    missing = [k for k in by if k not in log.columns]
    if missing:
        raise ValueError(f"campaign_results: grouping key(s) {', '.join(missing)} are not columns of the log")
    treated = log[~log["control"]]
    control = log[log["control"]]
    per_action_lift = len(control) > 0 and bool(control["intended_action"].notna().all())

    levels: list[tuple[str, ...]] = [(), *((k,) for k in by)]
    if len(by) > 1:
        levels.append(by)
    rows: list[dict[str, Any]] = []
    for keys in levels:
        name = "_".join(keys) or "overall"
        comparable = len(control) > 0 and ("action" not in keys or per_action_lift)
        control_cells: dict[tuple[Any, ...], pd.DataFrame] = {}
        if comparable and keys:
            match = ["intended_action" if k == "action" else k for k in keys]
            control_cells = {
                (k if isinstance(k, tuple) else (k,)): g
                for k, g in control.groupby(match, sort=False, dropna=False)
            }
        groups: Iterable[tuple[Any, pd.DataFrame]] = (
            treated.groupby(list(keys), sort=True, dropna=False) if keys else [((), treated)]
        )
        for key, group in groups:
            key = key if isinstance(key, tuple) else (key,)
            row: dict[str, Any] = {
                "level": name,
                **dict.fromkeys(by, ALL_GROUPS),
                **dict(zip(keys, key, strict=True)),
            }
            cell = (control if not keys else control_cells.get(key)) if comparable else None
            rng = np.random.default_rng([seed, zlib.crc32(repr((name, key)).encode())])
            row.update(_group_figures(group, cell, n_boot, alpha, rng))
            rows.append(row)
    table = pd.DataFrame(rows)
    ts = log["ts"]
    period = (ts.min().isoformat(), ts.max().isoformat()) if len(log) else ("", "")
    return CampaignResults(table, by, per_action_lift, n_boot, seed, alpha, period)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def _group_figures(
    group: pd.DataFrame, control: pd.DataFrame | None, n_boot: int, alpha: float, rng: np.random.Generator
) -> dict[str, float]:
    sent = group["sent"].to_numpy()
    n = len(group)
    sends = int(sent.sum())
    conversions = int(group["purchased"].sum())
    revenue = float(group["revenue"].sum())
    out: dict[str, float] = {
        "decisions": n,
        "customers": group["customer_id"].nunique(),
        "sends": sends,
        "opens": int((group["opened"].to_numpy() & sent).sum()),
        "clicks": int((group["clicked"].to_numpy() & sent).sum()),
        "unsubscribes": int((group["unsubscribed"].to_numpy() & sent).sum()),
        "conversions": conversions,
        "revenue": revenue,
    }
    out["open_rate"] = _ratio(out["opens"], sends)
    out["click_rate"] = _ratio(out["clicks"], sends)
    out["unsubscribe_rate"] = _ratio(out["unsubscribes"], sends)
    out["conversion_rate"] = _ratio(conversions, n)
    out["revenue_per_decision"] = _ratio(revenue, n)

    nan = float("nan")
    m = 0 if control is None else len(control)
    c_conv = 0 if control is None else int(control["purchased"].sum())
    c_rev = 0.0 if control is None else float(control["revenue"].sum())
    out.update(
        control_decisions=m,
        control_customers=0 if control is None else control["customer_id"].nunique(),
        control_conversions=c_conv,
        control_conversion_rate=_ratio(c_conv, m),
        control_revenue=c_rev,
        control_revenue_per_decision=_ratio(c_rev, m),
    )
    lift = newcombe_interval(conversions, n, c_conv, m, alpha)
    rev_lift = out["revenue_per_decision"] - out["control_revenue_per_decision"]
    boot_conv = boot_rev = (nan, nan)
    if control is not None and m > 0 and n > 0 and n_boot > 0:
        draws = _bootstrap_rates(_clusters(group), n_boot, rng) - _bootstrap_rates(
            _clusters(control), n_boot, rng
        )
        q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
        lo_c, hi_c = np.percentile(draws[:, 0], q)
        lo_r, hi_r = np.percentile(draws[:, 1], q)
        boot_conv, boot_rev = (float(lo_c), float(hi_c)), (float(lo_r), float(hi_r))
    out.update(
        lift_conversion=lift.point,
        lift_conversion_low=lift.lo,
        lift_conversion_high=lift.hi,
        lift_conversion_boot_low=boot_conv[0],
        lift_conversion_boot_high=boot_conv[1],
        lift_revenue_per_decision=rev_lift,
        lift_revenue_low=boot_rev[0],
        lift_revenue_high=boot_rev[1],
        incremental_conversions=lift.point * n,
        incremental_revenue=rev_lift * n,
        incremental_revenue_low=boot_rev[0] * n,
        incremental_revenue_high=boot_rev[1] * n,
    )
    return out


def format_headline(results: CampaignResults) -> str:
    """The overall numbers in a few lines, for the command line."""
    r = results.overall
    pct = 100 * (1 - results.alpha)
    lines = [
        f"period       {results.period[0][:10]} .. {results.period[1][:10]};"
        f" decisions {int(r['decisions']):,} (sends {int(r['sends']):,}),"
        f" control group {int(r['control_decisions']):,}",
        f"e-mail       open {percent(r['open_rate'])}, click {percent(r['click_rate'])},"
        f" unsubscribe {percent(r['unsubscribe_rate'], 2)} per send",
    ]
    if np.isnan(r["lift_conversion"]):
        lines.append(
            f"conversion   {percent(r['conversion_rate'])}; no lift: it needs treated and control decisions"
        )
        return "\n".join(lines)
    lines += [
        f"conversion   {percent(r['conversion_rate'])} vs control {percent(r['control_conversion_rate'])}:"
        f" lift {points(r['lift_conversion'])} [{pct:.0f}% CI {points(r['lift_conversion_low'])},"
        f" {points(r['lift_conversion_high'])}] (Newcombe); {r['incremental_conversions']:+,.1f} conversions",
        f"revenue      {r['revenue_per_decision']:,.2f} per decision vs control"
        f" {r['control_revenue_per_decision']:,.2f}: lift {r['lift_revenue_per_decision']:+,.2f}"
        f" [{pct:.0f}% CI {r['lift_revenue_low']:+,.2f}, {r['lift_revenue_high']:+,.2f}]"
        f" (customer bootstrap); incremental revenue {r['incremental_revenue']:+,.2f}",
    ]
    return "\n".join(lines)


def percent(x: float, digits: int = 1) -> str:
    """A share as a percentage ("n/a" for NaN)."""
    return "n/a" if x != x else f"{100 * x:.{digits}f}%"


def points(x: float) -> str:
    """A difference of shares in signed percentage points ("n/a" for NaN)."""
    return "n/a" if x != x else f"{100 * x:+.2f} pp"


def lift_rows(results: CampaignResults, level: str) -> pd.DataFrame:
    """The rows of a level that have a lift (none where the level is absent)."""
    rows = results.level(level) if level in results.levels else pd.DataFrame()
    return rows[rows["lift_conversion"].notna()] if len(rows) else rows
