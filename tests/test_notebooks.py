"""The notebooks: committed without outputs and with one `parameters` cell each, and executed end to end on a
small simulated shop (papermill, in a kernel on this interpreter), each recording results within range.

The chain is the one a user follows: 01 explores a freshly simulated shop; 02 runs twice on it, the first
time on an empty registry (its version becomes the first champion), the second with another seed (a
challenger); 03 runs the gate on that challenger, once as it is (promoted or refused, both checked) and
once with a tolerance that lets it through.
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
from training.registry import CHALLENGER, CHAMPION, MODEL_NAME

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPLORE, RETRAIN, REVIEW = "01-explore-journeys", "02-retrain-and-register", "03-review-and-promote"
# A kernelspec of our own, found first through JUPYTER_PATH: the kernel runs this interpreter (the
# project's venv) whatever kernels the machine has registered, and a fresh clone needs no install step.
KERNEL = "journey-engine-tests"
SCORERS = {"sequence", "popularity", "own_history", "item_knn", "lightgbm_aggregates"}
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
        recorded = {
            "explore": run(EXPLORE, "01", **SMALL_SHOP),
            "first": run(RETRAIN, "02-first", tracking_uri=store, seed=0, **SMALL_FIT),
            "second": run(RETRAIN, "02-second", tracking_uri=store, seed=1, **SMALL_FIT),
            "review": run(REVIEW, "03-review", tracking_uri=store),
            "lenient": run(REVIEW, "03-lenient", tracking_uri=store, tolerance=1.0),
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


@pytest.mark.slow
@pytest.mark.integration
def test_retrain_registers_a_model_better_than_chance_beside_the_baselines(executed: dict[str, Any]) -> None:
    first, second = executed["first"], executed["second"]
    for r in (first, second):
        assert set(r["metrics"]) == SCORERS
        sequence = r["metrics"]["sequence"]
        assert 0.2 < sequence["stage/macro_f1"] <= 1.0
        assert 0.5 < sequence["purchase_7d/roc_auc"] <= 1.0
        assert 0.2 < r["metrics"]["lightgbm_aggregates"]["stage/macro_f1"] <= 1.0
        recommenders = SCORERS - {"lightgbm_aggregates"}
        assert all(0.0 <= r["metrics"][s]["rec/recall_at_10"] <= 1.0 for s in recommenders)
        assert r["challenger"] == r["version"]
    # An empty registry: the first version became the champion; the second waits as the challenger.
    assert (first["champion_before"], first["version"], first["champion"]) == (None, "1", "1")
    assert (second["champion_before"], second["version"], second["champion"]) == ("1", "2", "1")
    assert executed["aliases"][CHALLENGER].run_id == second["run_id"]


@pytest.mark.slow
@pytest.mark.integration
def test_review_runs_the_gate_and_moves_the_alias_only_when_promoted(executed: dict[str, Any]) -> None:
    review, lenient = executed["review"], executed["lenient"]
    for r in (review, lenient):
        assert (r["candidate"], r["champion_before"]) == ("2", "1")
        assert set(r["candidate_metrics"]) == set(r["champion_metrics"]) == set(r["gate_metrics"])
        assert all(0.0 <= v <= 1.0 for v in r["candidate_metrics"].values())
        assert r["promoted"] == (r["failures"] == [])
        assert r["logged_decision"] == ("promoted" if r["promoted"] else "refused")
        assert not r["forced"]
    # The gate scores the candidate on the test window it was trained beside: the training run's figures.
    training = review["training_metrics"]["candidate"]
    for metric in ("stage/macro_f1", "purchase_7d/roc_auc"):
        assert review["candidate_metrics"][metric] == pytest.approx(training[metric], abs=1e-4)
    assert review["champion_after"] == ("2" if review["promoted"] else "1")
    # A tolerance of 1 lets any candidate through, so the alias moves.
    assert lenient["promoted"]
    assert lenient["champion_after"] == "2"
    assert str(executed["aliases"][CHAMPION].version) == "2"
