"""The next-best-action benchmark on Hillstrom's randomised e-mail test (MineThatData, 2008).

Customers were split at random in thirds: Mens E-Mail, Womens E-Mail, No E-Mail. The three arms are the
three actions; the logging propensity is 1/3 for every customer (uniform randomisation: the empirical
shares are checked and reported). The outcome (visit, conversion or spend in the two weeks after the
e-mail) is the reward.

Protocol:

1. Uplift per e-mail: for each e-mail arm against No E-Mail, the difference in visit rate, conversion rate
   and mean spend, with a paired percentile bootstrap interval over customers (both arms' means on the same
   resampled rows, `stats.paired_bootstrap`) and a normal (Welch) interval; the rates of the
   full 64,000-customer set (SOURCE.md) beside them.
2. Learned policies, cross-fitted over K folds (stratified by arm and outcome): every model is fitted on
   K - 1 folds and chooses the actions of the held-out fold, so each customer's action comes from a model
   that never saw them.

   * `T-learner (LightGBM)`: one LightGBM model per arm, outcome ~ customer features, early-stopped on an
     inner validation split of the arm's rows; policy = the arm with the highest predicted outcome.
   * `model (IPS-BCE net)`: a small PyTorch network with the action-outcome head of
     `predictor.model.JourneyModel`: a shared encoder of the customer's features (one-hot categoricals,
     scaled numerics) into a state, a linear head with one sigmoid per action, trained with
     inverse-propensity-weighted BCE on the logged action only (as `training.sequence.journey_loss`),
     early-stopped on an inner validation split; policy = the action with the highest predicted outcome.
   * `... conservative`: the same learner, but the policy sends the training folds' best constant e-mail
     unless the learner predicts another action better by more than a threshold. The threshold (0 = the
     plain argmax policy, infinity = the constant policy, or a quantile of the predicted gains) is chosen
     by IPS on the training folds, from predictions cross-fitted inside them (`--inner-folds`).

3. Values by IPS, SNIPS and DR (`training.ope`; DR's reward model = the cross-fitted T-learner
   predictions) with percentile bootstrap intervals over customers, for the learned policies, send
   everyone Mens, send everyone Womens, no e-mail, random uniform and the logging policy (its observed
   mean). Then paired bootstrap intervals of (learned policy - best constant policy): the best constant
   is picked by its IPS point value on all rows, which favours it slightly.
4. Fitted on one file, evaluated on another (`--train A.csv --test B.csv`, or one file split with
   `--split-test-share 0.3`): steps 1 to 3 as above on the train population, and beside them every learner
   and policy (feature design, thresholds and DR's reward model included) fitted once on all of the train
   population and evaluated on the test population, with the same estimators, intervals and paired
   differences. No fit ever sees a test row. The split is deterministic: a row is a test row when sha256
   of `hillstrom-split-{split seed}` and its row id (its position in the file, from 0) read as a number in
   [0, 1) is below the share (`hillstrom_data.split_by_row_id`), the rule of the service's control group.

Usage:
    .venv/bin/python -m benchmarks.hillstrom [--data CSV | --train CSV --test CSV] [--split-test-share 0.3]
        [--split-seed 0] [--outcome conversion [visit spend]] [--folds 5] [--inner-folds 3] [--seed 0]
        [--n-boot 1000] [--json PATH] [--markdown BENCHMARKS.md]

The pieces: `benchmarks.hillstrom_data` (the file, the arms, the uplift, the features),
`benchmarks.hillstrom_learners`, `benchmarks.hillstrom_policies` (cross-fitting, thresholds),
`benchmarks.hillstrom_estimates` (values and paired differences), `benchmarks.hillstrom_report`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmarks._harness import REPO, RESULTS, add_markdown, add_seed, command_line, make_parser, write_json
from benchmarks.hillstrom_data import (
    MODEL,
    MODEL_SINGLE,
    OUTCOMES,
    T_LEARNER,
    HillstromDataError,
    arm_rates,
    arm_shares,
    load_hillstrom,
    split_by_row_id,
    uplift_table,
)
from benchmarks.hillstrom_estimates import BenchmarkResult, HeldOut, OutcomeResult, evaluate_outcome
from benchmarks.hillstrom_learners import LGBMParams, NetParams
from benchmarks.hillstrom_report import markdown, to_json, update_markdown

DEFAULT_DATA = REPO.parent / "shared" / "data" / "hillstrom" / "hillstrom_70pct.csv"
DEFAULT_JSON = RESULTS / "hillstrom.json"


def run_benchmark(
    path: Path | str,
    outcomes: Sequence[str] = ("conversion",),
    *,
    test: Path | str | None = None,
    split_test_share: float | None = None,
    split_seed: int = 0,
    folds: int = 5,
    inner_folds: int = 3,
    seed: int = 0,
    n_boot: int = 1_000,
    lgbm: LGBMParams | None = None,
    net: NetParams | None = None,
    refit_seeds: Sequence[int] = (),
    command: str = "",
    log: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Reads the file, measures the uplift per e-mail and evaluates the policies for each outcome.

    Args:
        path: the file; the train population when `test` or `split_test_share` is given.
        test: a second file: the policies are also fitted on `path` and evaluated on it.
        split_test_share: split `path` (`split_by_row_id` with `split_seed`) into the train population and
            a test population of about this share instead of reading a second file.
        refit_seeds: further seeds with which the plain learned policies are fitted again (other folds,
            initialisations and inner splits; no conservative policies, no bootstrap), to show how much
            their value moves with the fitting alone.
        (the others as in `evaluate_outcome`.)

    Raises:
        ValueError: both `test` and `split_test_share`, or a share outside (0, 1).
    """
    if test is not None and split_test_share is not None:
        raise ValueError("give a test file or a test share to split off, not both")
    start = time.perf_counter()
    frame = load_hillstrom(path)
    data = _display_path(Path(path))
    test_frame: pd.DataFrame | None = None
    if test is not None:
        test_frame = load_hillstrom(test)
        words = (f"`{data}`", f"`{_display_path(Path(test))}`", "")
    elif split_test_share is not None:
        frame, test_frame = split_by_row_id(frame, split_test_share, split_seed)
        split = (
            f"`{data}` split by a seeded hash of the row id (sha256 of `hillstrom-split-{split_seed}` and "
            f"the row's position in the file; test share {split_test_share:g}, split seed {split_seed})"
        )
        words = ("its train rows", "its test rows", split)
    lgbm, net = lgbm or LGBMParams(), net or NetParams()
    kwargs: dict[str, Any] = {
        "folds": folds,
        "inner_folds": inner_folds,
        "lgbm": lgbm,
        "net": net,
        "refit_seeds": refit_seeds,
    }
    results = [_evaluate(frame, o, None, seed, n_boot, log, **kwargs) for o in outcomes]
    heldout = None
    if test_frame is not None:
        held = [_evaluate(frame, o, test_frame, seed, n_boot, log, **kwargs) for o in outcomes]
        train_words, test_words, split_words = words
        heldout = HeldOut(train_words, test_words, split_words, len(test_frame), arm_shares(test_frame), held)
    return BenchmarkResult(
        command=command,
        date=dt.date.today().isoformat(),
        data=data,
        rows=len(frame),
        shares=arm_shares(frame),
        rates=arm_rates(frame, n_boot=n_boot, seed=seed),
        uplift=uplift_table(frame, n_boot=n_boot, seed=seed),
        outcomes=results,
        settings={
            "folds": folds,
            "inner_folds": inner_folds,
            "seed": seed,
            "n_boot": n_boot,
            "lightgbm": asdict(lgbm),
            "model": asdict(net),
        },
        seconds=time.perf_counter() - start,
        heldout=heldout,
    )


