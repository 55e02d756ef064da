"""The hindsight stage labels: hand-made customers whose stage is known, and a simulated shop whose latent
stages are known (`features.sim`), so that the rules are checked against the truth, not only against
themselves."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from features.encoder import prepare
from features.labels import LabelConfig, hindsight_labels
from features.schema import STAGES
from features.snapshots import SPLITS
from features.vocab import Vocabulary
from tests.factories import events

ROOT = Path(__file__).resolve().parents[1]
T = pd.Timestamp("2026-03-02", tz="UTC")  # the cutoff (a Monday, midnight UTC)


def stage(ev: pd.DataFrame, config: LabelConfig | None = None) -> str:
    vocab = Vocabulary.fit({"item_id": pd.Series({"I1": 2, "I2": 1, "I3": 1})})
    rows = pd.DataFrame({"customer_id": ["a"], "cutoff": [T]})
    out = hindsight_labels(prepare(ev, vocab), rows, config or LabelConfig())
    return str(out["stage"].to_pylist()[0])


def days(kind: str, *dates: str, item: str | None = None) -> list[tuple]:
    """One event of `kind` on each date (at noon), for customer "a"."""
    return [("a", f"{d} 12:00", kind, item) if item else ("a", f"{d} 12:00", kind) for d in dates]


# Someone who has browsed the shop now and then for months (an established contact).
OLD_CONTACT = [
    ("a", "2025-10-01 09:00", "signup"),
    *days("product_view", "2025-11-03", "2025-12-10", item="I1"),
]


def test_a_lapsed_customer_who_never_bought_is_at_risk() -> None:
    # Browsed in January, then nothing but the shop's own e-mails: inactivity, not purchases, defines it.
    ev = events(
        *OLD_CONTACT,
        *days("product_view", "2026-01-05", "2026-01-12", "2026-01-20", item="I2"),
        ("a", "2026-02-23 06:00", "email_sent", None, None, "winback_offer"),
        ("a", "2026-03-02 06:00", "email_sent", None, None, "winback_offer"),
    )
    assert stage(ev) == "at_risk"


def test_a_lapsed_customer_who_opens_one_email_is_still_at_risk() -> None:
    ev = events(
        *OLD_CONTACT,
        *days("page_view", "2026-01-10", "2026-01-11"),
        ("a", "2026-03-03 08:00", "email_open", None, None, "winback_offer"),
    )
    assert stage(ev) == "at_risk"


def test_a_customer_who_goes_quiet_after_the_cutoff_is_at_risk() -> None:
    # Active every day of the week before, then silent for the two weeks after.
    ev = events(*OLD_CONTACT, *days("page_view", *[f"2026-02-{d}" for d in range(23, 29)]))
    assert stage(ev) == "at_risk"


def test_a_repeat_buyer_who_went_quiet_is_at_risk() -> None:
    ev = events(
        *OLD_CONTACT,
        *days("purchase", "2025-12-01", "2026-01-05", item="I1"),
        *days("page_view", "2026-01-20"),
    )
    assert stage(ev) == "at_risk"


def test_a_brand_new_contact_is_in_awareness() -> None:
    ev = events(
        ("a", "2026-02-27 10:00", "signup"),
        *days("page_view", "2026-02-27", "2026-03-03"),
        *days("product_view", "2026-03-04", item="I1"),
    )
    assert stage(ev) == "awareness"


def test_a_new_contact_who_goes_quiet_is_still_in_awareness() -> None:
    assert stage(events(("a", "2026-02-25 10:00", "signup"))) == "awareness"


def test_a_contact_known_only_from_the_shops_emails_is_new_then_at_risk() -> None:
    # First contact is the first event of any kind: an address mailed for months without a reply is not new.
    first_mail = events(("a", "2026-02-23 06:00", "email_sent", None, None, "welcome_series"))
    assert stage(first_mail) == "awareness"
    mailed = events(
        *[
            ("a", f"{d} 06:00", "email_sent", None, None, "educational_content")
            for d in ("2025-12-01", "2026-01-05")
        ],
        ("a", "2026-02-23 06:00", "email_sent", None, None, "winback_offer"),
    )
    assert stage(mailed) == "at_risk"


def test_an_old_contact_still_browsing_lightly_is_not_in_awareness() -> None:
    ev = events(*OLD_CONTACT, *days("page_view", "2026-02-24", "2026-02-27", "2026-03-03", "2026-03-06"))
    assert stage(ev) == "consideration"


def test_a_new_contact_comparing_products_is_in_consideration() -> None:
    ev = events(
        ("a", "2026-02-25 10:00", "signup"),
        *days("product_view", "2026-02-25", "2026-02-26", "2026-02-27", "2026-03-03", item="I1"),
        *days("search", "2026-02-26", "2026-03-03", "2026-03-05"),
    )
    assert stage(ev) == "consideration"


def test_a_repeat_buyer_on_two_distinct_days_is_loyal() -> None:
    ev = events(
        *OLD_CONTACT,
        *days("purchase", "2026-01-10", "2026-02-05", item="I1"),
        *days("page_view", "2026-02-25", "2026-02-27", "2026-03-04", "2026-03-06"),
    )
    assert stage(ev) == "loyal"


def test_one_order_of_two_items_is_not_loyal() -> None:
    # One purchase event per item (the simulator) or per invoice line (UCI): still one order.
    ev = events(
        *OLD_CONTACT,
        ("a", "2026-02-05 10:00", "purchase", "I1", 10),
        ("a", "2026-02-05 10:00", "purchase", "I2", 20),
        *days("page_view", "2026-02-25", "2026-02-27", "2026-03-04", "2026-03-06"),
    )
    assert stage(ev) == "consideration"


def test_a_purchase_right_after_the_cutoff_is_decision() -> None:
    ev = events(
        *OLD_CONTACT, *days("page_view", "2026-02-27"), ("a", "2026-03-03 10:00", "purchase", "I1", 10)
    )
    assert stage(ev) == "decision"


def test_an_abandoned_cart_is_decision() -> None:
    ev = events(
        *OLD_CONTACT,
        *days("add_to_cart", "2026-02-28", "2026-03-01", item="I1"),
        *days("checkout_start", "2026-03-01"),
        *days("page_view", "2026-03-03", "2026-03-05"),
    )
    assert stage(ev) == "decision"


def test_a_recent_order_is_post_purchase() -> None:
    ev = events(
        *OLD_CONTACT, ("a", "2026-02-27 10:00", "purchase", "I1", 10), *days("page_view", "2026-03-04")
    )
    assert stage(ev) == "post_purchase"


def test_feedback_on_an_order_two_weeks_old_is_post_purchase() -> None:
    ev = events(
        *OLD_CONTACT,
        ("a", "2026-02-16 10:00", "purchase", "I1", 10),
        *days("page_view", "2026-02-25", "2026-03-04"),
        *days("review", "2026-03-03", item="I1"),
    )
    assert stage(ev) == "post_purchase"


def test_a_frequent_buyers_review_is_not_onboarding() -> None:
    # The same review after a third order in a year: routine, so the buyer is loyal, not post_purchase.
    ev = events(
        *OLD_CONTACT,
        *days("purchase", "2025-12-01", "2026-01-12", "2026-02-16", item="I1"),
        *days("page_view", "2026-02-25", "2026-03-04", "2026-03-06"),
        *days("review", "2026-03-03", item="I1"),
    )
    assert stage(ev) == "loyal"


def test_every_threshold_is_a_setting() -> None:
    # A purchase five days after the cutoff is decision only under a longer decision window.
    ev = events(
        *OLD_CONTACT,
        *days("page_view", "2026-02-27", "2026-03-03"),
        *days("purchase", "2026-03-06", item="I1"),
    )
    assert stage(ev) != "decision"
    assert stage(ev, LabelConfig(decision_days=7)) == "decision"
    # The brand-new contact is not new any more when "new" means the last three days.
    new = events(("a", "2026-02-25 10:00", "signup"), *days("page_view", "2026-02-27", "2026-03-03"))
    assert stage(new) == "awareness"
    assert stage(new, LabelConfig(awareness_days=3)) != "awareness"


def test_configs_features_yaml_lists_every_stage_setting_with_its_default() -> None:
    listed = yaml.safe_load((ROOT / "configs" / "features.yaml").read_text())["labels"]
    defaults = LabelConfig()
    for f in fields(LabelConfig):
        if f.name in ("max_next_items", "decision_window_days"):
            continue  # not stage rules
        assert f.name in listed, f"configs/features.yaml does not list labels.{f.name}"
        value = listed[f.name]
        assert (tuple(value) if isinstance(value, list) else value) == getattr(defaults, f.name), f.name


# Measured on 20,000-customer shops (benchmarks/stage_labels.py, BENCHMARKS.md): agreement 0.751 (seed 0)
# and 0.753 (seed 1) over all rows. 2,500-customer shops (seeds 3, 4, 5) measured 0.745 to 0.748: smaller
# shops have a larger share of early cutoffs, where existing customers' past orders are not yet seen. The
# floor leaves about 1.5 points for seeds; the old rules (0.27) are far below it.
MIN_AGREEMENT = 0.73


# `stage_shop`: the 2,500-customer shop of tests/worlds.py.


def test_labels_agree_with_the_simulators_latent_stage(stage_shop: tuple[Path, Path]) -> None:
    from benchmarks.stage_labels import label_agreement

    shop, features = stage_shop
    report = label_agreement(shop, features)
    assert report.agreement >= MIN_AGREEMENT
    # Lapsed non-buyers are at risk, not prospects.
    assert report.share_labelled("at_risk", "at_risk") > 0.85
    assert report.share_labelled("awareness", "awareness") > 0.5
    counts = report.label_counts()
    assert set(counts) == set(STAGES), counts
    assert min(counts.values()) > 0


def test_every_split_of_the_small_shop_has_every_stage(stage_shop: tuple[Path, Path]) -> None:
    import pyarrow.dataset as ds

    _, features = stage_shop
    rows = ds.dataset(features / "rows").to_table(columns=["stage", "split"]).to_pandas()
    assert set(rows["split"]) == set(SPLITS)
    by_split = rows.groupby("split")["stage"].agg(lambda s: set(s))
    for split in ("train",):
        assert by_split[split] == set(STAGES)
    assert np.isin(rows["stage"].unique(), STAGES).all()


def test_the_stage_loss_can_weigh_the_short_stages_up() -> None:
    from training.sequence import stage_class_weights

    stage = np.array([5] * 90 + [2] * 10)  # at_risk 90 %, decision 10 %
    assert stage_class_weights(stage, len(STAGES), 0.0) is None
    w = stage_class_weights(stage, len(STAGES), 1.0)
    assert w is not None
    share = np.bincount(stage, minlength=len(STAGES)) / len(stage)
    assert float((w.numpy() * share).sum()) == pytest.approx(1.0)  # rows keep an average weight of 1
    assert w[2] == pytest.approx(9 * w[5])  # balanced: each stage weighs the same in total
    assert w[0] == pytest.approx(w.max())  # a stage without rows gets the largest weight
