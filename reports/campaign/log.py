"""The decision log with its outcomes, in one normalised frame, from the service's export or a simulated shop.

Inputs (`load_decision_log`):

* the service's export (`journey decisions export`, `serving.store.EXPORT_COLUMNS`): one row per decision
  with its outcomes (delivered, opened, clicked, purchased, unsubscribed, revenue) as the e-mail platform
  reported them, `control` and, where the service logs it, `intended_action`;
* a simulated shop (`journey simulate`): `decisions.parquet` and its events. Outcomes are derived from the
  events (`outcomes_from_events`) with the simulator's own semantics: e-mail reactions carry the decision
  id as `campaign_id`; a decision converts when the customer buys within `window_days` of it, the half-open
  interval [ts, ts + window_days), which for the simulator's 06:00 decisions and 07:00 .. 23:59 purchases
  is exactly its outcome days d .. d + outcome_days - 1, so `purchased` equals `truth.converted`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from features.schema import Action, EventType

NO_SEND = Action.NO_SEND.value
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
    from features.sim import LATENT_TO_STAGE

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
