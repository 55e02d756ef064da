"""The report of the Hillstrom benchmark: the BENCHMARKS.md section (rates, uplift, policy values, paired
differences, refits, verdict) and the run as JSON."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._harness import machine_info, markers, update_section
from benchmarks.hillstrom_data import (
    ACTION_NAMES,
    ARMS,
    ESTIMATORS,
    FULL_SET_RATES,
    MODEL,
    MODEL_CONSERVATIVE,
    MODEL_SINGLE,
    OUTCOMES,
    PAIRED_ESTIMATORS,
    T_LEARNER,
    ArmShares,
)
from benchmarks.hillstrom_estimates import BenchmarkResult, OutcomeResult
from stats import Interval

MARKER_START, MARKER_END = markers("hillstrom")


def _scale(outcome: str) -> tuple[float, str, int]:
    """(multiplier, unit, decimals) of an outcome's values in the tables."""
    return (1.0, "$ per customer", 3) if outcome == "spend" else (100.0, "%", 3)


def _share(x: float) -> str:
    """A share in whole percent, "<1%" for a small non-zero share."""
    return "<1%" if 0 < x < 0.005 else f"{x:.0%}"


def _fmt(ci: Interval, outcome: str) -> str:
    m, _, d = _scale(outcome)
    return f"{ci.point * m:.{d}f} [{ci.lo * m:.{d}f}, {ci.hi * m:.{d}f}]"


def _fmt_signed(ci: Interval, outcome: str) -> str:
    m, _, d = _scale(outcome)
    return f"{ci.point * m:+.{d}f} [{ci.lo * m:+.{d}f}, {ci.hi * m:+.{d}f}]"


def verdict_text(result: OutcomeResult) -> str:
    """Which policy is best, and whether the model beats the best constant and the best baseline."""
    o = result.outcome
    lines = [
        f"Best policy by IPS point value: **{result.best_policy}**; best constant policy: "
        f"**{result.best_constant}**; best baseline: **{result.best_baseline}**."
    ]
    for versus in dict.fromkeys((result.best_constant, result.best_baseline)):
        row = next((p for p in result.paired if p.policy == MODEL and p.versus == versus), None)
        if row is None:
            continue
        ips, snips = row.differences["ips"], row.differences["snips"]
        state = {
            "better": "beats",
            "worse": "is worse than",
            "same actions": "takes the same actions as",
        }.get(row.verdict, "is not distinguishable from")
        lines.append(
            f"The model {state} {versus} (IPS {_fmt_signed(ips, o)}, SNIPS {_fmt_signed(snips, o)})."
        )
    model_row = next(
        (p for p in result.paired if p.policy == MODEL and p.versus == result.best_baseline), None
    )
    if model_row is not None and model_row.verdict != "better":
        lines.append("**The model does not (yet) beat the best baseline on this task.**")
        tried = [
            f"the plain network (`{MODEL_SINGLE}`) before averaging several"
            if any(p.name == MODEL_SINGLE for p in result.policies)
            else "",
            f"a threshold that keeps the best constant e-mail unless the gain is large "
            f"(`{MODEL_CONSERVATIVE}`)"
            if any(p.name == MODEL_CONSERVATIVE for p in result.policies)
            else "",
        ]
        tried = [t for t in tried if t]
        if tried:
            lines.append(f"Tried, without a distinguishable gain over it: {'; '.join(tried)}.")
    elif model_row is not None:
        lines.append("**The model beats the best baseline on this task.**")
    return " ".join(lines)


