"""A click-only shop (`SimConfig.click_only`): sessions of product views, nothing else.

What a click stream (RetailRocket's views, a content site) looks like to the engine: no purchases, no carts,
no e-mails, only visits in which a customer views one product after another. The shop's journey world
(`features.sim.world`) is no use here: it draws the items of a day's browsing independently of each other
given the customer (their category taste, their recent views), so within a session the order of views
carries nothing that a co-occurrence method does not already have. This world has the sequential
structure that real browsing has and that a session recommender is for. Its latent truth, all of it
written to `truth/successors.parquet` (the transitions) or stated here:

* Items: the journey world's catalogue (categories of Zipf popularity, items of Zipf popularity within
  them). Each item has `_SUCCESSORS` successors, the items a visitor goes on to from it (related products,
  "customers who viewed this next viewed"): each in the item's own category with probability
  `_SAME_CATEGORY`, else in its category's partner category (accessories after the main product), any
  item of the category alike (related products are not only the best sellers), followed with weights
  1/rank. Successors are one-way: j following i says nothing of i following j, which a symmetric
  co-occurrence cannot tell apart.
* Customers: a category taste (Dirichlet around the global category popularity, as in the journey world)
  and an activity level (lognormal); they arrive as in the journey world (`initial_share` exist at the
  start, the rest on a uniform day).
* Sessions: each day a customer visits with probability `_VISIT_RATE` x activity (at most once), at a
  uniform time between 07:00 and 23:00. A visit has Geometric(`_END`) views (1 or more, mean 5), at most
  `_MAX_VIEWS`, each 5 s + Exponential(40 s) after the last (never 30 minutes: one visit, one session).
* Views: the first view of a visit is, with probability `_REVISIT`, an item of the customer's earlier
  visits (one of the last `_MEMORY` views, recent ones likelier: a return to what they looked at), else a
  draw from their taste. Every later view is a successor of the previous view with probability `_FOLLOW`,
  a view of an earlier item of this visit with probability `_BACK` (going back to compare), else a fresh
  draw from the taste.

So the next view depends on the last view (direction included), on the visit so far, and on the
customer's taste and earlier visits, which a model that reads the whole history can use and a session
k-NN, which sees only the current visit, cannot.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features import schema
from features.schema import Channel, EventType
from features.sim.catalog import _Catalog
from features.sim.config import SimConfig
from features.sim.writer import _dictionary, _fixed_strings, _item_ids, _timestamps

_SUCCESSORS = 6
_SAME_CATEGORY = 0.85
_VISIT_RATE = 0.15
_END = 0.2
_MAX_VIEWS = 30
_REVISIT = 0.3
_MEMORY = 8
_FOLLOW = 0.6
_BACK = 0.1
_APP_SHARE_OF_VISITS = 0.35
_DAY_S = 86_400


def successors(cat: _Catalog, rng: np.random.Generator) -> np.ndarray:
    """(n_items, _SUCCESSORS) the successor items of every item, most likely first (module doc)."""
    n_items, k = len(cat.category), len(cat.category_weight)
    partner = (np.arange(k) + 1 + rng.integers(0, max(k - 1, 1), size=k)) % k if k > 1 else np.zeros(1, int)
    own = np.repeat(cat.category, _SUCCESSORS)
    category = np.where(rng.random(len(own)) < _SAME_CATEGORY, own, partner[own])
    out = _uniform_in(cat, category, rng).reshape(n_items, _SUCCESSORS)
    # An item is not its own successor: another item of its category instead (one more draw).
    self_loop = out == np.arange(n_items)[:, None]
    out[self_loop] = _uniform_in(cat, cat.category[np.nonzero(self_loop)[0]], rng)
    return out


def _uniform_in(cat: _Catalog, category: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An item of each given category, every item of it equally likely."""
    counts = np.bincount(cat.category, minlength=len(cat.category_weight))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = starts[category] + np.floor(rng.random(len(category)) * counts[category]).astype(np.int64)
    return np.asarray(cat.by_category[pos], dtype=np.int64)


