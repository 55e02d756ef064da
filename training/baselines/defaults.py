"""The default set of baselines: their knobs (`BaselineConfig`), building them, and loading any of them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from training.baselines.bgnbd import BGNBD
from training.baselines.calibration import Calibration
from training.baselines.common import META, _Saveable
from training.baselines.item_knn import ItemKNN
from training.baselines.lightgbm import LightGBMAggregates
from training.baselines.logistic import LogisticRF
from training.baselines.own_history import OwnHistory
from training.baselines.popularity import Popularity
from training.baselines.session_knn import SessionKNN
from training.baselines.tifu_knn import TIFUKNN
from training.interface import Scorer


@dataclass(frozen=True)
class BaselineConfig:
    """The knobs of the default baselines; grids are candidates chosen on the validation split.

    Attributes:
        baselines: which baselines `all_baselines` builds, in order. Left at this default, a build in
            session mode gets `SESSION_BASELINES` instead: the recommenders a click stream is judged
            against (its stage and propensity labels at a session prefix are not what it is built for).
        tune_k: cut-off of the validation NDCG that picks the recommenders' knobs.
        popularity_weeks_grid: recency windows of popularity in weeks (None: the whole training window).
        popularity_interaction_weight: weight of sequence events beside purchases in popularity.
        own_cart_weight_grid: own history: candidate add-to-cart weights (purchase = 1).
        own_view_weight_grid: own history: candidate product-view weights.
        own_decay_grid: own history: candidate recency factors per item event.
        knn_neighbours: item k-NN: neighbours kept per item.
        knn_decay: item k-NN: recency factor of the query items.
        knn_own_weight_grid: item k-NN: candidate weights of the own-history score in the mix.
        knn_popularity_weight_grid: item k-NN: candidate weights of popularity in the mix.
        tifu_neighbours_grid: TIFU-KNN: candidate numbers of neighbours (k).
        tifu_alpha_grid: TIFU-KNN: candidate weights of the customer's own vector (alpha).
        tifu_within_decay_grid: TIFU-KNN: candidate decays between the baskets of a group (r_b).
        tifu_group_decay_grid: TIFU-KNN: candidate decays between groups of baskets (r_g).
        tifu_group_size_grid: TIFU-KNN: candidate baskets per group (m).
        tifu_browse_weight_grid: TIFU-KNN: candidate weights of carts and views in a day's basket (0:
            purchases only, the paper's method).
        tifu_max_tune_rows: TIFU-KNN: validation rows its knobs are chosen on at most (a seeded sample).
        session_knn_neighbours: session item-KNN: neighbours kept per item.
        session_knn_decay_grid: session item-KNN: candidate recency factors per view of the session.
        logistic_features: logistic regression: the aggregates it reads (log1p of each).
        logistic_c_grid: logistic regression: candidate inverse regularisation strengths (C).
        lgbm_learning_rate: LightGBM learning rate.
        lgbm_num_leaves: LightGBM leaves per tree.
        lgbm_min_child_samples: LightGBM rows per leaf.
        lgbm_max_rounds: LightGBM rounds at most.
        lgbm_early_stopping_rounds: LightGBM patience on the validation loss.
        ipw_clip: largest inverse-propensity weight of the T-learner.
        min_action_rows: logged rows an action needs for its own outcome model.
        calibration: "auto", "platt", "isotonic" or "none".
        seed: random seed.
        num_threads: LightGBM threads.
    """

    baselines: tuple[str, ...] = (
        "popularity",
        "own_history",
        "item_knn",
        "tifu_knn",
        "lightgbm_aggregates",
        "logistic_rf",
        "bg_nbd",
    )
    tune_k: int = 10
    popularity_weeks_grid: tuple[int | None, ...] = (None, 8, 4, 2, 1)
    popularity_interaction_weight: float = 0.0
    own_cart_weight_grid: tuple[float, ...] = (0.25, 0.5, 1.0)
    own_view_weight_grid: tuple[float, ...] = (0.1, 0.3, 0.6)
    own_decay_grid: tuple[float, ...] = (1.0, 0.95, 0.9, 0.8)
    knn_neighbours: int = 100
    knn_decay: float = 0.9
    knn_own_weight_grid: tuple[float, ...] = (0.0, 1.0, 4.0, 16.0)
    knn_popularity_weight_grid: tuple[float, ...] = (0.0, 0.5, 2.0)
    tifu_neighbours_grid: tuple[int, ...] = (100, 300)
    tifu_alpha_grid: tuple[float, ...] = (0.7, 0.9, 1.0)
    tifu_within_decay_grid: tuple[float, ...] = (0.9, 1.0)
    tifu_group_decay_grid: tuple[float, ...] = (0.6, 0.8)
    tifu_group_size_grid: tuple[int, ...] = (2, 4)
    tifu_browse_weight_grid: tuple[float, ...] = (0.0, 0.3)
    tifu_max_tune_rows: int = 5_000
    session_knn_neighbours: int = 200
    session_knn_decay_grid: tuple[float, ...] = (1.0, 0.8, 0.5)
    logistic_features: tuple[str, ...] = ("recency_days", "n_purchases")
    logistic_c_grid: tuple[float, ...] = (1.0, 0.1, 0.01, 10.0, 100.0)
    lgbm_learning_rate: float = 0.05
    lgbm_num_leaves: int = 31
    lgbm_min_child_samples: int = 100
    lgbm_max_rounds: int = 1000
    lgbm_early_stopping_rounds: int = 50
    ipw_clip: float = 50.0
    min_action_rows: int = 300
    calibration: Calibration = "auto"
    seed: int = 0
    num_threads: int = 2

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> BaselineConfig:
        """Builds a config from a mapping (YAML lists become tuples), naming any unknown key."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown baseline setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The default baselines of a build in session mode (`features.sessions`): next-item recommenders only.
