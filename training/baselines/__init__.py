"""Baselines behind the same small interface as the model (issue 4).

Four families, each a `training.interface.Scorer` with `save` / `load`:

* `Popularity`: the items bought most in the training window (optionally only its last weeks), the same
  list for every row.
* `OwnHistory`: the customer's own past items (P-TopFreq / TIFU-KNN-like repeat purchases), purchases
  weighing most, carts next, views least, decayed by recency; the rest of the list filled by popularity.
* `ItemKNN`: item-item co-occurrence within customers' histories (cosine, top-M neighbours per item); a
  row's score sums the similarities of its recent items, optionally mixed with its own-history score.
* `LightGBMAggregates`: LightGBM on the aggregate (RFM and engagement) features for the stage, each
  propensity, unsubscribing, and a T-learner of the outcome of each action (inverse-propensity weighted).

The recommenders rank the whole catalogue (vocabulary indices FIRST .. n_items - 1), never a sample.
Their knobs are chosen on the validation split from small grids inside `fit` (the chosen values end in
`_`, like every fitted attribute). `all_baselines` builds the default set from a `BaselineConfig`.

Nothing here pickles objects: arrays go to `.npz` / scipy's sparse `.npz`, LightGBM models to its text
format, and everything else to `meta.json`.
"""

from training.baselines.calibration import Calibration, Calibrator
from training.baselines.common import history_matrix, popularity_order, rank_items, ranking_quality
from training.baselines.defaults import BASELINES, BaselineConfig, all_baselines, load_baseline
from training.baselines.item_knn import ItemKNN, cosine_neighbours, customer_item_matrix
from training.baselines.lightgbm import LightGBMAggregates
from training.baselines.own_history import OwnHistory
from training.baselines.popularity import Popularity

__all__ = [
    "BASELINES",
    "BaselineConfig",
    "Calibration",
    "Calibrator",
    "ItemKNN",
    "LightGBMAggregates",
    "OwnHistory",
    "Popularity",
    "all_baselines",
    "cosine_neighbours",
    "customer_item_matrix",
    "history_matrix",
    "load_baseline",
    "popularity_order",
    "rank_items",
    "ranking_quality",
]
