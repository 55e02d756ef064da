"""The simulated shop's catalogue: categories of Zipf popularity, items of Zipf popularity within them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.sim.config import SimConfig

_CATEGORY_NAMES: tuple[str, ...] = (
    "apparel",
    "shoes",
    "accessories",
    "beauty",
    "fragrance",
    "home_decor",
    "kitchen",
    "furniture",
    "garden",
    "electronics",
    "phones",
    "computers",
    "gaming",
    "books",
    "music",
    "toys",
    "baby",
    "sports",
    "outdoor",
    "fitness",
    "pets",
    "grocery",
    "health",
    "jewelry",
    "watches",
    "bags",
    "stationery",
    "crafts",
    "automotive",
    "tools",
    "lighting",
    "bedding",
    "bath",
    "travel",
    "party",
    "wine",
    "coffee_tea",
    "snacks",
    "cameras",
    "audio",
)


@dataclass(frozen=True)
class _Catalog:
    category: np.ndarray  # [items] category index
    price: np.ndarray  # [items]
    popularity: np.ndarray  # [items] marginal probability of an item under the average taste
    category_weight: np.ndarray  # [K] global category popularity (the mean of the customers' tastes)
    by_category: np.ndarray  # item indices sorted by category
    cum: np.ndarray  # within-category cumulative probability + category index, in `by_category` order
    names: tuple[str, ...]


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf weights over n things in a random order."""
    w = 1.0 / np.power(np.arange(1, n + 1), exponent)
    return np.asarray(rng.permutation(w / w.sum()))


def _make_catalog(cfg: SimConfig, rng: np.random.Generator) -> _Catalog:
    k = cfg.n_categories
    names = tuple(_CATEGORY_NAMES[i] if i < len(_CATEGORY_NAMES) else f"category_{i:03d}" for i in range(k))
    cat_weight = _zipf(k, 1.0, rng)
    # Popular categories carry more items; every category at least one.
    category = np.concatenate(
        [np.arange(k), rng.choice(k, size=cfg.n_items - k, p=np.sqrt(cat_weight) / np.sqrt(cat_weight).sum())]
    )
    category = rng.permutation(category)
    by_category = np.argsort(category, kind="stable")
    within = np.empty(cfg.n_items)
    cum = np.empty(cfg.n_items)
    counts = np.bincount(category, minlength=k)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for c in range(k):
        sl = slice(starts[c], starts[c] + counts[c])
        p = _zipf(int(counts[c]), 1.05, rng)
        within[by_category[sl]] = p
        c_cum = np.cumsum(p)
        c_cum[-1] = 1.0  # exact end, so that a draw never spills into the next category
        cum[sl] = c + c_cum
    median_price = np.exp(rng.normal(3.4, 0.8, size=k))
    price = median_price[category] * np.exp(rng.normal(0.0, 0.5, size=cfg.n_items))
    price = np.maximum(np.round(price) - 0.01, 0.99)
    return _Catalog(
        category=category,
        price=price,
        popularity=cat_weight[category] * within,
        category_weight=cat_weight,
        by_category=by_category,
        cum=cum,
        names=names,
    )
