"""Business rules: every action has its eligibility rule, fatigue rules, quiet hours and the settings.

Customers are hand-made event histories, encoded by the feature job's encoder, so a rule is tested on the
aggregates the service and the offline evaluation really give it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.encoder import EncoderConfig, encode
from features.policy import DEFAULT_COOLDOWN_DAYS, ELIGIBILITY, RuleConfig, eligibility
from features.schema import ACTIONS, MESSAGE_ACTIONS
from features.vocab import Vocabulary
from tests.factories import events

CUTOFF = "2026-03-01"


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    counts = {"item_id": pd.Series({"I1": 5, "I2": 3}), "category": pd.Series({"cat_1": 5, "cat_2": 3})}
    return Vocabulary.fit(counts)


def rules_for(
    vocab: Vocabulary, *rows: tuple, rules: RuleConfig | None = None, cutoff: str = CUTOFF
) -> dict[str, str]:
    """action -> the rule that blocks it ("" where allowed) for one customer's events at the cutoff."""
    frame = events(*rows)
    customers = sorted(set(frame["customer_id"]))
    assert len(customers) == 1
    cut = pd.DataFrame({"customer_id": customers, "cutoff": [pd.Timestamp(cutoff, tz="UTC")]})
    batch = encode(frame, cut, vocab, EncoderConfig(max_len=50))
    elig = eligibility(batch.aggregates, rules)
    return {a: str(elig.blocked_by[0, j]) for j, a in enumerate(ACTIONS)}


def subscribed(customer: str, ts: str) -> tuple:
    return (customer, ts, "newsletter_signup")


def test_one_add_to_cart_and_no_purchase_is_not_a_loyalty_customer(vocab: Vocabulary) -> None:
    # The finding: a customer with one add-to-cart and no purchase got loyalty_reward.
    blocked = rules_for(
        vocab,
        subscribed("a", "2026-01-01 09:00"),
        ("a", "2026-02-27 10:00", "add_to_cart", "I1"),
    )
    assert blocked["loyalty_reward"] == "needs_repeat_purchases"
    assert blocked["cart_abandonment"] == ""  # the open cart is what this customer has


def test_loyalty_needs_purchases_on_two_days_not_a_two_item_order(vocab: Vocabulary) -> None:
    one_order = rules_for(
        vocab,
        subscribed("a", "2026-01-01 09:00"),
        ("a", "2026-02-10 10:00", "purchase", "I1", 10.0),
        ("a", "2026-02-10 10:00", "purchase", "I2", 12.0),
    )
    assert one_order["loyalty_reward"] == "needs_repeat_purchases"
    two_orders = rules_for(
        vocab,
        subscribed("a", "2026-01-01 09:00"),
        ("a", "2026-01-10 10:00", "purchase", "I1", 10.0),
        ("a", "2026-02-10 10:00", "purchase", "I2", 12.0),
    )
    assert two_orders["loyalty_reward"] == ""


def test_n_purchase_days_counts_days_with_a_purchase(vocab: Vocabulary) -> None:
    frame = events(
        ("a", "2026-01-10 10:00", "purchase", "I1", 1.0),
        ("a", "2026-01-10 23:00", "purchase", "I2", 1.0),  # same day: the same order day
        ("a", "2026-01-11 01:00", "purchase", "I1", 1.0),
        ("b", "2026-01-11 01:00", "purchase", "I1", 1.0),  # another customer on that day
        ("a", "2026-01-12 08:00", "page_view"),
        ("a", "2026-01-20 08:00", "purchase", "I1", 1.0),  # at the cutoff: not seen
    )
    cut = pd.DataFrame(
        {
            "customer_id": ["a", "b"],
            "cutoff": pd.to_datetime(["2026-01-20 08:00", "2026-01-20 00:00"], utc=True),
        }
    )
    batch = encode(frame, cut, vocab)
    assert batch.aggregates["n_purchase_days"].tolist() == [2.0, 1.0]
    assert batch.aggregates["n_purchases"].tolist() == [3.0, 1.0]


def test_welcome_only_near_a_signup_or_first_contact(vocab: Vocabulary) -> None:
    new = rules_for(vocab, subscribed("a", "2026-02-25 09:00"), ("a", "2026-02-26 10:00", "page_view"))
    assert new["welcome_series"] == ""
    old = rules_for(
        vocab,
        subscribed("a", "2025-11-01 09:00"),
        ("a", "2026-02-26 10:00", "page_view"),
    )
    assert old["welcome_series"] == "needs_new_contact"
    # An old contact who signed up to the newsletter this week is a new subscriber: welcome.
    resubscribed = rules_for(
        vocab,
        ("a", "2025-11-01 09:00", "page_view"),
        subscribed("a", "2026-02-27 09:00"),
    )
    assert resubscribed["welcome_series"] == ""


