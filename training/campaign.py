"""Campaign results: what the engine's e-mails did, and what they earned beyond the control group.

A marketer asks two questions of a campaign: how did the messages do (sends, open, click, conversion and
unsubscribe rates, revenue) and did they earn their keep, that is how many conversions and how much revenue
would not have happened without them. The second question needs the control group: a stable random share
of customers who are sent nothing (`serving.scoring`, `features.simulate.SimConfig.control_share`). Because
membership is random across customers, the control decisions of a stage and week show what the treated
decisions of that stage and week would have done without e-mails, and the difference is the lift.

Inputs (`load_decision_log`):

* the service's export (`journey decisions export`, `serving.store.EXPORT_COLUMNS`): one row per decision
  with its outcomes (delivered, opened, clicked, purchased, unsubscribed, revenue) as the e-mail platform
  reported them, `control` and, where the service logs it, `intended_action`;
* a simulated shop (`journey simulate`): `decisions.parquet` and its events. Outcomes are derived from the
  events (`outcomes_from_events`) with the simulator's own semantics: e-mail reactions carry the decision
  id as `campaign_id`; a decision converts when the customer buys within `window_days` of it, the half-open
  interval [ts, ts + window_days), which for the simulator's 06:00 decisions and 07:00 .. 23:59 purchases
  is exactly its outcome days d .. d + outcome_days - 1, so `purchased` equals `truth.converted`.

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

import base64
import html
import io
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
from matplotlib.figure import Figure

from features.schema import Action, EventType
from stats import newcombe_interval

__all__ = [
    "DEFAULT_BY",
    "LOG_COLUMNS",
    "REQUIRED_COLUMNS",
    "CampaignResults",
    "ReportFiles",
    "campaign_results",
    "format_headline",
    "load_decision_log",
    "log_report",
    "outcomes_from_events",
    "plot_lift_by_action",
    "plot_rates_by_action",
    "plot_revenue",
    "plot_weekly",
    "write_report",
]

NO_SEND = Action.NO_SEND.value
DEFAULT_BY: tuple[str, ...] = ("action", "stage", "week")
REQUIRED_COLUMNS: tuple[str, ...] = ("decision_id", "customer_id", "ts", "action")
OUTCOME_COLUMNS: tuple[str, ...] = ("opened", "clicked", "purchased", "unsubscribed", "revenue")
# The normalised log: these first, then whatever else the input carried (propensity, policy, channel, ...).
LOG_COLUMNS: tuple[str, ...] = (
    "decision_id",
    "customer_id",
    "ts",
    "week",
    "action",
    "intended_action",
    "control",
    "stage",
    "sent",
    "delivered",
    *OUTCOME_COLUMNS,
)
EVENT_COLUMNS: tuple[str, ...] = ("customer_id", "ts", "event_type", "value", "campaign_id")
# E-mail events that answer one decision (matched by campaign_id == decision_id), by outcome.
_EMAIL_OUTCOMES: dict[str, str] = {
    "delivered": EventType.EMAIL_SENT.value,
    "opened": EventType.EMAIL_OPEN.value,
    "clicked": EventType.EMAIL_CLICK.value,
    "unsubscribed": EventType.EMAIL_UNSUBSCRIBE.value,
}
_ALL = "all"  # the value of a grouping key in the rows that do not split by it
_MAX_DRAWS = 2_000_000  # bootstrap indices drawn at once (16 MB), whatever the size of a group


# ----------------------------------------------------------------------------------------------------------
# Loading: one frame from the service's export or a simulated shop
# ----------------------------------------------------------------------------------------------------------


def load_decision_log(
    path_or_frame: str | Path | pd.DataFrame,
    events: str | Path | pd.DataFrame | None = None,
    window_days: float | None = None,
) -> pd.DataFrame:
    """The decision log with its outcomes, normalised to `LOG_COLUMNS` (then any other input columns).

    Args:
        path_or_frame: the service's export (`journey decisions export`, Parquet or CSV), a simulator's
            `decisions.parquet`, a simulated shop's folder, or a frame of either. For a shop folder the
            events default to its `events/`, and `stage` is the simulator's latent stage at the decision
            (from `truth/decisions.parquet`, mapped to the model's stages as `LATENT_TO_STAGE` does), since
            its decision log has no stage of its own.
        events: events following the event contract (a Parquet file or folder, or a frame). When given,
            the outcomes are derived from them (`outcomes_from_events`) and replace any in the log.
        window_days: a decision converts with a purchase in [ts, ts + window_days); only with `events`.
            Default: 7 days, or for a shop folder the simulator's own `outcome_days` (`simulation.json`),
            so that `purchased` is the simulator's `converted`.

    Returns:
        One row per decision: ids and `ts` (UTC); `week` (the ISO week's Monday, "YYYY-MM-DD", UTC);
        `action`; `intended_action` (the action for treated rows; for control rows the policy's draw, or
        None where the log does not say); `control`; `stage` ("unknown" where absent); `sent` (action is not
        no_send); `delivered`, `opened`, `clicked`, `purchased`, `unsubscribed` (bool); `revenue` (0.0
        where none). `attrs["window_days"]`: the window used (None where the log brought its outcomes);
        `attrs["stage_source"]`: "log", "simulator truth (latent stage)" or "none".

    Raises:
        ValueError: a required column is missing (named), or outcomes are missing and no events given.
    """
    frame, shop = _read_log(path_or_frame)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"decision log: missing column(s) {', '.join(missing)}; need {', '.join(REQUIRED_COLUMNS)}"
        )
    window = 7.0 if window_days is None else float(window_days)
    stage_source = "log" if "stage" in frame.columns else "none"
    if shop is not None:
        if events is None and (shop / "events").exists():
            events = shop / "events"
        if window_days is None and (shop / "simulation.json").exists():
            config = json.loads((shop / "simulation.json").read_text()).get("config", {})
            window = float(config.get("outcome_days", window))
        truth = shop / "truth" / "decisions.parquet"
        if "stage" not in frame.columns and truth.exists():
            frame = _with_truth_stage(frame, truth)
            stage_source = "simulator truth (latent stage)"

    frame = frame.reset_index(drop=True)
    out = pd.DataFrame(
        {
            "decision_id": frame["decision_id"].astype(str),
            "customer_id": frame["customer_id"].astype(str),
            "ts": _utc(frame["ts"]),
            "action": frame["action"].astype(str),
        }
    )
    control = _bools(frame["control"]) if "control" in frame.columns else np.zeros(len(frame), dtype=bool)
    out["control"] = control
    given = np.full(len(frame), None, dtype=object)
    if "intended_action" in frame.columns:
        given[:] = [None if pd.isna(v) else str(v) for v in frame["intended_action"]]
    out["intended_action"] = pd.Series(
        np.where(control, given, out["action"].to_numpy(dtype=object)), dtype=object
    )
    out["stage"] = (
        frame["stage"].astype(object).fillna("unknown").astype(str).to_numpy()
        if "stage" in frame
        else "unknown"
    )
    out["sent"] = out["action"] != NO_SEND

    if events is not None:
        if window <= 0:
            raise ValueError(f"window_days must be positive, got {window}")
        derived = outcomes_from_events(out[["decision_id", "customer_id", "ts"]], events, window)
        for name in ("delivered", *OUTCOME_COLUMNS):
            out[name] = derived[name].to_numpy()
    else:
        absent = [c for c in OUTCOME_COLUMNS if c not in frame.columns]
        if absent:
            raise ValueError(
                f"decision log: missing outcome column(s) {', '.join(absent)}; pass the events to derive "
                "them from (`events=`, `journey report --events`)"
            )
        for name in OUTCOME_COLUMNS[:-1]:
            out[name] = _bools(frame[name])
        out["delivered"] = _bools(frame["delivered"]) if "delivered" in frame.columns else out["sent"]
        out["revenue"] = pd.to_numeric(frame["revenue"], errors="coerce").fillna(0.0).to_numpy(np.float64)
    out["week"] = _week_start(out["ts"])

    extra = [c for c in frame.columns if c not in LOG_COLUMNS]
    for name in extra:
        out[name] = frame[name].to_numpy()
    out = out[[*LOG_COLUMNS, *extra]]
    out.attrs["window_days"] = window if events is not None else None
    out.attrs["stage_source"] = stage_source
    return out


def _read_log(path_or_frame: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, Path | None]:
    if isinstance(path_or_frame, pd.DataFrame):
        return path_or_frame.reset_index(drop=True), None
    path = Path(path_or_frame)
    if path.is_dir():
        if not (path / "decisions.parquet").exists():
            raise ValueError(f"{path}: a folder must be a simulated shop with decisions.parquet")
        return pd.read_parquet(path / "decisions.parquet"), path
    if not path.exists():
        raise ValueError(f"{path}: no such decision log")
    if path.suffix == ".csv":
        return pd.read_csv(path), None
    return pd.read_parquet(path), None


def _with_truth_stage(frame: pd.DataFrame, truth: Path) -> pd.DataFrame:
    from features.simulate import LATENT_TO_STAGE

    stages = pd.read_parquet(truth, columns=["decision_id", "stage"])
    stage = stages.set_index("decision_id")["stage"].astype(str).map(LATENT_TO_STAGE)
    return frame.assign(stage=frame["decision_id"].astype(str).map(stage).to_numpy())


def _utc(values: pd.Series) -> pd.Series:
    """Timestamps as UTC: naive times are taken to be UTC already (the event contract's clock). Strings
    may mix precisions ("06:00:00" beside "05:59:59.999999"), as a CSV export does."""
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = pd.to_datetime(values, utc=True)
    else:
        try:
            ts = pd.to_datetime(values, utc=True, format="ISO8601")
        except ValueError:
            ts = pd.to_datetime(values, utc=True, format="mixed")
    return ts.astype("datetime64[us, UTC]")


def _bools(values: pd.Series) -> np.ndarray:
    """A bool column from bools, 0/1, "True"/"False" strings or nullable values (missing = False)."""
    if values.dtype == object:
        return np.array(
            [False if pd.isna(v) else str(v).strip().lower() in {"true", "1", "1.0", "yes"} for v in values],
            dtype=bool,
        )
    return np.asarray(values.astype("boolean").fillna(False).to_numpy(dtype=bool), dtype=bool)


def _week_start(ts: pd.Series) -> pd.Series:
    """The Monday (UTC) of each timestamp's ISO week, as "YYYY-MM-DD" (sorts as the weeks do)."""
    day = ts.dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
    monday = day - pd.to_timedelta(day.dt.weekday, unit="D")
    return monday.dt.strftime("%Y-%m-%d")


def _read_events(events: str | Path | pd.DataFrame) -> pd.DataFrame:
    """The purchase and e-mail events, with the columns the outcomes need (only those are read)."""
    wanted = [EventType.PURCHASE.value, *_EMAIL_OUTCOMES.values()]
    if isinstance(events, pd.DataFrame):
        frame = events
    else:
        path = Path(events)
        if path.suffix == ".csv":
            frame = pd.read_csv(path)
        else:
            dataset = ds.dataset(str(path), format="parquet")
            names = dataset.schema.names
            frame = dataset.to_table(columns=[c for c in EVENT_COLUMNS if c in names]).to_pandas()
    missing = [c for c in EVENT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"events: missing column(s) {', '.join(missing)}; need {', '.join(EVENT_COLUMNS)}")
    etype = frame["event_type"].astype(str)
    kept = frame[etype.isin(wanted).to_numpy()].reset_index(drop=True)
    return pd.DataFrame(
        {
            "customer_id": kept["customer_id"].astype(str),
            "ts": _utc(kept["ts"]),
            "event_type": kept["event_type"].astype(str),
            "value": pd.to_numeric(kept["value"], errors="coerce").astype(np.float64),
            "campaign_id": kept["campaign_id"].astype(object),
        }
    )


def outcomes_from_events(
    decisions: pd.DataFrame, events: str | Path | pd.DataFrame, window_days: float = 7
) -> pd.DataFrame:
    """Each decision's outcomes, from the events that followed it (the simulator's semantics).

    * delivered / opened / clicked / unsubscribed: an email_sent / email_open / email_click /
      email_unsubscribe event whose `campaign_id` is the decision's id (at any time: an open a week later
      still answers that e-mail);
    * purchased: a purchase by the customer at a time in [ts, ts + window_days), half-open so that with
      decisions every `window_days` each purchase belongs to one decision; revenue: the sum of those
      purchases' `value` (one purchase event per order line; a missing value counts as 0). Where windows
      overlap (decisions closer than `window_days`), a purchase counts for every window it falls in.
      Refunds are not subtracted. Decisions whose window runs past the end of the events are not complete.

    Args:
        decisions: decision_id, customer_id, ts.
        events: the event-contract events (frame, Parquet file or folder).
        window_days: the conversion window.

    Returns:
        A frame aligned with `decisions`: delivered, opened, clicked, unsubscribed, purchased (bool), revenue.
    """
    ev = _read_events(events)
    ids = decisions["decision_id"].astype(str)
    out = pd.DataFrame(index=decisions.index)
    email = ev[ev["campaign_id"].notna()]
    for name, etype in _EMAIL_OUTCOMES.items():
        answered = email.loc[email["event_type"] == etype, "campaign_id"].astype(str)
        out[name] = ids.isin(answered).to_numpy()

    buys = ev.loc[ev["event_type"] == EventType.PURCHASE.value, ["customer_id", "ts", "value"]]
    buys = buys.sort_values(["customer_id", "ts"], kind="stable")
    buys = buys.assign(
        n=buys.groupby("customer_id").cumcount() + 1,
        v=buys["value"].fillna(0.0).groupby(buys["customer_id"]).cumsum(),
    )[["customer_id", "ts", "n", "v"]].sort_values("ts", kind="stable")
    left = pd.DataFrame(
        {
            "row": np.arange(len(decisions)),
            "customer_id": decisions["customer_id"].astype(str).to_numpy(),
            "start": _utc(decisions["ts"]).reset_index(drop=True),
        }
    )
    left["end"] = (left["start"] + pd.Timedelta(days=window_days)).astype(left["start"].dtype)
    totals = {}
    for edge in ("start", "end"):
        # Purchases strictly before the edge: cumulative count and value of the customer's last one.
        side = left.sort_values(edge, kind="stable")
        merged = pd.merge_asof(
            side,
            buys,
            left_on=edge,
            right_on="ts",
            by="customer_id",
            direction="backward",
            allow_exact_matches=False,
        ).sort_values("row")
        totals[edge] = merged[["n", "v"]].fillna(0.0).to_numpy()
    diff = totals["end"] - totals["start"]
    out["purchased"] = diff[:, 0] > 0
    out["revenue"] = np.where(diff[:, 0] > 0, diff[:, 1], 0.0)
    return out


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


# ----------------------------------------------------------------------------------------------------------
# The results
# ----------------------------------------------------------------------------------------------------------


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
                **dict.fromkeys(by, _ALL),
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
        f"e-mail       open {_pct(r['open_rate'])}, click {_pct(r['click_rate'])},"
        f" unsubscribe {_pct(r['unsubscribe_rate'], 2)} per send",
    ]
    if np.isnan(r["lift_conversion"]):
        lines.append(
            f"conversion   {_pct(r['conversion_rate'])}; no lift: it needs treated and control decisions"
        )
        return "\n".join(lines)
    lines += [
        f"conversion   {_pct(r['conversion_rate'])} vs control {_pct(r['control_conversion_rate'])}:"
        f" lift {_pp(r['lift_conversion'])} [{pct:.0f}% CI {_pp(r['lift_conversion_low'])},"
        f" {_pp(r['lift_conversion_high'])}] (Newcombe); {r['incremental_conversions']:+,.1f} conversions",
        f"revenue      {r['revenue_per_decision']:,.2f} per decision vs control"
        f" {r['control_revenue_per_decision']:,.2f}: lift {r['lift_revenue_per_decision']:+,.2f}"
        f" [{pct:.0f}% CI {r['lift_revenue_low']:+,.2f}, {r['lift_revenue_high']:+,.2f}]"
        f" (customer bootstrap); incremental revenue {r['incremental_revenue']:+,.2f}",
    ]
    return "\n".join(lines)


def _pct(x: float, digits: int = 1) -> str:
    return "n/a" if x != x else f"{100 * x:.{digits}f}%"


def _pp(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:+.2f} pp"


# ----------------------------------------------------------------------------------------------------------
# The report: HTML with its plots, CSVs and a summary
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFiles:
    """What `write_report` wrote.

    Attributes:
        html: the self-contained report (plots embedded; opens without a network).
        summary: `summary.json`: the headline metrics and how they were computed.
        tables: level -> CSV of its rows.
        plots: name -> PNG (the same images as in the HTML).
    """

    html: Path
    summary: Path
    tables: dict[str, Path] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)

    def all(self) -> list[Path]:
        return [self.html, self.summary, *self.tables.values(), *self.plots.values()]


def _figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot, no global backend; as in `training.plots`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _lift_rows(results: CampaignResults, level: str) -> pd.DataFrame:
    rows = results.level(level) if level in results.levels else pd.DataFrame()
    return rows[rows["lift_conversion"].notna()] if len(rows) else rows


def plot_rates_by_action(results: CampaignResults) -> Figure:
    """Open, click, unsubscribe (per send) and conversion (per decision) rate per action."""
    rows = results.level("action")
    panels = [
        ("open_rate", "open rate (per send)"),
        ("click_rate", "click rate (per send)"),
        ("unsubscribe_rate", "unsubscribe rate (per send)"),
        ("conversion_rate", "conversion rate (per decision)"),
    ]
    fig = _figure(12, 1.2 + 0.35 * max(len(rows), 2))
    axes = fig.subplots(1, len(panels), sharey=True)
    y = np.arange(len(rows))
    for ax, (column, title) in zip(axes, panels, strict=True):
        ax.barh(y, 100 * rows[column].fillna(0.0), color="tab:blue")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("%")
        if column == "conversion_rate":
            _control_marks(ax, results, rows, "control_conversion_rate", 100.0)
    axes[0].set_yticks(y, rows["action"])
    axes[0].invert_yaxis()
    fig.suptitle("Rates per action (treated decisions)")
    return fig


def _control_marks(ax: Any, results: CampaignResults, rows: pd.DataFrame, column: str, scale: float) -> None:
    """The control group's value beside each action's bar where per-action lifts exist, else one line."""
    if results.per_action_lift:
        ax.scatter(scale * rows[column], np.arange(len(rows)), marker="D", color="tab:red", zorder=3,
                   label="control, same intended action")  # fmt: skip
    elif not np.isnan(results.overall[column]):
        ax.axvline(scale * results.overall[column], color="tab:red", linestyle="--", label="control group")
    else:
        return
    ax.legend(fontsize=8, loc="lower right")


def _lift_panel(ax: Any, labels: list[str], point: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    y = np.arange(len(labels))
    # A percentile interval need not contain its point; error bars cannot be negative.
    err = np.clip(np.nan_to_num(np.vstack([point - lo, hi - point])), 0.0, None)
    ax.errorbar(point, y, xerr=err, fmt="o", capsize=3, color="tab:blue")
    ax.axvline(0.0, color="grey", linewidth=1)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()


def plot_lift_by_action(results: CampaignResults) -> Figure:
    """Incremental conversion (percentage points) per action against the control group, with the Newcombe
    interval as error bars; the overall lift on top."""
    rows = _lift_rows(results, "action")
    overall = results.overall
    labels = ["overall", *rows["action"]] if len(rows) else ["overall"]
    pick = [overall, *(r for _, r in rows.iterrows())]
    point = np.array([100 * r["lift_conversion"] for r in pick])
    lo = np.array([100 * r["lift_conversion_low"] for r in pick])
    hi = np.array([100 * r["lift_conversion_high"] for r in pick])
    fig = _figure(7, 1.4 + 0.35 * len(labels))
    ax = fig.add_subplot()
    _lift_panel(ax, labels, point, lo, hi)
    ax.set_xlabel(f"incremental conversion, pp ({100 * (1 - results.alpha):.0f}% Newcombe interval)")
    title = "Incremental conversion vs the control group"
    if not results.per_action_lift:
        title += "\n(per action: needs intended_action of control decisions)"
    ax.set_title(title)
    return fig


def plot_weekly(results: CampaignResults) -> Figure:
    """Per week: sends and decisions, conversion of treated and control decisions, and the lift."""
    rows = results.level("week")
    x = np.arange(len(rows))
    fig = _figure(11, 3.4)
    ax_n, ax_c, ax_l = fig.subplots(1, 3)
    ax_n.bar(x - 0.2, rows["decisions"], width=0.4, label="decisions")
    ax_n.bar(x + 0.2, rows["sends"], width=0.4, label="sends")
    ax_n.set_title("decisions and sends")
    ax_n.legend(fontsize=8)
    ax_c.plot(x, 100 * rows["conversion_rate"], marker="o", label="treated")
    ax_c.plot(x, 100 * rows["control_conversion_rate"], marker="o", label="control")
    ax_c.set_title("conversion rate, %")
    ax_c.legend(fontsize=8)
    ax_l.plot(x, 100 * rows["lift_conversion"], marker="o", color="tab:green")
    ax_l.fill_between(x, 100 * rows["lift_conversion_low"], 100 * rows["lift_conversion_high"], alpha=0.25,
                      color="tab:green", label=f"{100 * (1 - results.alpha):.0f}% Newcombe")  # fmt: skip
    ax_l.axhline(0.0, color="grey", linewidth=1)
    ax_l.set_title("incremental conversion, pp")
    ax_l.legend(fontsize=8)
    step = max(1, len(rows) // 8)
    for ax in (ax_n, ax_c, ax_l):
        ax.set_xticks(x[::step], rows["week"].iloc[::step], rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("week (Monday)")
    fig.suptitle("Weekly trend")
    return fig


def plot_revenue(results: CampaignResults) -> Figure:
    """Revenue per decision per action (control group as a line) and incremental revenue per decision with
    the customer bootstrap interval."""
    rows = results.level("action")
    lifts = _lift_rows(results, "action")
    overall = results.overall
    fig = _figure(12, 1.4 + 0.35 * max(len(rows), 2))
    ax_r, ax_l = fig.subplots(1, 2)
    y = np.arange(len(rows))
    ax_r.barh(y, rows["revenue_per_decision"], color="tab:blue")
    _control_marks(ax_r, results, rows, "control_revenue_per_decision", 1.0)
    ax_r.set_yticks(y, rows["action"])
    ax_r.invert_yaxis()
    ax_r.set_title("revenue per decision")
    pick = [overall, *(r for _, r in lifts.iterrows())]
    labels = ["overall", *lifts["action"]] if len(lifts) else ["overall"]
    _lift_panel(
        ax_l,
        labels,
        np.array([r["lift_revenue_per_decision"] for r in pick]),
        np.array([r["lift_revenue_low"] for r in pick]),
        np.array([r["lift_revenue_high"] for r in pick]),
    )
    ax_l.set_title(f"incremental revenue per decision\n({100 * (1 - results.alpha):.0f}% customer bootstrap)")
    fig.suptitle("Revenue")
    return fig


_PLOTS = {
    "rates_by_action": ("action", plot_rates_by_action, "Rates per action"),
    "lift_by_action": ("overall", plot_lift_by_action, "Incremental conversion per action"),
    "weekly_trend": ("week", plot_weekly, "Weekly trend"),
    "revenue": ("action", plot_revenue, "Revenue"),
}

_SHOWN = {
    "decisions": "decisions",
    "sends": "sends",
    "open_rate": "open",
    "click_rate": "click",
    "unsubscribe_rate": "unsub.",
    "conversion_rate": "conversion",
    "revenue": "revenue",
    "revenue_per_decision": "rev./decision",
    "control_decisions": "control decisions",
    "control_conversion_rate": "control conversion",
    "lift_conversion": "lift conversion [CI]",
    "lift_revenue_per_decision": "lift rev./decision [CI]",
    "incremental_conversions": "incr. conversions",
    "incremental_revenue": "incr. revenue",
}
_MAX_HTML_ROWS = 400


def _display(results: CampaignResults, rows: pd.DataFrame) -> pd.DataFrame:
    """Rows as strings for the HTML: percentages, money and the intervals beside their points."""
    keys = [k for k in results.by if (rows[k] != _ALL).any()]
    out = rows[keys].copy()
    for column, title in _SHOWN.items():
        values = rows[column]
        if column.endswith("_rate"):
            digits = 2 if column == "unsubscribe_rate" else 1
            out[title] = [_pct(v, digits) for v in values]
        elif column == "lift_conversion":
            out[title] = [
                f"{_pp(p)} [{_pp(lo)}, {_pp(hi)}]" if p == p else "n/a"
                for p, lo, hi in zip(
                    values, rows["lift_conversion_low"], rows["lift_conversion_high"], strict=True
                )
            ]
        elif column == "lift_revenue_per_decision":
            out[title] = [
                f"{p:+,.2f} [{lo:+,.2f}, {hi:+,.2f}]" if p == p else "n/a"
                for p, lo, hi in zip(values, rows["lift_revenue_low"], rows["lift_revenue_high"], strict=True)
            ]
        elif column.startswith(("revenue", "incremental")):
            out[title] = values.map(lambda v: "n/a" if v != v else f"{v:,.2f}")
        else:
            out[title] = values.map(lambda v: f"{int(v):,}")
    return out


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_report(
    results: CampaignResults,
    out_dir: str | Path,
    *,
    title: str = "Campaign results",
    notes: Sequence[str] = (),
) -> ReportFiles:
    """Writes `campaign_report.html` (plots embedded as base64 PNGs, no network needed), the PNGs, one CSV
    per level and `summary.json` into `out_dir`.

    Args:
        results: of `campaign_results`.
        out_dir: folder (created).
        title: the page's title.
        notes: extra lines for the "how it was computed" section (e.g. where the outcomes came from).

    Returns:
        The files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, Path] = {}
    for level in results.levels:
        path = out / f"campaign_{level}.csv"
        results.level(level).to_csv(path, index=False)
        tables[level] = path

    plots: dict[str, Path] = {}
    images: list[tuple[str, str]] = []
    for name, (needs, draw, caption) in _PLOTS.items():
        if needs not in results.levels:
            continue
        data = _png(draw(results))
        path = out / f"{name}.png"
        path.write_bytes(data)
        plots[name] = path
        images.append((caption, base64.b64encode(data).decode("ascii")))

    method = _method_notes(results) + list(notes)
    summary = {
        "headline": results.headline(),
        "period": list(results.period),
        "by": list(results.by),
        "per_action_lift": results.per_action_lift,
        "n_boot": results.n_boot,
        "seed": results.seed,
        "alpha": results.alpha,
        "conversion_interval": "Newcombe hybrid score (method 10), decisions as units",
        "revenue_interval": "percentile bootstrap, customers resampled within each arm",
        "per_action": _per_action_metrics(results),
        "notes": method,
    }
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(_finite(summary), indent=2) + "\n")

    html_path = out / "campaign_report.html"
    html_path.write_text(_html(results, title, images, method))
    return ReportFiles(html_path, summary_path, tables, plots)


def _finite(value: Any) -> Any:
    """NaN and infinities as null, so that summary.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _per_action_metrics(results: CampaignResults) -> dict[str, dict[str, float]]:
    rows = _lift_rows(results, "action")
    if not len(rows):
        return {}
    return {
        str(r["action"]): {
            "lift_conversion": float(r["lift_conversion"]),
            "lift_conversion_low": float(r["lift_conversion_low"]),
            "lift_conversion_high": float(r["lift_conversion_high"]),
            "lift_revenue_per_decision": float(r["lift_revenue_per_decision"]),
        }
        for _, r in rows.iterrows()
    }


def _method_notes(results: CampaignResults) -> list[str]:
    pct = f"{100 * (1 - results.alpha):.0f}%"
    notes = [
        "Treated = every decision outside the control group (including the policy's own no_send); control ="
        " the stable random control group, sent nothing. Lift = treated minus control, per decision, within"
        " the same stage and week" + (" and intended action." if results.per_action_lift else "."),
        f"Conversion lift: {pct} Newcombe hybrid score interval (decisions as units); the customer bootstrap"
        " interval is in the CSVs (lift_conversion_boot_low/high).",
        f"Revenue lift: {pct} percentile bootstrap over customers ({results.n_boot} resamples, seed"
        f" {results.seed}): a customer's decisions stay together.",
        "Open, click and unsubscribe rates are per send; conversion and revenue per decision.",
    ]
    if not results.per_action_lift:
        notes.append(
            "No per-action lift: the control decisions do not record the action the policy intended, and"
            " comparing the customers sent an action with all control customers would mix the policy's"
            " targeting into the lift."
        )
    return notes


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; }
.headline { font-size: 1.1em; background: #f6f9ff; border: 1px solid #cdd; padding: 0.8em 1.2em; }
img { max-width: 100%; border: 1px solid #eee; margin-bottom: 1em; }
"""


def _html(results: CampaignResults, title: str, images: list[tuple[str, str]], notes: list[str]) -> str:
    headline = "<br>".join(html.escape(line) for line in format_headline(results).splitlines())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<div class="headline">{headline}</div>',
        "<h2>Plots</h2>",
    ]
    for caption, data in images:
        parts.append(f"<h3>{html.escape(caption)}</h3>")
        parts.append(f'<img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">')
    parts.append("<h2>Tables</h2>")
    for level in results.levels:
        rows = results.level(level)
        heading = "Overall" if level == "overall" else "By " + level.replace("_", ", ")
        table = _display(results, rows.head(_MAX_HTML_ROWS)).to_html(index=False, escape=True, border=0)
        more = (
            f"<p>First {_MAX_HTML_ROWS} of {len(rows):,} rows; all in campaign_{level}.csv.</p>"
            if len(rows) > _MAX_HTML_ROWS
            else ""
        )
        if len(results.by) > 1 and level == "_".join(results.by):
            parts.append(f"<details><summary><b>{html.escape(heading)}</b></summary>{table}{more}</details>")
        else:
            parts.append(f"<h3>{html.escape(heading)}</h3>{table}{more}")
    parts.append("<h2>How it was computed</h2><ul>")
    parts += [f"<li>{html.escape(n)}</li>" for n in notes]
    parts.append("</ul></body></html>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------------------
# MLflow
# ----------------------------------------------------------------------------------------------------------


def log_report(
    out_dir: str | Path,
    *,
    experiment: str = "journey-campaigns",
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """Logs a written report to MLflow: its files as artifacts under `campaign_report/`, the headline
    figures as metrics (`lift/conversion`, `lift/revenue_per_decision`, `rates/open`, ..., and
    `lift/conversion/<action>` where per-action lifts exist).

    Into the active run if there is one (a training or demo run that wants its campaign beside it; the
    settings then go in as tags so that they never clash with the run's own parameters), else into a new
    run of `experiment` in the project's store (`training.registry.configure`).

    Args:
        out_dir: a folder written by `write_report`.
        experiment: experiment of a new run.
        run_name: name of a new run.
        params: extra settings to record (the decision log's path, the window, ...).

    Returns:
        The run id.
    """
    import mlflow

    out = Path(out_dir)
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise ValueError(f"{out}: no summary.json; write the report first (write_report)")
    summary = json.loads(summary_path.read_text())
    metrics = {k: float(v) for k, v in summary["headline"].items() if v is not None}
    for action, figures in summary.get("per_action", {}).items():
        for key, metric in (
            ("lift_conversion", "lift/conversion"),
            ("lift_revenue_per_decision", "lift/revenue"),
        ):
            if figures.get(key) is not None:
                metrics[f"{metric}/{action}"] = figures[key]
    settings = {
        "by": ",".join(summary["by"]),
        "n_boot": summary["n_boot"],
        "seed": summary["seed"],
        "alpha": summary["alpha"],
        "per_action_lift": summary["per_action_lift"],
        "period": " .. ".join(summary["period"]),
        **(params or {}),
    }
    own = mlflow.active_run() is None
    if own:
        from training.registry import configure

        configure(experiment)
    run = mlflow.start_run(run_name=run_name or "campaign-report") if own else mlflow.active_run()
    assert run is not None
    try:
        if own:
            mlflow.log_params({f"campaign.{k}": v for k, v in settings.items()})
        else:
            mlflow.set_tags({f"campaign.{k}": str(v) for k, v in settings.items()})
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out), artifact_path="campaign_report")
    finally:
        if own:
            mlflow.end_run()
    return str(run.info.run_id)
