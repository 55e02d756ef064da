"""The Open Bandit check: its protocol on a synthetic sample with a known truth, its Markdown section, and
(marked `data`) the real sample in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.open_bandit import (
    MARKER_END,
    MARKER_START,
    CampaignResult,
    evaluate_campaign,
    evaluation_policy,
    load_logs,
    markdown,
    reward_model,
    update_markdown,
)

N_ITEMS = 4
CLICK = np.array([[0.02, 0.05, 0.10, 0.01]] * 3)  # true click rate per (position, item)
BTS = np.array([[0.1, 0.2, 0.6, 0.1], [0.25, 0.25, 0.25, 0.25], [0.0, 0.5, 0.5, 0.0]])  # pi_e(item | pos)


def _write_campaign(root: Path, policy: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    position = rng.integers(0, 3, n)
    if policy == "random":
        item = rng.integers(0, N_ITEMS, n)
        propensity = np.full(n, 1 / N_ITEMS)
    else:
        item = np.array([rng.choice(N_ITEMS, p=BTS[p]) for p in position])
        propensity = BTS[position, item]
    frame = pd.DataFrame(
        {
            "timestamp": "2019-11-24 00:00:00+00:00",
            "item_id": item,
            "position": position + 1,
            "click": (rng.uniform(size=n) < CLICK[position, item]).astype(int),
            "propensity_score": propensity,
            **{f"user_feature_{j}": rng.choice(["a", "b"], n) for j in range(4)},
            **{f"user-item_affinity_{j}": np.zeros(n) for j in range(N_ITEMS)},
        }
    )
    folder = root / policy / "all"
    folder.mkdir(parents=True)
    frame.to_csv(folder / "all.csv")
    items = pd.DataFrame(
        {
            "item_id": range(N_ITEMS),
            "item_feature_0": np.linspace(-1, 1, N_ITEMS),
            "item_feature_1": ["x", "y", "x", "y"],
            "item_feature_2": ["p"] * N_ITEMS,
            "item_feature_3": ["q", "q", "r", "r"],
        }
    )
    items.to_csv(folder / "item_context.csv")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("obd")
    _write_campaign(root, "random", 8_000, seed=1)
    _write_campaign(root, "bts", 8_000, seed=2)
    return root


@pytest.fixture(scope="module")
def synthetic_result(synthetic: Path) -> CampaignResult:
    return evaluate_campaign(synthetic, "all", n_boot=200)


def test_evaluation_policy_is_the_empirical_item_frequency_per_position() -> None:
    bts = pd.DataFrame({"position": [0, 0, 0, 1, 2, 2], "item_id": [1, 1, 0, 2, 2, 0]})
    # Position 0: item 1 twice, item 0 once -> 1/3, 2/3, 0; position 1: item 2; position 2: items 2 and 0.
    expected = np.array([[1 / 3, 2 / 3, 0], [0, 0, 1], [0.5, 0, 0.5]])
    np.testing.assert_allclose(evaluation_policy(bts, 3, 3), expected)
    with pytest.raises(ValueError, match="position"):
        evaluation_policy(bts[bts["position"] == 0], 3, 3)


def test_reward_models_predict_every_item_at_the_rows_position(synthetic: Path) -> None:
    logs, items = load_logs(synthetic, "random", "all")
    assert logs["position"].between(0, 2).all()
    for kind in ("logistic", "cell_mean"):
        q = reward_model(logs, items, kind)
        assert q.shape == (len(logs), N_ITEMS)
        assert ((q > 0) & (q < 1)).all()
        # Item 2 clicks most (10 %), item 3 least (1 %): both models rank them so on average.
        assert q[:, 2].mean() > q[:, 0].mean() > q[:, 3].mean()
    with pytest.raises(ValueError, match="reward model"):
        reward_model(logs, items, "forest")


def test_estimators_recover_a_known_policy_value(synthetic_result: CampaignResult) -> None:
    result = synthetic_result
    # True value of the BTS-like policy: mean over positions of sum_a pi_e(a | pos) click(pos, a).
    # Position 1: 0.1*0.02 + 0.2*0.05 + 0.6*0.10 + 0.1*0.01 = 0.073; position 2: 0.25 * 0.18 = 0.045;
    # position 3: 0.5*0.05 + 0.5*0.10 = 0.075. Mean: 0.193 / 3 = 0.06433.
    true_value = float(np.mean((BTS * CLICK).sum(axis=1)))
    assert true_value == pytest.approx(0.193 / 3)
    assert result.truth.lo <= true_value <= result.truth.hi  # the on-policy mean of the BTS logs
    for label in ("ips", "snips", "dr", "dr (cell_mean)"):
        ci = result.estimates[label]
        assert ci.lo <= true_value <= ci.hi, label
    assert set(result.estimates) == {"ips", "snips", "dm", "dr", "dm (cell_mean)", "dr (cell_mean)"}
    assert 0 < result.ess <= 1


def test_markdown_section_and_update(tmp_path: Path, synthetic_result: CampaignResult) -> None:
    section = markdown([synthetic_result], n_boot=200)
    assert section.startswith(MARKER_START)
    assert section.endswith(MARKER_END)
    assert "| all | IPS (IPW) |" in section
    assert "| all | DR (cell mean) |" in section

    path = tmp_path / "BENCHMARKS.md"
    update_markdown(path, section)  # a new file
    assert path.read_text().startswith("# Benchmarks\n\n" + MARKER_START)
    other = "<!-- feature_job:start -->\n## Feature job\nfast\n<!-- feature_job:end -->"
    path.write_text("# Benchmarks\n\n" + other + "\n\n" + section + "\n\nfooter\n")
    update_markdown(path, f"{MARKER_START}\nnew\n{MARKER_END}")
    text = path.read_text()
    assert other in text
    assert text.endswith("footer\n")
    assert f"{MARKER_START}\nnew\n{MARKER_END}" in text
    assert "IPS (IPW)" not in text
    path.write_text("# Benchmarks\n\n" + other + "\n")
    update_markdown(path, section)  # appended after the others
    assert path.read_text().index(other) < path.read_text().index(MARKER_START)


@pytest.mark.data
def test_real_sample_bts_from_random_logs(shared_data: Path) -> None:
    data = shared_data / "open_bandit_sample"
    if not data.is_dir():
        pytest.skip(f"no Open Bandit sample at {data}")
    random_logs, items = load_logs(data, "random", "all")
    assert len(random_logs) == 10_000
    assert len(items) == 80
    np.testing.assert_allclose(random_logs["propensity_score"], 1 / 80)
    bts_logs, _ = load_logs(data, "bts", "all")
    np.testing.assert_allclose(evaluation_policy(bts_logs, 80, 3).sum(axis=1), 1.0)

    result = evaluate_campaign(data, "all", n_boot=200)
    assert result.truth.point == pytest.approx(42 / 10_000)  # 42 clicks in the BTS sample
    assert result.clicks_random == 38
    for label, ci in result.estimates.items():
        assert ci.lo <= ci.point <= ci.hi, label
        assert 0 < ci.point < 0.02, label
    # IPS is unbiased here (uniform logging covers every item): its interval meets the truth's.
    ips = result.estimates["ips"]
    assert ips.lo <= result.truth.hi
    assert result.truth.lo <= ips.hi
    assert np.isfinite(result.relative_error("dr"))
