"""Variants of the sequence model's repeat head on the simulated shop, alone (no baselines), one seed.

    .venv/bin/python benchmarks/repeat_ablation.py --features /tmp/journey-sim-bench/features \
        --variants base prior scale8 [--train-rows 30000 --epochs 3]

`--features` is a features build of `benchmarks/simulated.py` (its `--work`/features). Variants:
`base` (the shipped model), `prior` (repeat weights initialised like the own-history baseline),
`scale8` (twice the repeat scale). Prints one JSON line per variant: fit seconds and the test metrics.
Exploratory: no intervals, one seed; it says what was tried, not what wins.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.data import FeatureBuild  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.sequence import FitConfig, SequenceScorer, model_config_for  # noqa: E402

VARIANTS: dict[str, dict[str, object]] = {
    "base": {},
    "prior": {"repeat_prior": True},
    "scale8": {"repeat_scale": 8.0},
}
KEYS = ("rec/recall_at_10", "rec/ndcg_at_10", "rec/repeat/recall_at_10", "rec/explore/recall_at_10",
        "stage/macro_f1", "purchase_7d/roc_auc")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--train-rows", type=int, default=30_000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    build = FeatureBuild.open(args.features)
    train, valid, test = build.split("train"), build.split("valid"), build.split("test")
    for name in args.variants:
        started = time.perf_counter()
        config = model_config_for(build, **VARIANTS[name])
        fit = FitConfig(max_epochs=args.epochs, patience=args.epochs, max_train_rows=args.train_rows, seed=0)
        scorer = SequenceScorer(config, fit, progress=False).fit(train, valid)
        result = evaluate(scorer.predict(test, k=10), test, catalogue_size=len(build.catalogue), ks=(10,),
                          n_boot=0, name=name)  # fmt: skip
        seconds = round(time.perf_counter() - started)
        print(name, seconds, json.dumps({k: round(result.metrics[k], 4) for k in KEYS}), flush=True)


if __name__ == "__main__":
    main()
