"""The notebooks: committed without outputs and with one `parameters` cell each, and executed end to end on a
small simulated shop (papermill, in a kernel on this interpreter), each recording results within range.

The chain is the one a user follows: 01 explores a freshly simulated shop; 02 runs on it, the first time on
an empty registry (its version becomes the first champion), the second with another seed (a challenger).
The strict gate refuses the model of so small a shop (the baselines beat a 3-epoch model), so these two
runs register by force, as a data scientist walking through the notebooks on a toy shop would; a third run,
as a user runs it by default, is refused and registers nothing. 03 then runs the gate on the challenger:
once as it is (refused), once with `force` (promoted, recorded as forced), and once on the version that by
then is the champion (nothing to do, and it says so).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import nbformat
import papermill as pm
import pytest

from features.schema import STAGES
from predictor.registry import CHALLENGER, CHAMPION, MODEL_NAME
from training.baselines import BaselineConfig

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPLORE, RETRAIN, REVIEW = "01-explore-journeys", "02-retrain-and-register", "03-review-and-promote"
# A kernelspec of our own, found first through JUPYTER_PATH: the kernel runs this interpreter (the
# project's venv) whatever kernels the machine has registered, and a fresh clone needs no install step.
KERNEL = "journey-engine-tests"
# The network, the composite that would be registered, and every default baseline (one list: the config's).
SCORERS = {"sequence", "composite", *BaselineConfig().baselines}
# Scorers that predict no items (propensities, and the stage for LightGBM).
NOT_RECOMMENDERS = {"lightgbm_aggregates", "logistic_rf", "bg_nbd"}
SMALL_SHOP = {"n_customers": 1_500, "days": 120, "n_items": 300, "seed": 0}
SMALL_FIT = {"max_epochs": 3, "max_train_rows": 20_000, "n_boot": 20, "journey_map": False}


def _read(name: str) -> Any:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


# -- the committed notebooks ------------------------------------------------------------------------------


def test_the_notebooks_are_numbered_and_all_three_are_there() -> None:
    names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == [EXPLORE, RETRAIN, REVIEW]
    assert all(re.fullmatch(r"\d\d-[a-z0-9-]+", n) for n in names)


@pytest.mark.parametrize("name", [EXPLORE, RETRAIN, REVIEW])
def test_a_committed_notebook_has_no_outputs_and_one_parameters_cell_first(name: str) -> None:
    nb = _read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [(c.execution_count, c.outputs) for c in code] == [(None, [])] * len(code)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    # The parameters come before any other code, so that papermill's injected cell overrides them all.
    assert tagged[0] is code[0]


# -- executed ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Runs 01, 02 twice and 03 twice in a temporary folder; returns what each recorded."""
    root = tmp_path_factory.mktemp("notebooks")
    work, out = root / "work", root / "executed"
    out.mkdir()
    spec = root / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "journey-engine tests", "language": "python"})
    )
    store = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"

    def run(name: str, run_name: str, **parameters: Any) -> dict[str, Any]:
        path = NOTEBOOKS / f"{name}.ipynb"
        parameters = {"work_dir": str(work), **parameters}
        # papermill only warns about a parameter the notebook does not declare.
        assert set(parameters) <= set(pm.inspect_notebook(str(path))), f"{name}: unknown parameters"
        # cwd is the root, not the work folder: a `features/` folder in the kernel's cwd would shadow the
        # package of that name.
        pm.execute_notebook(
            str(path),
            str(out / f"{run_name}.ipynb"),
            parameters=parameters,
            kernel_name=KERNEL,
            cwd=str(root),
            progress_bar=False,
        )
        recorded: dict[str, Any] = json.loads((work / "results" / f"{name}.json").read_text())
        return recorded

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root / "jupyter"))
        # The kernels inherit the store; 02 and 03 are also told it as a parameter, as a user would.
        mp.setenv("MLFLOW_TRACKING_URI", store)
        # The gate refuses the small model (asserted below): force_register registers it anyway, logged
        # as forced, so that 03 has a champion and a challenger to review. The forced path is the
        # library's own (`train(force_register=True)`, `promote(force=True)`), not a gate turned off.
        forced = {"tracking_uri": store, "force_register": True, **SMALL_FIT}
        recorded = {
            "explore": run(EXPLORE, "01", **SMALL_SHOP),
            "first": run(RETRAIN, "02-first", seed=0, **forced),
            "second": run(RETRAIN, "02-second", seed=1, **forced),
            # As a user runs it: refused, nothing registered, the challenger stays the second's version.
            "refused": run(RETRAIN, "02-refused", tracking_uri=store, seed=2, **SMALL_FIT),
            "review": run(REVIEW, "03-review", tracking_uri=store),
            "forced": run(REVIEW, "03-forced", tracking_uri=store, force=True),
            "again": run(REVIEW, "03-again", tracking_uri=store, candidate=CHAMPION),
        }
        client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
        recorded["aliases"] = {
            alias: client.get_model_version_by_alias(MODEL_NAME, alias) for alias in (CHALLENGER, CHAMPION)
        }
        yield recorded


def _is_distribution(shares: dict[str, float]) -> bool:
    values = list(shares.values())
    return all(0.0 <= v <= 1.0 for v in values) and math.isclose(sum(values), 1.0, abs_tol=1e-4)


