"""What the load benchmark scores, prepared once and cached in `--work` (outside the repository): a
simulated shop with a 100,000-item catalogue, its features, a small sequence model registered as
`journey-scorer@champion` in an MLflow store under `--work`, an online store (SQLite) holding the
histories of the customers to be scored, and the request bodies built from them.

The item vocabulary of a build only keeps items seen in the training window, and a simulated shop of a
few million events touches fewer than half of 100,000 items (the simulator draws items from Zipf tails),
so the items never seen there are appended to the vocabulary after the fitted ones: the model ranks the
whole catalogue, with untrained embeddings for those items (the results state both counts).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.load_protocol import HISTORY_LEN, INLINE_EVENTS, N_ITEMS_ANSWERED, PREP_VERSION


@dataclass(frozen=True)
class ShopPlan:
    """The shop, the model's training budget and the customers of each path."""

    customers: int = 20_000
    items: int = 100_000
    days: int = 182
    seed: int = 0
    epochs: int = 2
    train_rows: int = 8_000
    valid_rows: int = 2_000
    stored_customers: int = 4_000
    inline_customers: int = 1_000


def prep_key(plan: ShopPlan) -> dict[str, Any]:
    """What the cached artefacts depend on: the plan, the model's default shape, PREP_VERSION."""
    from dataclasses import asdict

    from predictor.model import ModelConfig

    # The model's shape follows the project's defaults, so a change of default retrains the model.
    shape = {k: v for k, v in asdict(ModelConfig()).items() if k not in ("token_sizes", "n_items", "targets")}
    return {"version": PREP_VERSION, "model": shape, **asdict(plan)}


def tracking_uri(work: Path) -> str:
    return f"sqlite:///{(work / 'mlruns' / 'mlflow.db').resolve()}"


def prepare(work: Path, plan: ShopPlan, log: Callable[[str], None]) -> dict[str, Any]:
    """Shop, features (catalogue-wide vocabulary), registered model and a filled store, cached by key."""
    marker = work / "prepared.json"
    key = prep_key(plan)
    if marker.exists():
        prepared: dict[str, Any] = json.loads(marker.read_text())
        if prepared.get("key") == key:
            log(f"prepared artefacts reused from {work}")
            return prepared
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    import mlflow
    import numpy as np
    import torch

    from features.build import build_features
    from features.sim import SimConfig, simulate
    from features.snapshots import BuildConfig
    from predictor.registry import CHAMPION, MODEL_NAME, configure
    from serving.store import open_store
    from training.data import FeatureBuild
    from training.registry import log_scorer
    from training.sequence import FitConfig, SequenceScorer, model_config_for

    shop, features = work / "shop", work / "features"
    log(f"simulating {plan.customers:,} customers, {plan.items:,} items, {plan.days} days")
    sim = SimConfig(n_customers=plan.customers, n_items=plan.items, days=plan.days, seed=plan.seed)
    simulate(sim, shop, progress=False)
    log("building features")
    build_features(
        shop / "events", features, BuildConfig(), decisions=shop / "decisions.parquet", progress=False
    )
    fitted, appended, shop_items = _extend_vocabulary(shop, features)

    build = FeatureBuild.open(features)
    train, valid = build.split("train"), build.split("valid")
    if len(valid) > plan.valid_rows:
        rng = np.random.default_rng(plan.seed)
        valid = valid.subset(np.sort(rng.choice(len(valid), plan.valid_rows, replace=False)))
    model_config = model_config_for(build)
    fit = FitConfig(
        max_epochs=plan.epochs, patience=plan.epochs, max_train_rows=plan.train_rows, seed=plan.seed
    )
    train_rows = min(len(train), plan.train_rows or len(train))
    log(f"training on {train_rows:,} of {len(train):,} rows, {plan.epochs} epochs, {build.n_items:,} items")
    torch.set_num_threads(os.cpu_count() or 1)
    scorer = SequenceScorer(model_config, fit, progress=False).fit(train, valid)

    events = shop_events(shop)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(work)
    configure("serving-load")
    log("registering the model")
    with mlflow.start_run(run_name="serving-load-benchmark"):
        version = str(log_scorer(scorer, build.vocab, events.head(20)))
    mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, CHAMPION, version)

    stored, inline, now = choose_customers(events, plan.stored_customers, plan.inline_customers, plan.seed)
    log(f"filling the store with the histories of {len(stored):,} customers")
    history = events[events["customer_id"].isin(set(stored))]
    with open_store(f"sqlite:///{work / 'store-seed.db'}", max_events=HISTORY_LEN) as store:
        for lo in range(0, len(history), 50_000):
            store.append_events(history.iloc[lo : lo + 50_000])
    prepared = {
        "key": key,
        "customers": plan.customers,
        "events": len(events),
        "shop_customers": int(events["customer_id"].nunique()),
        "shop_items": shop_items,
        "items_fitted": fitted,
        "items_appended": appended,
        "catalogue_size": fitted + appended,
        "model": f"{model_config.encoder}, d_model {model_config.d_model}, {model_config.n_layers} layers, "
        f"max_len {model_config.max_len}",
        "epochs": len(scorer.history_) or plan.epochs,
        "train_rows": train_rows,
        "version": version,
        "stored_customers": len(stored),
        "stored_events": len(history),
        "inline_customers": len(inline),
        "now": now,
        "seconds": round(time.perf_counter() - started, 1),
    }
    marker.write_text(json.dumps(prepared, indent=2))
    log(f"prepared in {prepared['seconds']:.0f} s")
    return prepared


