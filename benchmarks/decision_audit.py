"""The decision audit: every decision the engine makes on a simulated shop, judged against the rules.

    .venv/bin/python -m benchmarks.decision_audit --customers 20000 --markdown BENCHMARKS.md

On a simulated shop (trained, registered and served like `make demo`, in a scratch MLflow store under
`--work`), for each online store (SQLite behind one `journey serve`; Redis behind two replicas):

1. the shop's history, moved in time so that its last day ends now, is loaded into the store;
2. bursts: 50 concurrent `/v1/score` calls for each of `--burst-customers` customers, over the replicas;
3. `journey score-audience` scores every customer at the server's clock and records the decisions;
4. a compressed day of real-time calls: each chosen customer active on the shop's last day has that day's
   events posted (late: after the audience export), then is scored 1 to 4 times in a row (the platform
   retrying or re-triggering), among them calls that claim a future `now` (a day ahead, the year 2200),
   calls with an inline `email_unsubscribe`, and previews (`"record": false`);
5. the decisions in the store, with what was posted and when, are judged by `benchmarks/audit_checks.py`
   (its own reading of the raw events, as they stood when each decision was made): sends to opted-out
   customers, ineligible sends per rule, pairs closer than the minimum gap, cooldown and cap breaches,
   sends after a future `now`.

The policy is made as eager as it can be (`min_uplift: -1`: any eligible message beats sending nothing;
epsilon 0.2), so that only the rules stand between a customer and a message. Every count must be 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._harness import (
    RESULTS,
    add_markdown,
    add_seed,
    add_work,
    command_line,
    make_parser,
    write_json,
    write_section,
)
from benchmarks.audit_replay import Backend, prepare, run_backend

SECTION = "decision_audit"


def render(
    args: argparse.Namespace, prepared: dict[str, Any], results: list[dict[str, Any]], command: str
) -> str:
    """The BENCHMARKS.md section: the command, what was run, and every count per store."""
    rules = [
        ("sends to opted-out customers", "opted_out"),
        ("sends to ineligible customers (all rules)", "ineligible_total"),
        ("pairs of sends closer than the minimum gap", "gap"),
        ("cooldown breaches", "cooldown"),
        ("7-day cap breaches", "cap_7d"),
        ("28-day cap breaches", "cap_28d"),
        ("sends after a future `now`", "future"),
    ]
    head = " | ".join(r["backend"] for r in results)
    lines = [
        "## Decision audit",
        "",
        f"Written by `{command}` on "
        f"{dt.date.today().isoformat()}: a simulated shop of {prepared['customers']:,} customers, model "
        f"`journey-scorer` version {prepared['version']} ({prepared['model_note']}), the eager policy of the "
        "module docstring (any eligible message beats sending nothing), default rules of "
        "`configs/serve.yaml`. Per store: the audience export at the server's clock, a compressed day of "
        "real-time calls, and bursts of 50 concurrent calls per customer. The judge re-derives every rule "
        "from the raw events (`benchmarks/audit_checks.py`).",
        "",
        f"| | {head} |",
        "|---|" + "---:|" * len(results),
        *(
            f"| {name} | " + " | ".join(f"{r['counts'][key]:,}" for r in results) + " |"
            for name, key in [
                ("customers scored by the audience export", "audience_customers"),
                ("real-time score calls (answered 200)", "calls_ok"),
                ("calls refused (4xx: future `now`)", "calls_refused"),
                ("burst calls (50 concurrent per customer)", "burst_calls"),
                ("marketing sends audited", "sends"),
            ]
        ),
        *(
            f"| **{name}** | " + " | ".join(f"**{r['counts'][key]:,}**" for r in results) + " |"
            for name, key in rules
        ),
        "",
    ]
    for r in results:
        per_rule = r["counts"]["ineligible"]
        detail = ", ".join(f"{k} {v}" for k, v in sorted(per_rule.items())) or "none"
        lines.append(
            f"- {r['backend']}: ineligible sends by rule: {detail}; burst customers sent exactly one "
            f"message: "
            f"{r['counts']['burst_one_send']} of {args.burst_customers}, the most any got: "
            f"{r['counts']['burst_max_sends']}; previews that recorded a decision: "
            f"{r['counts']['preview_recorded']}; sends answered to calls with an inline unsubscribe: "
            f"{r['counts']['inline_unsubscribe_sends']}; sends answered to future-`now` calls: "
            f"{r['counts']['future_now_sends']}; decisions stored vs recorded answers: "
            f"{r['counts']['stored_decisions']:,} vs {r['counts']['recorded_answers']:,}."
        )
    total = sum(r["counts"]["unsafe"] for r in results)
    lines += ["", f"Unsafe decisions in all: **{total}** (target 0)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(__doc__)
    add_work(parser, Path(tempfile.gettempdir()) / "journey-audit")
    parser.add_argument("--customers", type=int, default=20_000)
    add_seed(parser)
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--day-customers", type=int, default=2_000, help="customers replayed in real time")
    parser.add_argument("--burst-customers", type=int, default=20)
    parser.add_argument("--burst-size", type=int, default=50)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "redis"], choices=["sqlite", "redis"])
    add_markdown(parser)
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    prepared = prepare(args.work, args.customers, args.seed, args.train_rows, args.epochs, log=print)
    results: list[dict[str, Any]] = []
    for name in args.backends:
        backend = Backend(name=name, replicas=1 if name == "sqlite" else 2)
        counts = run_backend(backend, prepared, args, log=print)
        results.append(
            {
                "backend": f"{name} ({backend.replicas} replica{'s' if backend.replicas > 1 else ''})",
                "counts": counts,
            }
        )
        print(json.dumps(counts, indent=2, default=str), flush=True)
    section = render(args, prepared, results, command_line("decision_audit", argv))
    print(section)
    write_json(RESULTS / "decision_audit.json", {"prepared": prepared, "results": results})
    if args.markdown:
        write_section(args.markdown, SECTION, section)
    return 0 if all(r["counts"]["unsafe"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