@pytest.mark.slow
@pytest.mark.integration
def test_explore_records_a_stage_mix_a_funnel_and_channels(executed: dict[str, Any]) -> None:
    r = executed["explore"]
    assert r["n_events"] > 10_000
    assert r["n_customers"] == SMALL_SHOP["n_customers"]
    assert list(r["stage_mix"]) == list(STAGES)
    assert list(r["true_stage_mix"]) == list(STAGES)
    for shares in (r["stage_mix"], r["true_stage_mix"], r["channels"]):
        assert _is_distribution(shares)
    funnel = list(r["funnel"].values())
    assert funnel[0] == r["n_customers"]
    assert all(a >= b for a, b in itertools.pairwise(funnel))
    assert funnel[-1] > 0  # someone bought
    assert 0.0 < r["label_truth_agreement"] < 1.0
    # Hindsight label (rows) against the latent stage (columns): each label seen is a distribution.
    table = r["label_vs_latent"]
    assert list(table) == list(STAGES)
    assert all(list(row) == list(STAGES) for row in table.values())
    seen = [row for row in table.values() if sum(row.values()) > 0]
    assert len(seen) > 1
    assert all(_is_distribution(row) for row in seen)


@pytest.mark.slow
@pytest.mark.integration
def test_retrain_evaluates_a_model_better_than_chance_beside_the_baselines(executed: dict[str, Any]) -> None:
    for r in (executed["first"], executed["second"], executed["refused"]):
        assert set(r["metrics"]) == SCORERS
        sequence = r["metrics"]["sequence"]
        assert 0.2 < sequence["stage/macro_f1"] <= 1.0
        assert 0.5 < sequence["purchase_7d/roc_auc"] <= 1.0
        assert 0.2 < r["metrics"]["lightgbm_aggregates"]["stage/macro_f1"] <= 1.0
        recommenders = SCORERS - NOT_RECOMMENDERS
        assert all(0.0 <= r["metrics"][s]["rec/recall_at_10"] <= 1.0 for s in recommenders)


@pytest.mark.slow
@pytest.mark.integration
def test_retrain_records_the_gate_verdict_and_registers_only_what_passed_or_was_forced(
    executed: dict[str, Any],
) -> None:
    first, second, refused = executed["first"], executed["second"], executed["refused"]
    for r in (first, second, refused):
        # The verdict as the run's tags record it is the one train() returned, with a reason per failed check.
        assert r["gate_reasons"] == r["gate_failures"]
        assert r["gate_failures"], (
            f"the gate passed the small model ({r['run_id']}): drop force_register from the fixture and "
            "test the plain path"
        )
    # Forced: registered although refused, and the alias challenger on the new version.
    for r in (first, second):
        assert (r["gate"], r["forced"], r["registered"]) == ("forced", True, True)
        assert r["challenger"] == r["version"]
    # An empty registry: the first version became the champion, by force as it was registered; the second
    # waits as the challenger.
    assert (first["champion_before"], first["version"], first["champion"]) == (None, "1", "1")
    promotion = first["first_promotion"]
    assert (promotion["promoted"], promotion["forced"]) == (True, True)
    assert promotion["failures"]
    assert (second["champion_before"], second["version"], second["champion"]) == ("1", "2", "1")
    assert second["first_promotion"] is None
    # Refused, as a user runs it: nothing registered, neither alias moved.
    assert (refused["gate"], refused["forced"], refused["registered"], refused["version"]) == (
        "refused",
        False,
        False,
        None,
    )
    assert (refused["challenger_before"], refused["challenger"], refused["champion"]) == ("2", "2", "1")
    assert refused["first_promotion"] is None
    assert executed["aliases"][CHALLENGER].run_id == second["run_id"]


@pytest.mark.slow
@pytest.mark.integration
def test_review_promotes_only_through_the_gate_or_by_force(executed: dict[str, Any]) -> None:
    review, forced = executed["review"], executed["forced"]
    for r in (review, forced):
        assert (r["candidate"], r["champion_before"], r["already_champion"]) == ("2", "1", False)
        assert r["training_gate"] == {"candidate": "forced", "champion": "forced"}
        assert set(r["candidate_metrics"]) == set(r["champion_metrics"]) == set(r["gate_metrics"])
        assert all(0.0 <= v <= 1.0 for v in r["candidate_metrics"].values())
        assert set(r["floors"]) == set(r["gate_metrics"])
        assert set(r["baselines"]) == SCORERS - {"sequence", "composite"}
        assert r["failures"]  # the gate refuses the candidate it refused at training
        assert r["logged_reasons"] == r["failures"]
    # The gate scores the candidate on the test window it was trained beside: the training run's figures.
    training = review["training_metrics"]["candidate"]
    for metric in ("stage/macro_f1", "purchase_7d/roc_auc"):
        assert review["candidate_metrics"][metric] == pytest.approx(training[metric], abs=1e-4)
    # As it is: refused, the alias stays.
    assert (review["promoted"], review["forced"], review["logged_decision"]) == (False, False, "refused")
    assert review["logged_forced"] is False
    assert review["champion_after"] == "1"
    # With force: promoted although refused, and recorded as forced, in the result and in MLflow.
    assert (forced["promoted"], forced["forced"], forced["logged_decision"]) == (True, True, "promoted")
    assert forced["logged_forced"] is True
    assert forced["champion_after"] == "2"
    assert str(executed["aliases"][CHAMPION].version) == "2"


@pytest.mark.slow
@pytest.mark.integration
def test_review_of_the_champion_itself_changes_nothing_and_says_so(executed: dict[str, Any]) -> None:
    again = executed["again"]
    assert (again["candidate"], again["champion_before"], again["champion_after"]) == ("2", "2", "2")
    assert (again["already_champion"], again["promoted"], again["forced"]) == (True, False, False)
    assert again["failures"] == []
    assert again["logged_decision"] is None  # nothing evaluated, nothing logged