SESSION_BASELINES: tuple[str, ...] = ("popularity", "own_history", "item_knn", "session_knn")


def all_baselines(
    config: Mapping[str, Any] | BaselineConfig | None = None, *, build: Mapping[str, Any] | None = None
) -> list[Scorer]:
    """The default baselines, unfitted, in `config.baselines` order.

    Args:
        config: a `BaselineConfig` or a mapping of its fields (None: the defaults).
        build: the features build's config (its manifest's `config`): in session mode the default list
            is `SESSION_BASELINES`, and session k-NN takes the build's session timeout.
    """
    cfg = config if isinstance(config, BaselineConfig) else BaselineConfig.from_dict(config)
    build = build or {}
    names = cfg.baselines
    if build.get("mode") == "sessions" and names == BaselineConfig().baselines:
        names = SESSION_BASELINES
    gap_minutes = float((build.get("sessions") or {}).get("gap_minutes", 30.0))
    factories: dict[str, Any] = {
        "popularity": lambda: Popularity(
            cfg.popularity_weeks_grid, cfg.popularity_interaction_weight, tune_k=cfg.tune_k
        ),
        "own_history": lambda: OwnHistory(
            cfg.own_cart_weight_grid,
            cfg.own_view_weight_grid,
            cfg.own_decay_grid,
            popularity_weeks_grid=cfg.popularity_weeks_grid,
            tune_k=cfg.tune_k,
        ),
        "item_knn": lambda: ItemKNN(
            cfg.knn_neighbours,
            decay=cfg.knn_decay,
            own_weight_grid=cfg.knn_own_weight_grid,
            popularity_weight_grid=cfg.knn_popularity_weight_grid,
            popularity_weeks_grid=cfg.popularity_weeks_grid,
            tune_k=cfg.tune_k,
        ),
        "tifu_knn": lambda: TIFUKNN(
            cfg.tifu_neighbours_grid,
            cfg.tifu_alpha_grid,
            cfg.tifu_within_decay_grid,
            cfg.tifu_group_decay_grid,
            cfg.tifu_group_size_grid,
            cfg.tifu_browse_weight_grid,
            popularity_weeks_grid=cfg.popularity_weeks_grid,
            tune_k=cfg.tune_k,
            max_tune_rows=cfg.tifu_max_tune_rows,
            seed=cfg.seed,
        ),
        "lightgbm_aggregates": lambda: LightGBMAggregates(
            learning_rate=cfg.lgbm_learning_rate,
            num_leaves=cfg.lgbm_num_leaves,
            min_child_samples=cfg.lgbm_min_child_samples,
            max_rounds=cfg.lgbm_max_rounds,
            early_stopping_rounds=cfg.lgbm_early_stopping_rounds,
            ipw_clip=cfg.ipw_clip,
            min_action_rows=cfg.min_action_rows,
            calibration=cfg.calibration,
            seed=cfg.seed,
            num_threads=cfg.num_threads,
        ),
        "logistic_rf": lambda: LogisticRF(cfg.logistic_features, cfg.logistic_c_grid),
        "bg_nbd": lambda: BGNBD(seed=cfg.seed),
        "session_knn": lambda: SessionKNN(
            cfg.session_knn_neighbours, cfg.session_knn_decay_grid, gap_minutes, tune_k=cfg.tune_k
        ),
    }
    unknown = [b for b in names if b not in factories]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; known: {', '.join(factories)}")
    return [factories[b]() for b in names]


BASELINES: dict[str, type[_Saveable]] = {
    cls.__name__: cls
    for cls in (Popularity, OwnHistory, ItemKNN, TIFUKNN, LightGBMAggregates, LogisticRF, BGNBD, SessionKNN)
}


def load_baseline(path: Path) -> Scorer:
    """Loads any baseline that `save` wrote, by the kind recorded in its `meta.json`."""
    kind = json.loads((Path(path) / META).read_text())["kind"]
    if kind not in BASELINES:
        raise ValueError(f"{path}: unknown baseline kind {kind!r}")
    loaded: Scorer = BASELINES[kind].load(Path(path))  # type: ignore[attr-defined]
    return loaded