def markdown(result: BenchmarkResult) -> str:
    """The BENCHMARKS.md section, markers included."""
    s = result.settings
    lines = [
        MARKER_START,
        "## Next best action on Hillstrom's randomised e-mail test",
        "",
        f"Written by `benchmarks/hillstrom.py` on {result.date} in {result.seconds / 60:.1f} min:",
        "",
        f"    {result.command}",
        "",
        _data_line(result),
        "",
        "### Rates per arm" + (" (train population)" if result.heldout else ""),
        "",
        "| arm | customers | visit % | conversion % | spend $ | full set: visit % / conversion % / spend $ |",
        "|---|---|---|---|---|---|",
    ]
    rates = {(r.arm, r.outcome): r for r in result.rates}
    for arm in ARMS:
        cells = " | ".join(_fmt(rates[(arm, o)].rate, o) for o in OUTCOMES)
        full = FULL_SET_RATES[arm]
        lines.append(
            f"| {arm} | {rates[(arm, 'visit')].n:,} | {cells} | "
            f"{full['visit'] * 100:.2f} / {full['conversion'] * 100:.2f} / {full['spend']:.3f} |"
        )
    lines += [
        "",
        "The full set is the 64,000 customers of SOURCE.md; this file is a 70 % random subset of it.",
        "",
        "### Uplift per e-mail over No E-Mail" + (" (train population)" if result.heldout else ""),
        "",
        "Percentage points for visit and conversion, dollars per customer for spend; the bootstrap resamples "
        "customers and takes both arms' means on the same resample.",
        "",
        "| e-mail | outcome | uplift [95 % bootstrap CI] | normal 95 % CI | relative | full set |",
        "|---|---|---|---|---|---|",
    ]
    for u in result.uplift:
        m, _, d = _scale(u.outcome)
        lines.append(
            f"| {u.arm} | {u.outcome} | {_fmt_signed(u.difference, u.outcome)} | "
            f"[{u.normal.lo * m:+.{d}f}, {u.normal.hi * m:+.{d}f}] | {u.relative:+.0%} | "
            f"{u.full_set * m:+.{d}f} |"
        )
    held = result.heldout
    for i, o in enumerate(result.outcomes):
        if held is None:
            lines += _outcome_markdown(o)
            continue
        lines += _outcome_markdown(
            o, f", cross-fitted within the train population ({result.rows:,} customers)"
        )
        lines += _outcome_markdown(
            held.outcomes[i],
            f", fitted on the train population, evaluated on the test population ({held.rows:,} customers)",
            refit="fitted again on the train population with another seed (other initialisations and inner "
            "splits)",
        )
        lines += _side_by_side(o, held.outcomes[i])
    lgbm, net = s["lightgbm"], s["model"]
    lines += [
        "",
        "### How the policies were learned, and what was tried",
        "",
        f"- Cross-fitting over {s['folds']} folds (stratified by arm and outcome): each customer's action "
        "comes from models fitted on the other folds; features (one-hot zip code, channel and history "
        "segment; standardised recency, log history, mens, womens, newbie) are fitted on the training folds "
        "too. DR's reward model is the cross-fitted T-learner. Fit seconds: one thread, summed over the "
        "folds; a conservative policy's time includes its learner's outer fits.",
        f"- The model (`{MODEL}`): a 2-layer GELU encoder (width {net['d_model']}, dropout "
        f"{net['dropout']}) -> LayerNorm state -> linear action head with one sigmoid per action, trained "
        "with IPS-weighted BCE on the logged action only (the action term of `journey_loss`; for spend a "
        "linear output and IPS-weighted squared error), AdamW "
        f"(lr {net['lr']}, weight decay {net['weight_decay']}), early stopping on a 20 % inner split; the "
        f"average of {net['n_seeds']} such networks (other initialisations and inner splits). "
        f"`{MODEL_SINGLE}` is its first network alone.",
        f"- `{T_LEARNER}`: one LightGBM model per arm ({lgbm['num_leaves']} leaves, at least "
        f"{lgbm['min_child_samples']} rows per leaf, L2 {lgbm['lambda_l2']}, learning rate "
        f"{lgbm['learning_rate']}), early-stopped on a 20 % inner split of the arm.",
        *(
            [
                "- Fitted on one population, evaluated on another: every learner, its feature design, the "
                "conservative thresholds (from inner folds of the train population) and DR's reward model "
                "are fitted once on the whole train population and choose the actions of the test "
                "population, where every value, interval and the best constant are estimated; no fit sees "
                "a test row."
            ]
            if held
            else []
        ),
        "- Conservative policies: the training folds' best constant e-mail unless the learner predicts "
        "another action better by more than a threshold, chosen by IPS on the training folds from "
        f"predictions cross-fitted over {s['inner_folds']} inner folds (candidates: 0, quantiles of the "
        "predicted gains, infinity = the constant policy).",
        "- The bootstrap holds the policies and reward models fixed, so its intervals carry the noise of "
        "the evaluation, not of the fitting; the refits above show how far the fitting alone moves a "
        "learned policy's value. The best constant policy is picked by its IPS on all customers, after "
        "seeing the outcomes: a slight advantage for it in the paired comparisons.",
        MARKER_END,
    ]
    return "\n".join(lines)


