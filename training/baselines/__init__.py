"""Baselines behind the same small interface as the model (issue 4).

The families, each a `training.interface.Scorer` with `save` / `load`:

* `Popularity`: the items bought most in the training window (optionally only its last weeks), the same
  list for every row.
* `OwnHistory`: the customer's own past items (P-TopFreq / TIFU-KNN-like repeat purchases), purchases
  weighing most, carts next, views least, decayed by recency; the rest of the list filled by popularity.
* `ItemKNN`: item-item co-occurrence within customers' histories (cosine, top-M neighbours per item); a
  row's score sums the similarities of its recent items, optionally mixed with its own-history score.
* `TIFUKNN`: TIFU-KNN (Hu et al. 2020): the customer's purchase baskets as a time-decayed item-frequency
  vector, mixed with the mean vector of the most similar training customers (user k-NN, cosine).
* `LightGBMAggregates`: LightGBM on the aggregate (RFM and engagement) features for the stage, each
  propensity, unsubscribing, and a T-learner of the outcome of each action (inverse-propensity weighted).
* `LogisticRF`: one logistic regression per propensity head on log recency and log frequency.
* `BGNBD`: the BG/NBD buy-till-you-die model (pymc-marketing) for the purchase-in-window heads.
* `SessionKNN`: session item-KNN for click streams (a build in session mode): items that co-occur within
  sessions with the current session's items, decayed by recency (the defaults in session mode).

The recommenders rank the whole catalogue (vocabulary indices FIRST .. n_items - 1), never a sample.
Their knobs are chosen on the validation split from small grids inside `fit` (the chosen values end in
`_`, like every fitted attribute). `all_baselines` builds the default set from a `BaselineConfig`.

Nothing here pickles objects: arrays go to `.npz` / scipy's sparse `.npz`, LightGBM models to its text
format, and everything else to `meta.json`.
"""

from predictor.served_heads import Calibrator
from training.baselines.bgnbd import BGNBD
from training.baselines.calibration import Calibration
from training.baselines.common import history_matrix, popularity_order, rank_items, ranking_quality
from training.baselines.defaults import BASELINES, BaselineConfig, all_baselines, load_baseline
from training.baselines.item_knn import ItemKNN, cosine_neighbours, customer_item_matrix
from training.baselines.lightgbm import LightGBMAggregates
from training.baselines.logistic import LogisticRF
from training.baselines.own_history import OwnHistory
from training.baselines.popularity import Popularity
from training.baselines.session_knn import SessionKNN
from training.baselines.tifu_knn import TIFUKNN, nearest_customers, personal_vectors

__all__ = [
    "BASELINES",
    "BGNBD",
    "TIFUKNN",
    "BaselineConfig",
    "Calibration",
    "Calibrator",
    "ItemKNN",
    "LightGBMAggregates",
    "LogisticRF",
    "OwnHistory",
    "Popularity",
    "SessionKNN",
    "all_baselines",
    "cosine_neighbours",
    "customer_item_matrix",
    "history_matrix",
    "load_baseline",
    "nearest_customers",
    "personal_vectors",
    "popularity_order",
    "rank_items",
    "ranking_quality",
]