def _extend_vocabulary(shop: Path, features: Path) -> tuple[int, int, int]:
    """The whole catalogue in the build's vocabulary: the fitted items keep their indices (so the rows stay
    valid), the rest of the catalogue follows, most popular first. Returns (fitted, appended, shop items)."""
    import pandas as pd

    from features.vocab import Vocabulary

    vocab = Vocabulary.load(features / "vocab.json")
    fitted = list(vocab.tokens["item_id"])
    catalog = pd.read_parquet(shop / "catalog.parquet").sort_values(
        ["popularity", "item_id"], ascending=[False, True], kind="stable"
    )
    known = set(fitted)
    appended = [i for i in catalog["item_id"].astype(str) if i not in known]
    vocab.tokens["item_id"] = fitted + appended
    vocab.counts["item_id"] = list(vocab.counts.get("item_id", [0] * len(fitted))) + [0] * len(appended)
    vocab.save(features / "vocab.json")
    manifest = json.loads((features / "manifest.json").read_text())
    manifest["vocab_sizes"]["item_id"] = vocab.size("item_id")
    manifest["token_sizes"]["item_id"] = vocab.size("item_id")
    manifest["catalogue_extension"] = {"fitted": len(fitted), "appended": len(appended)}
    (features / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return len(fitted), len(appended), len(catalog)


def shop_events(shop: Path) -> Any:
    """The shop's events, sorted by (customer, time), categorical columns as plain objects."""
    import pandas as pd

    events = pd.read_parquet(shop / "events")
    for col in events.columns:
        if isinstance(events[col].dtype, pd.CategoricalDtype):
            events[col] = events[col].astype(object)
    return events.sort_values(["customer_id", "ts"], kind="stable").reset_index(drop=True)


def choose_customers(
    events: Any, n_stored: int, n_inline: int, seed: int
) -> tuple[list[str], list[str], str]:
    """Customers for the stored path (at least 5 events) and the inline path (at least INLINE_EVENTS
    events, none of them stored), drawn with a seed; `now`: noon of the day after the last event."""
    import numpy as np
    import pandas as pd

    counts = events["customer_id"].value_counts().sort_index()
    rng = np.random.default_rng(seed)
    inline_pool = np.asarray(counts[counts >= INLINE_EVENTS].index, dtype=object)
    inline = sorted(rng.choice(inline_pool, min(n_inline, len(inline_pool)), replace=False).tolist())
    rest = counts[(counts >= 5) & ~counts.index.isin(inline)]
    stored_pool = np.asarray(rest.index, dtype=object)
    stored = rng.choice(stored_pool, min(n_stored, len(stored_pool)), replace=False).tolist()
    now = (pd.Timestamp(events["ts"].max()).normalize() + pd.Timedelta(hours=36)).isoformat()
    return stored, inline, now


def event_rows(events: Any) -> list[dict[str, Any]]:
    """Events as JSON-ready rows of the API's contract (missing fields left out)."""
    import pandas as pd

    rows = []
    for r in events.to_dict(orient="records"):
        row = {k: v for k, v in r.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
        row["ts"] = pd.Timestamp(r["ts"]).isoformat()
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Bodies:
    """JSON bodies of each path: `/v1/score` stored (customer_id only) and inline (customer_id and their
    last INLINE_EVENTS events), MLflow's `/invocations` (the inline events as `dataframe_split`)."""

    stored: list[str]
    inline: list[str]
    mlflow: list[str]

    @property
    def stored_ids(self) -> list[str]:
        return [json.loads(b)["customer_id"] for b in self.stored]


def request_bodies(prepared: dict[str, Any], shop: Path) -> Bodies:
    """The bodies of every path, for the customers `choose_customers` drew when the store was filled."""
    from features.schema import EVENT_COLUMNS

    events = shop_events(shop)
    stored, inline, now = choose_customers(
        events, prepared["stored_customers"], prepared["inline_customers"], prepared["key"]["seed"]
    )
    context = {"now": now, "channels": ["email"], "n_items": N_ITEMS_ANSWERED}
    stored_bodies = [json.dumps({"customer_id": c, "context": context}) for c in stored]
    last = events[events["customer_id"].isin(set(inline))].groupby("customer_id").tail(INLINE_EVENTS)
    inline_events = {str(c): event_rows(g) for c, g in last.groupby("customer_id", sort=True)}
    inline_bodies, mlflow_bodies = [], []
    for c, rows in inline_events.items():
        inline_bodies.append(json.dumps({"customer_id": c, "events": rows, "context": context}))
        data = [[row.get(col) for col in EVENT_COLUMNS] for row in rows]
        split = {"columns": list(EVENT_COLUMNS), "data": data}
        mlflow_bodies.append(
            json.dumps({"dataframe_split": split, "params": {"now": now, "k": N_ITEMS_ANSWERED}})
        )
    return Bodies(stored_bodies, inline_bodies, mlflow_bodies)


def audience_segment(shop: Path, n: int, path: Path) -> int:
    """Writes the first `n` customers of the shop (by id) to a CSV segment for `journey score-audience`;
    returns how many there are (fewer when the shop has fewer)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    column = ds.dataset(shop / "events", format="parquet").to_table(columns=["customer_id"])["customer_id"]
    ids = sorted(str(c) for c in pc.unique(column.cast(pa.string())).to_pylist())[:n]
    pd.DataFrame({"customer_id": ids}).to_csv(path, index=False)
    return len(ids)