def test_educational_content_is_for_active_prospects(vocab: Vocabulary) -> None:
    prospect = rules_for(
        vocab, subscribed("a", "2026-01-01 09:00"), ("a", "2026-02-20 10:00", "product_view", "I1")
    )
    assert prospect["educational_content"] == ""
    buyer = rules_for(
        vocab, subscribed("a", "2026-01-01 09:00"), ("a", "2026-02-20 10:00", "purchase", "I1", 5.0)
    )
    assert buyer["educational_content"] == "needs_active_prospect"
    lapsed = rules_for(vocab, subscribed("a", "2025-10-01 09:00"), ("a", "2025-11-20 10:00", "page_view"))
    assert lapsed["educational_content"] == "needs_active_prospect"


def test_winback_is_for_lapsing_contacts_and_browse_for_recent_views(vocab: Vocabulary) -> None:
    lapsed = rules_for(vocab, subscribed("a", "2025-10-01 09:00"), ("a", "2025-11-20 10:00", "page_view"))
    assert lapsed["winback_offer"] == ""  # never bought, but lapsing: win-back targets them too
    assert lapsed["browse_abandonment"] == "needs_recent_views_without_purchase"
    active = rules_for(
        vocab, subscribed("a", "2025-10-01 09:00"), ("a", "2026-02-27 10:00", "product_view", "I1")
    )
    assert active["winback_offer"] == "needs_inactivity"
    assert active["browse_abandonment"] == ""
    buyers_only = RuleConfig(winback_requires_purchase=True)
    lapsed_strict = rules_for(
        vocab,
        subscribed("a", "2025-10-01 09:00"),
        ("a", "2025-11-20 10:00", "page_view"),
        rules=buyers_only,
    )
    assert lapsed_strict["winback_offer"] == "needs_inactivity"


def test_purchase_windows_of_onboarding_feedback_and_cross_sell(vocab: Vocabulary) -> None:
    bought_3_days_ago = rules_for(
        vocab, subscribed("a", "2026-01-01 09:00"), ("a", "2026-02-26 00:00", "purchase", "I1", 5.0)
    )
    assert bought_3_days_ago["post_purchase_onboarding"] == ""
    assert bought_3_days_ago["feedback_request"] == "needs_purchase_in_feedback_window"
    assert bought_3_days_ago["cross_sell"] == ""
    bought_20_days_ago = rules_for(
        vocab, subscribed("a", "2026-01-01 09:00"), ("a", "2026-02-09 00:00", "purchase", "I1", 5.0)
    )
    assert bought_20_days_ago["post_purchase_onboarding"] == "needs_recent_purchase"
    assert bought_20_days_ago["feedback_request"] == ""
    never = rules_for(vocab, subscribed("a", "2026-02-20 09:00"), ("a", "2026-02-26 00:00", "page_view"))
    for action in ("post_purchase_onboarding", "feedback_request", "cross_sell", "loyalty_reward"):
        assert never[action] != "", action


def test_every_message_action_has_an_eligibility_rule_that_can_block_it() -> None:
    assert set(ELIGIBILITY) == set(MESSAGE_ACTIONS)
    # A customer with nothing at all (no events) is eligible for no message except a welcome (first
    # contact now) — and even that is blocked by consent unless consent is known.
    aggregates = {
        "email_consent": np.array([1.0]),
        "emails_received_7d": np.zeros(1),
        "emails_received_28d": np.zeros(1),
        "days_since_last_email": np.array([365.0]),
        "open_cart": np.zeros(1),
        "days_since_last_purchase": np.array([365.0]),
        "n_purchase_days": np.zeros(1),
        "days_since_signup": np.array([365.0]),
        "tenure_days": np.array([400.0]),
        "recency_days": np.array([3.0]),
        "n_product_views_7d": np.zeros(1),
        "n_events": np.array([5.0]),
    }
    blocked = eligibility(aggregates).blocked_by[0]
    for j, action in enumerate(ACTIONS):
        if action == "no_send":
            assert blocked[j] == ""
        elif action == "educational_content":
            assert blocked[j] == "", "an active prospect may be taught"
        else:
            assert blocked[j] == ELIGIBILITY[action][0], action


def test_fatigue_rules_block_every_message() -> None:
    base = {
        "email_consent": np.ones(4),
        "emails_received_7d": np.array([0.0, 3.0, 0.0, 0.0]),
        "emails_received_28d": np.array([0.0, 3.0, 10.0, 0.0]),
        "days_since_last_email": np.array([365.0, 2.0, 5.0, 0.5]),  # row 3: 12 hours ago
        "open_cart": np.ones(4),
        "days_since_last_purchase": np.full(4, 365.0),
        "n_purchase_days": np.zeros(4),
        "days_since_signup": np.full(4, 2.0),
        "tenure_days": np.full(4, 2.0),
        "recency_days": np.full(4, 1.0),
        "n_product_views_7d": np.ones(4),
        "n_events": np.full(4, 5.0),
    }
    elig = eligibility(base)
    cart = ACTIONS.index("cart_abandonment")
    assert elig.blocked_by[:, cart].tolist() == ["", "frequency_cap_7d", "frequency_cap_28d", "min_gap"]
    # 12 hours since the last e-mail is enough when the gap is 10 hours.
    assert eligibility(base, RuleConfig(min_gap_hours=10)).allowed[3, cart]


