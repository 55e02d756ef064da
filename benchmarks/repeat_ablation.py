"""Variants of the sequence model's repeat head on the simulated shop, alone (no baselines), one seed.

    .venv/bin/python -m benchmarks.repeat_ablation --features /tmp/journey-sim-bench/features \
        --variants base prior scale8 [--train-rows 30000 --epochs 3]

`--features` is a features build of `benchmarks.simulated` (its `--work`/features). Variants:
`base` (the shipped model), `prior` (repeat weights initialised like the own-history baseline),
`scale8` (twice the repeat scale). Prints one JSON line per variant: fit seconds and the test metrics.
Exploratory: no intervals, one seed; it says what was tried, not what wins.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks._harness import make_parser
from training.data import FeatureBuild
from training.evaluate import evaluate
from training.sequence import FitConfig, SequenceScorer, model_config_for

VARIANTS: dict[str, dict[str, object]] = {
    "base": {},
    "prior": {"repeat_prior": True},
    "scale8": {"repeat_scale": 8.0},
}
KEYS = ("rec/recall_at_10", "rec/ndcg_at_10", "rec/repeat/recall_at_10", "rec/explore/recall_at_10",
        "stage/macro_f1", "purchase_7d/roc_auc")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--train-rows", type=int, default=30_000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
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
