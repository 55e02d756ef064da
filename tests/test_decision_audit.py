"""The decision audit's judge (`benchmarks/audit_checks.py`) on hand-made sends: each check can fail."""

from __future__ import annotations

import pandas as pd

from benchmarks.audit_checks import audit
from features.policy import RuleConfig
from tests.factories import events

T = pd.Timestamp("2026-03-01 12:00", tz="UTC")


def sends(*rows: tuple[str, pd.Timestamp, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {"customer_id": [r[0] for r in rows], "ts": [r[1] for r in rows], "action": [r[2] for r in rows]}
    )


def shop() -> pd.DataFrame:
    return events(
        ("buyer", "2026-01-01 09:00", "newsletter_signup"),
        ("buyer", "2026-01-10 10:00", "purchase", "I1", 5.0),
        ("buyer", "2026-02-25 10:00", "purchase", "I2", 5.0),
        ("carter", "2025-12-01 09:00", "newsletter_signup"),
        ("carter", "2026-02-28 10:00", "add_to_cart", "I1"),
        ("gone", "2026-01-01 09:00", "newsletter_signup"),
        ("gone", "2026-02-01 09:00", "email_unsubscribe"),
        ("gone", "2026-02-27 10:00", "add_to_cart", "I1"),
        ("mailed", "2025-12-01 09:00", "newsletter_signup"),
        ("mailed", "2026-02-28 10:00", "add_to_cart", "I1"),
        ("mailed", "2026-03-01 02:00", "email_sent", None, None, "cart_abandonment"),
    )


def test_safe_sends_pass() -> None:
    counts = audit(
        shop(), sends(("buyer", T, "loyalty_reward"), ("carter", T, "cart_abandonment")), RuleConfig()
    )
    assert counts.sends == 2
    assert counts.unsafe == 0, counts


def test_each_kind_of_unsafe_send_is_counted() -> None:
    rules = RuleConfig()
    later = T + pd.Timedelta(hours=20)
    counts = audit(
        shop(),
        sends(
            ("carter", T, "loyalty_reward"),  # one add-to-cart, no purchase: not a repeat buyer
            ("gone", T, "cart_abandonment"),  # unsubscribed
            ("buyer", T, "cross_sell"),
            ("buyer", T + pd.Timedelta(hours=10), "feedback_request"),  # 10 h after the last: gap
            ("mailed", later, "cart_abandonment"),  # 34 h after the shop's own cart e-mail: 3-day cooldown
            ("carter", T + pd.Timedelta(days=400), "cart_abandonment"),  # far future
        ),
        rules,
        clock_end=T + pd.Timedelta(days=1),
        tolerance_s=300,
    )
    assert counts.opted_out == 1
    assert counts.ineligible["loyalty_reward"] == 1
    assert counts.ineligible["feedback_request"] == 1  # the last purchase was 4 days before
    assert counts.gap == 1
    assert counts.cooldown == 1
    assert counts.future == 1


def test_caps_count_the_shops_own_sends_too() -> None:
    history = events(
        ("c", "2026-01-01 09:00", "newsletter_signup"),
        ("c", "2026-02-28 10:00", "add_to_cart", "I1"),
        ("c", "2026-02-24 09:00", "email_sent", None, None, "welcome_series"),
        ("c", "2026-02-26 09:00", "email_sent", None, None, "educational_content"),
        ("c", "2026-02-27 09:00", "email_sent", None, None, "browse_abandonment"),
    )
    counts = audit(history, sends(("c", T, "cart_abandonment")), RuleConfig())
    assert counts.cap_7d == 1  # the fourth message in 7 days
    assert counts.gap == 0
    assert audit(history, sends(("c", T, "cart_abandonment")), RuleConfig(max_emails_7d=4)).unsafe == 0


def test_a_decision_is_judged_on_the_events_that_had_arrived() -> None:
    # A purchase that happened before the send but was posted after it: the engine could not know it.
    history = events(
        ("c", "2026-01-01 09:00", "newsletter_signup"),
        ("c", "2026-02-27 10:00", "product_view", "I1"),
        ("c", "2026-02-28 10:00", "purchase", "I1", 5.0),
    )
    history["known_at"] = pd.Series([pd.NaT, pd.NaT, T + pd.Timedelta(hours=1)], dtype="datetime64[us, UTC]")
    browse = sends(("c", T, "browse_abandonment"))
    assert audit(history, browse, RuleConfig()).unsafe == 0
    assert audit(history.drop(columns="known_at"), browse, RuleConfig()).ineligible["browse_abandonment"] == 1