def test_cooldowns_and_quiet_hours() -> None:
    agg = {
        "email_consent": np.ones(2),
        "emails_received_7d": np.zeros(2),
        "emails_received_28d": np.zeros(2),
        "days_since_last_email": np.full(2, 365.0),
        "open_cart": np.ones(2),
        "days_since_last_purchase": np.full(2, 365.0),
        "n_purchase_days": np.zeros(2),
        "days_since_signup": np.full(2, 2.0),
        "tenure_days": np.full(2, 2.0),
        "recency_days": np.full(2, 1.0),
        "n_product_views_7d": np.ones(2),
        "n_events": np.full(2, 5.0),
    }
    cart = ACTIONS.index("cart_abandonment")
    since = {"cart_abandonment": np.array([2.0, 3.5])}  # the cooldown is 3 days
    elig = eligibility(agg, RuleConfig(), days_since_action=since)
    assert elig.blocked_by[:, cart].tolist() == ["cooldown_cart_abandonment", ""]
    # Quiet from 21:00 to 08:00 in Paris (UTC+1 in February): 20:30 UTC is 21:30 there, 06:30 UTC is 07:30.
    rules = RuleConfig(quiet_hours=(21, 8), timezone="Europe/Paris")
    now = [datetime(2026, 2, 1, 20, 30, tzinfo=UTC), datetime(2026, 2, 1, 7, 30, tzinfo=UTC)]
    elig = eligibility(agg, rules, now=now)
    assert elig.blocked_by[:, cart].tolist() == ["quiet_hours", ""]
    assert rules.in_quiet_hours(datetime(2026, 2, 1, 6, 59, tzinfo=UTC))
    assert not RuleConfig().in_quiet_hours(datetime(2026, 2, 1, 3, 0, tzinfo=UTC))


def test_rule_settings_merge_cooldowns_and_name_bad_keys() -> None:
    rules = RuleConfig.from_dict({"cooldown_days": {"cart_abandonment": 1}, "quiet_hours": [22, 7]})
    assert rules.cooldown_days["cart_abandonment"] == 1.0
    assert rules.cooldown_days["welcome_series"] == DEFAULT_COOLDOWN_DAYS["welcome_series"]
    assert rules.quiet_hours == (22, 7)
    assert RuleConfig.from_dict(rules.to_dict()) == rules
    with pytest.raises(ValueError, match=r"unknown rules setting.*max_email_7d"):
        RuleConfig.from_dict({"max_email_7d": 2})
    with pytest.raises(ValueError, match=r"cooldown_days: unknown action.*cart_abandon"):
        RuleConfig.from_dict({"cooldown_days": {"cart_abandon": 1}})
    with pytest.raises(ValueError, match="timezone"):
        RuleConfig(timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="quiet_hours"):
        RuleConfig(quiet_hours=(8, 8))


def test_the_offline_evaluation_reads_the_services_rule_file(tmp_path: Path) -> None:
    from features.policy import load_rules

    assert load_rules(Path("configs/serve.yaml")) == RuleConfig()  # the file lists the defaults
    custom = tmp_path / "serve.yaml"
    custom.write_text("rules:\n  max_emails_7d: 1\n  cooldown_days: {cart_abandonment: 5}\n")
    assert load_rules(custom) == RuleConfig.from_dict(
        {"max_emails_7d": 1, "cooldown_days": {"cart_abandonment": 5}}
    )
    custom.write_text("rules:\n  max_mails_7d: 1\n")
    with pytest.raises(ValueError, match=r"serve\.yaml: unknown rules setting"):
        load_rules(custom)


def test_a_training_run_evaluates_policies_under_the_service_rules(tmp_path: Path) -> None:
    from features.policy import load_rules
    from training.config import TrainConfig

    assert TrainConfig().rule_config() == load_rules(Path("configs/serve.yaml"))
    custom = tmp_path / "serve.yaml"
    custom.write_text("rules:\n  loyalty_min_orders: 3\n")
    assert TrainConfig(rules=str(custom)).rule_config().loyalty_min_orders == 3
    custom.write_text("rules:\n  loyalty_min_order: 3\n")
    with pytest.raises(ValueError, match="loyalty_min_order"):
        TrainConfig(rules=str(custom))  # refused before any run starts