def _by_popularity(cat: _Catalog, category: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An item of each given category, drawn by popularity within it."""
    pos = np.searchsorted(cat.cum, category + rng.random(len(category)))
    return np.asarray(cat.by_category[np.minimum(pos, len(cat.by_category) - 1)], dtype=np.int64)


def _chunk(cfg: SimConfig, cat: _Catalog, succ: np.ndarray, first: int, n: int, rng: np.random.Generator):
    """The views of customers [first, first + n): (customer, ts in us, item, session number) arrays."""
    existing = rng.random(n) < cfg.initial_share
    arrival = np.where(existing, 0, rng.integers(0, cfg.days, size=n))
    activity = np.clip(rng.lognormal(-0.18, 0.6, size=n), 0.2, 5.0)
    taste = rng.dirichlet(cfg.taste_concentration * cat.category_weight, size=n)
    taste = 0.92 * np.nan_to_num(taste) + 0.08 * cat.category_weight
    taste_cum = np.cumsum(taste, axis=1)
    taste_cum /= taste_cum[:, -1:]
    memory = np.full((n, _MEMORY), -1, dtype=np.int64)  # the last views, most recent last
    follow_p = (1.0 / np.arange(1, _SUCCESSORS + 1)).cumsum()
    follow_p /= follow_p[-1]
    start_us = int(dt.datetime.combine(cfg.start_date, dt.time(), tzinfo=dt.UTC).timestamp() * 1e6)

    def taste_draw(c: np.ndarray) -> np.ndarray:
        category = np.minimum((taste_cum[c] < rng.random(len(c))[:, None]).sum(axis=1), len(cat.names) - 1)
        return _by_popularity(cat, category, rng)

    out: list[tuple[np.ndarray, ...]] = []
    for day in range(cfg.days):
        visit = (arrival <= day) & (rng.random(n) < np.minimum(_VISIT_RATE * activity, 0.9))
        c = np.flatnonzero(visit)
        if len(c) == 0:
            continue
        length = np.minimum(rng.geometric(_END, size=len(c)), _MAX_VIEWS)  # 1 or more, mean 5
        views = np.full((len(c), _MAX_VIEWS), -1, dtype=np.int64)
        # The first view: back to an earlier visit's item, or the taste.
        remembered = memory[c, _MEMORY - 1 - np.floor(_MEMORY * rng.random(len(c)) ** 2).astype(int)]
        revisit = (rng.random(len(c)) < _REVISIT) & (remembered >= 0)
        views[:, 0] = np.where(revisit, remembered, taste_draw(c))
        for j in range(1, int(length.max())):
            u = rng.random(len(c))
            nxt = succ[views[:, j - 1], np.searchsorted(follow_p, rng.random(len(c)))]
            back = views[np.arange(len(c)), np.floor(rng.random(len(c)) * j).astype(int)]
            views[:, j] = np.where(u < _FOLLOW, nxt, np.where(u < _FOLLOW + _BACK, back, taste_draw(c)))
        real = np.arange(_MAX_VIEWS)[None, :] < length[:, None]
        views[~real] = -1
        # Times: a uniform start between 07:00 and 23:00, then short gaps.
        begin = rng.uniform(7 * 3600, 23 * 3600, size=len(c))
        gaps = 5.0 + rng.exponential(40.0, size=views.shape)
        gaps[:, 0] = 0.0
        secs = np.minimum(begin[:, None] + np.cumsum(gaps, axis=1), _DAY_S - 1)
        rows, cols = np.nonzero(real)
        ts = start_us + day * _DAY_S * 1_000_000 + (secs[rows, cols] * 1e6).astype(np.int64)
        out.append((c[rows], ts, views[rows, cols], np.full(len(rows), day)))
        # Memory: the visit's views appended, the oldest dropped.
        seen = np.concatenate([memory[c], np.where(real, views, -1)], axis=1)
        order = np.argsort(seen >= 0, axis=1, kind="stable")  # empty slots first, the rest in order
        memory[c] = np.take_along_axis(seen, order, axis=1)[:, -_MEMORY:]
    if not out:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    cust, ts, item, day_of = (np.concatenate(parts) for parts in zip(*out, strict=True))
    order = np.lexsort((ts, cust))
    return cust[order], ts[order], item[order], day_of[order]


def _table(cfg: SimConfig, cat: _Catalog, first: int, n: int, cols: tuple[np.ndarray, ...]) -> pa.Table:
    cust, ts, item, day = cols
    w, dw = max(7, len(str(cfg.n_customers))), max(3, len(str(cfg.days - 1)))
    number = cust + first + 1
    cust_ids = _fixed_strings(["C", (np.arange(first + 1, first + n + 1), w)], n)
    seq = np.arange(len(cust)) - np.searchsorted(cust, cust, side="left")
    app = np.isin(number % 100, np.arange(int(100 * _APP_SHARE_OF_VISITS)))  # a customer's one device
    channel = np.where(app, schema.CHANNELS.index(Channel.APP), schema.CHANNELS.index(Channel.WEB))
    arrays = {
        "customer_id": pa.DictionaryArray.from_arrays(pa.array(cust.astype(np.int32)), cust_ids),
        "ts": _timestamps(ts),
        "event_type": _dictionary(
            np.full(len(cust), schema.EVENT_TYPES.index(EventType.PRODUCT_VIEW)),
            pa.array(schema.EVENT_TYPES),
            pa.int8(),
        ),
        "channel": _dictionary(channel, pa.array(schema.CHANNELS), pa.int8()),
        "item_id": _dictionary(item, _item_ids(len(cat.price)), pa.int32()),
        "category": _dictionary(cat.category[item], pa.array(cat.names), pa.int16()),
        "value": pa.nulls(len(cust), pa.float64()),
        "quantity": pa.nulls(len(cust), pa.float64()),
        "message_type": pa.nulls(len(cust), pa.string()),
        "campaign_id": pa.nulls(len(cust), pa.string()),
        "session_id": _fixed_strings(["C", (number, w), "-S", (day, dw)], len(cust)),
        "event_id": _fixed_strings(["C", (number, w), "-E", (seq, 6)], len(cust)),
    }
    fields = [pa.field(f.name, arrays[f.name].type, nullable=f.nullable) for f in schema.EVENT_SCHEMA]
    return pa.Table.from_arrays([arrays[f.name] for f in fields], schema=pa.schema(fields))


def simulate_clicks(cfg: SimConfig, cat: _Catalog, seed: np.random.SeedSequence, out: Path) -> int:
    """Writes `events/part-NNNNN.parquet` (one per chunk) and `truth/successors.parquet`; returns the
    number of events."""
    succ_seed, chunks_seed = seed.spawn(2)
    succ = successors(cat, np.random.default_rng(succ_seed))
    n_items = len(cat.price)
    ids = _item_ids(n_items)
    pq.write_table(
        pa.table({
            "item_id": ids.take(pa.array(np.repeat(np.arange(n_items), _SUCCESSORS))),
            "successor_id": ids.take(pa.array(succ.ravel())),
            "rank": pa.array(np.tile(np.arange(1, _SUCCESSORS + 1), n_items).astype(np.int8)),
        }),
        out / "truth" / "successors.parquet",
    )  # fmt: skip
    n_chunks = -(-cfg.n_customers // cfg.chunk_size)
    total = 0
    for i, chunk_seed in enumerate(chunks_seed.spawn(n_chunks)):
        first = i * cfg.chunk_size
        n = min(cfg.chunk_size, cfg.n_customers - first)
        cols = _chunk(cfg, cat, succ, first, n, np.random.default_rng(chunk_seed))
        table = _table(cfg, cat, first, n, cols)
        pq.write_table(table, out / "events" / f"part-{i:05d}.parquet")
        total += table.num_rows
    return total
