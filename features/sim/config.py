"""The settings of one simulation (`SimConfig`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from features.sim.world import _SESSION_FROM_S


@dataclass(frozen=True)
class SimConfig:
    """Settings of one simulation. Same config, same bytes.

    Attributes:
        n_customers: customers in the whole period (existing at the start plus arrivals).
        n_items: items in the catalogue.
        n_categories: item categories (1 .. any; the first 40 have readable names).
        start: first simulated day (ISO date); the default is a Monday.
        days: simulated days.
        seed: root seed; the catalogue and every chunk get their own stream derived from it.
        decision_every_days: days between two decisions for one customer.
        outcome_days: the outcome window of a decision (conversion = a purchase within it); at most
            `decision_every_days`, so that windows never overlap.
        decision_hour: UTC hour of decisions and sends, before any activity of the day.
        campaign_weekdays: weekdays (0 = Monday) on which campaigns go out; each customer gets one. One
            weekday by default: the feature job's weekly cutoffs then fall on every decision's day.
        consent_rate: share of customers who sign up to the newsletter.
        send_rate: probability that the logging policy sends something to a consented customer.
        initial_share: share of customers who already exist at the start (signed up in the year before).
        app_share: share of customers who use the app (app sessions and push opens).
        taste_concentration: sum of the Dirichlet parameters of category tastes (around the global category
            popularity); small values give each customer a few favourite categories.
        chunk_size: customers simulated at once; one events part per chunk. Results depend on it.
        policy: name recorded for the logging policy.
        control_share: share of customers in the control group (stable per customer id and seed): they
            get no_send at every decision, and the policy's draw is logged as `intended_action`. 0 (the
            default) leaves the random stream, and so every output, as without a control group.
        click_only: a click-only shop instead (`features.sim.clicks`): sessions of product views with
            sequential structure, no purchases, carts or e-mails, no decision log and no stage truth;
            `truth/successors.parquet` holds the item transitions. Uses n_customers, n_items,
            n_categories, start, days, seed, initial_share, taste_concentration and chunk_size.
    """

    n_customers: int = 20_000
    n_items: int = 5_000
    n_categories: int = 24
    start: str = "2026-01-05"
    days: int = 182
    seed: int = 0
    decision_every_days: int = 7
    outcome_days: int = 7
    decision_hour: int = 6
    campaign_weekdays: tuple[int, ...] = (0,)
    consent_rate: float = 0.8
    send_rate: float = 0.75
    initial_share: float = 0.3
    app_share: float = 0.35
    taste_concentration: float = 2.0
    chunk_size: int = 100_000
    policy: str = "sim_logging_v1"
    control_share: float = 0.0
    click_only: bool = False

    def __post_init__(self) -> None:
        if self.n_customers < 1 or self.n_items < 1 or self.days < 1 or self.chunk_size < 1:
            raise ValueError("n_customers, n_items, days and chunk_size must be positive")
        if not 1 <= self.n_categories <= self.n_items:
            raise ValueError("n_categories must be between 1 and n_items")
        if not 1 <= self.outcome_days <= self.decision_every_days:
            raise ValueError(
                "outcome_days must be between 1 and decision_every_days (windows must not overlap)"
            )
        if not 0 <= self.decision_hour * 3600 < _SESSION_FROM_S:
            raise ValueError("decision_hour must come before the day's sessions (07:00 UTC)")
        if not self.campaign_weekdays or any(not 0 <= w <= 6 for w in self.campaign_weekdays):
            raise ValueError("campaign_weekdays must be weekdays 0 (Monday) .. 6")
        for name in ("consent_rate", "send_rate", "initial_share", "app_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if not 0.0 < self.send_rate < 1.0:
            raise ValueError(
                "send_rate must be strictly between 0 and 1 so that every action has a propensity"
            )
        if not 0.0 <= self.control_share < 1.0:
            raise ValueError("control_share must be within [0, 1): someone has to be sent something")
        dt.date.fromisoformat(self.start)

    @property
    def start_date(self) -> dt.date:
        return dt.date.fromisoformat(self.start)