def _evaluate(
    frame: pd.DataFrame,
    outcome: str,
    test: pd.DataFrame | None,
    seed: int,
    n_boot: int,
    log: Callable[[str], None] | None,
    *,
    refit_seeds: Sequence[int],
    **settings: Any,
) -> OutcomeResult:
    """`evaluate_outcome` with its refits: cross-fitted on `frame`, or fitted on it and evaluated on
    `test`."""
    where = "" if test is None else " (fitted on the train population, evaluated on the test population)"
    result = evaluate_outcome(frame, outcome, seed=seed, n_boot=n_boot, test=test, log=log, **settings)
    result.refits = [refit_summary(result, seed)]
    for s in refit_seeds:
        if log:
            log(f"{outcome}: refit with seed {s}{where}")
        again = evaluate_outcome(
            frame, outcome, seed=s, n_boot=0, test=test, log=None, **{**settings, "inner_folds": 0}
        )
        result.refits.append(refit_summary(again, s, versus=result.best_constant))
    return result


def refit_summary(result: OutcomeResult, seed: int, versus: str | None = None) -> dict[str, Any]:
    """IPS and SNIPS point differences of the plain learned policies against a constant policy.

    Args:
        result: one cross-fitting.
        seed: its seed.
        versus: the constant policy (default: the result's best constant).
    """
    versus = versus or result.best_constant
    base = result.policy(versus).values
    out: dict[str, Any] = {"seed": seed, "versus": versus}
    for name in (MODEL, MODEL_SINGLE, T_LEARNER):
        if any(p.name == name for p in result.policies):
            values = result.policy(name).values
            out[name] = {e: values[e].point - base[e].point for e in ("ips", "snips")}
    return out