def _data_line(result: BenchmarkResult) -> str:
    """The data (one file, or the train and test populations), their arms and the intervals."""
    s, held = result.settings, result.heldout
    intervals = (
        f"Intervals: 95 % percentile bootstrap over customers ({s['n_boot']:,} resamples, seed {s['seed']})."
    )
    if held is None:
        return f"Data: `{result.data}`, {result.rows:,} customers. Arms: {_arms(result.shares)}. {intervals}"
    split = f"{held.split}; " if held.split else ""
    return (
        f"Data: {split}train population: {held.train}, {result.rows:,} customers (arms: "
        f"{_arms(result.shares)}); test population: {held.test}, {held.rows:,} customers (arms: "
        f"{_arms(held.shares)}). {intervals}"
    )


def _arms(sh: ArmShares) -> str:
    """Customers per arm and the chi-square test of uniform randomisation."""
    shares = ", ".join(f"{arm} {sh.counts[arm]:,} ({sh.shares[arm]:.2%})" for arm in ARMS)
    return (
        f"{shares}; chi-square test of 1/3 each: p = {sh.p_value:.2f}, so the logging propensity is 1/3 for "
        "everyone"
    )


def _side_by_side(crossed: OutcomeResult, held: OutcomeResult) -> list[str]:
    """Each policy's IPS value and verdict against the best constant under both protocols."""
    o = crossed.outcome
    lines = [
        "",
        f"Both protocols side by side ({o}, IPS [95 % CI]; verdict against each protocol's best constant, "
        f"{crossed.best_constant} cross-fitted, {held.best_constant} held out):",
        "",
        "| policy | cross-fitted within train | verdict | fitted on train, evaluated on test | verdict |",
        "|---|---|---|---|---|",
    ]
    for p in crossed.policies:
        other = next((q for q in held.policies if q.name == p.name), None)
        if other is None:
            continue
        cells = []
        for result, policy in ((crossed, p), (held, other)):
            row = next(
                (r for r in result.paired if r.policy == p.name and r.versus == result.best_constant), None
            )
            best = "(the best constant)" if p.name == result.best_constant else ""
            cells += [_fmt(policy.values["ips"], o), row.verdict if row else best]
        lines.append(f"| {p.name} | {' | '.join(cells)} |")
    return lines