def _display_path(path: Path) -> str:
    """The path relative to the repository where it is beside or inside it, else as given."""
    resolved = path.resolve()
    for base, prefix in ((REPO, ""), (REPO.parent, "../")):
        if resolved.is_relative_to(base):
            return prefix + resolved.relative_to(base).as_posix()
    return str(path)


def _parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, summary=True)
    p.add_argument(
        "--data", type=Path, default=None, help=f"the Hillstrom CSV export (default {DEFAULT_DATA})"
    )
    p.add_argument(
        "--train", type=Path, default=None, help="cross-fit on this file, and fit on it to evaluate on --test"
    )
    p.add_argument(
        "--test", type=Path, default=None, help="evaluate the policies fitted on --train on this file"
    )
    p.add_argument(
        "--split-test-share",
        type=float,
        default=None,
        help="split --data by a seeded hash of the row id into train and this share of test rows",
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of that split's hash")
    p.add_argument(
        "--outcome", nargs="+", choices=OUTCOMES, default=["conversion"], help="reward(s) of the policies"
    )
    p.add_argument("--folds", type=int, default=5, help="cross-fitting folds")
    p.add_argument(
        "--inner-folds",
        type=int,
        default=3,
        help="folds inside the training folds (< 2: no conservative policies)",
    )
    add_seed(p)
    p.add_argument("--n-boot", type=int, default=1_000, help="bootstrap resamples")
    p.add_argument("--model-seeds", type=int, default=5, help="networks averaged in the model")
    p.add_argument(
        "--refit-seeds",
        type=int,
        nargs="*",
        default=[],
        help="cross-fit the learned policies again with these seeds to show the fitting noise",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    add_markdown(p)
    return p


def _check_files(args: argparse.Namespace) -> str:
    """What is wrong with the combination of files and options, in one line ("" when nothing)."""
    if args.folds < 2:
        return "--folds must be at least 2"
    if (args.train is None) != (args.test is None):
        return "--train and --test go together (or give one file with --data)"
    if args.train is not None and args.data is not None:
        return "give --data or --train with --test, not both"
    if args.split_test_share is not None:
        if args.train is not None:
            return "--split-test-share splits the one --data file; it does not go with --train and --test"
        if not 0 < args.split_test_share < 1:
            return f"--split-test-share must lie strictly between 0 and 1, not {args.split_test_share}"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark, prints the Markdown section, writes the JSON and optionally the Markdown file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    problem = _check_files(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    command = command_line("hillstrom", argv)
    try:
        result = run_benchmark(
            args.train or args.data or DEFAULT_DATA,
            args.outcome,
            test=args.test,
            split_test_share=args.split_test_share,
            split_seed=args.split_seed,
            folds=args.folds,
            inner_folds=args.inner_folds,
            seed=args.seed,
            n_boot=args.n_boot,
            net=NetParams(n_seeds=args.model_seeds),
            refit_seeds=args.refit_seeds,
            command=command,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except (FileNotFoundError, HillstromDataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    section = markdown(result)
    print(section)
    write_json(args.json, to_json(result))
    print(f"\nwrote {args.json}", file=sys.stderr)
    if args.markdown:
        update_markdown(args.markdown, section)
        print(f"wrote {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