def _outcome_markdown(
    o: OutcomeResult,
    title: str = "",
    refit: str = "cross-fitted again with another seed (other folds, initialisations and inner splits)",
) -> list[str]:
    """The policy table, the paired differences, the refits and the verdict of one outcome.

    Args:
        title: the population and protocol, after the heading's outcome.
        refit: how the refits were fitted, in words.
    """
    _, unit, _ = _scale(o.outcome)
    lines = [
        "",
        f"### Policy value: {o.outcome} ({unit}){title}",
        "",
        "| policy | IPS [95 % CI] | SNIPS [95 % CI] | DR [95 % CI] | send rate | Mens/Womens/none | fit s |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in o.policies:
        sh = p.action_shares
        mix = " / ".join(_share(sh[a]) for a in ACTION_NAMES)
        seconds = "" if p.fit_seconds is None else f"{p.fit_seconds:.1f}"
        if p.kind == "reference":
            cells = f"{_fmt(p.values['ips'], o.outcome)} (observed mean) | | "
        else:
            cells = " | ".join(_fmt(p.values[e], o.outcome) for e in ESTIMATORS)
        name = f"**{p.name}**" if p.name == MODEL else p.name
        lines.append(f"| {name} | {cells} | {p.send_rate:.0%} | {mix} | {seconds} |")
    lines += [
        "",
        f"Paired differences ({unit}; both policies on the same resampled customers; the verdict needs IPS "
        "and SNIPS to agree):",
        "",
        "| policy | versus | actions differ | IPS diff [95 % CI] | SNIPS diff [95 % CI] | DR diff [95 % CI] "
        "| verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for pair in o.paired:
        diffs = " | ".join(_fmt_signed(pair.differences[e], o.outcome) for e in PAIRED_ESTIMATORS)
        lines.append(
            f"| {pair.policy} | {pair.versus} | {_share(pair.disagreement)} | {diffs} | {pair.verdict} |"
        )
    if len(o.refits) > 1:
        m, _, d = _scale(o.outcome)
        names = [n for n in (MODEL, MODEL_SINGLE, T_LEARNER) if n in o.refits[0]]
        lines += [
            "",
            f"Refits: IPS / SNIPS point difference against {o.refits[0]['versus']} when the learned policies "
            f"are {refit}:",
            "",
            "| seed | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for r in o.refits:
            cells = " | ".join(
                f"{r[n]['ips'] * m:+.{d}f} / {r[n]['snips'] * m:+.{d}f}" if n in r else "" for n in names
            )
            lines.append(f"| {r['seed']} | {cells} |")
    lines += ["", verdict_text(o)]
    return lines


def update_markdown(path: Path, section: str) -> None:
    """Writes `section` (markers included) between the Hillstrom markers of `path`, keeping the rest."""
    update_section(path, section, MARKER_START, MARKER_END)


def _jsonable(value: Any) -> Any:
    """Intervals as {point, lo, hi}; non-finite floats as strings; containers recursively."""
    if isinstance(value, Interval):
        return {k: _jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def to_json(result: BenchmarkResult) -> dict[str, Any]:
    """The run as plain JSON-able data (with versions and the machine)."""
    held = result.heldout
    heldout = None
    if held is not None:
        heldout = {
            "train": held.train,
            "test": held.test,
            "split": held.split,
            "rows": held.rows,
            "arm_shares": asdict(held.shares),
            "outcomes": {o.outcome: _outcome_json(o) for o in held.outcomes},
        }
    return _jsonable(
        {
            "benchmark": "hillstrom",
            "command": result.command,
            "date": result.date,
            "data": result.data,
            "rows": result.rows,
            "arm_shares": asdict(result.shares),
            "rates": [asdict(r) for r in result.rates],
            "uplift": [asdict(u) for u in result.uplift],
            "outcomes": {o.outcome: _outcome_json(o) for o in result.outcomes},
            **({"heldout": heldout} if heldout else {}),
            "settings": result.settings,
            "seconds": result.seconds,
            "machine": machine_info(("torch", "lightgbm", "numpy", "pandas")),
        }
    )


def _outcome_json(o: OutcomeResult) -> dict[str, Any]:
    """One outcome's policies, paired differences, verdict and fitting details."""
    return {
        "policies": [
            {
                "name": p.name,
                "kind": p.kind,
                "values": p.values,
                "send_rate": p.send_rate,
                "action_shares": p.action_shares,
                "fit_seconds": p.fit_seconds,
            }
            for p in o.policies
        ],
        "paired": [
            {
                "policy": p.policy,
                "versus": p.versus,
                "differences": p.differences,
                "verdicts": {e: p.verdict_of(e) for e in PAIRED_ESTIMATORS},
                "verdict": p.verdict,
                "actions_differ": p.disagreement,
            }
            for p in o.paired
        ],
        "best_constant": o.best_constant,
        "best_policy": o.best_policy,
        "best_baseline": o.best_baseline,
        "verdict": verdict_text(o),
        "details": o.details,
    }
