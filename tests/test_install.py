"""The serving install (`pip install .`, no extra) carries no training stack.

A replica of the scoring service loads a registered model and scores; Spark, scikit-learn, matplotlib
and plotly belong to training, reports and benchmarks (the `train` extra). LightGBM (and the SciPy it
requires) is in the bare install: a registered composite model may serve a head with a LightGBM booster
(`predictor.composite`), but nothing imports it unless a loaded model holds one. Two ways this breaks:
someone adds a training package (or the full `mlflow`, which pulls most of them in) to the bare
dependencies, or a module the service loads imports one of them at import time. A test for each.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

# Distributions the bare install must not carry, directly or through its dependencies. `mlflow` is the full
# package (server, UI, plotting); the service has `mlflow-skinny` with SQLAlchemy and alembic instead.
TRAINING_DISTRIBUTIONS = ("pyspark", "matplotlib", "plotly", "scikit-learn", "mlflow")
# In the bare install for the composite's boosters, imported only when a model holds one.
SERVED_ON_DEMAND = ("lightgbm",)
# Their import names.
TRAINING_MODULES = ("lightgbm", "pyspark", "matplotlib", "plotly", "sklearn", "scipy")
# What a serving install runs: the service, the registered model's code (`features`, `predictor`) and the
# `journey` entry point (its commands import what they need when they run).
SERVING_PACKAGES = ("serving", "predictor", "features")
SERVING_MODULES = ("journey.cli",)


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def _closure(requirements: list[str]) -> dict[str, list[str]]:
    """Every distribution the requirements pull in, resolved over what is installed here, with the chain
    that pulls it in. Installed distributions only: the test venv holds the full set, so nothing the bare
    install would bring is missing from it."""
    chains: dict[str, list[str]] = {}
    todo = [(Requirement(r), [str(Requirement(r).name)]) for r in requirements]
    while todo:
        req, chain = todo.pop()
        name = canonicalize_name(req.name)
        if name in chains:
            continue
        chains[name] = chain
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        extras = {""} | set(req.extras)
        for line in requires:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras):
                todo.append((dep, [*chain, dep.name]))
    return chains


def test_bare_install_lists_no_training_package() -> None:
    project = _project()
    base = _names(project["dependencies"])
    assert base.isdisjoint(TRAINING_DISTRIBUTIONS), sorted(base & set(TRAINING_DISTRIBUTIONS))
    assert set(SERVED_ON_DEMAND) <= base, "a composite model's LightGBM heads need lightgbm on every replica"
    # Moved to the `train` extra, not dropped: training, the demo and the benchmarks still get them.
    train = _names(project["optional-dependencies"]["train"])
    assert set(TRAINING_DISTRIBUTIONS) <= train, sorted(set(TRAINING_DISTRIBUTIONS) - train)
    # What the registry needs of the full `mlflow`: its SQLite store (sqlite:///mlruns/mlflow.db).
    assert {"mlflow-skinny", "sqlalchemy", "alembic"} <= base


def test_bare_install_pulls_in_no_training_package() -> None:
    chains = _closure(_project()["dependencies"])
    pulled = {name: " -> ".join(chains[name]) for name in TRAINING_DISTRIBUTIONS if name in chains}
    assert not pulled, pulled


def test_closure_follows_dependencies() -> None:
    """The check above can fail: the full `mlflow` pulls in matplotlib and scikit-learn."""
    try:
        metadata.distribution("mlflow")
    except metadata.PackageNotFoundError:
        pytest.skip("the full mlflow is not installed (a serving-only environment)")
    chains = _closure(["mlflow"])
    assert {"matplotlib", "scikit-learn"} <= set(chains)
    assert chains["matplotlib"] == ["mlflow", "matplotlib"]


# Imports every module under the given packages, and the given modules, with the training stack blocked.
_IMPORT_ALL = textwrap.dedent(
    """
    import importlib, importlib.abc, json, pkgutil, sys

    blocked, packages, modules = (set(a.split(",")) - {""} for a in sys.argv[1:4])

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in blocked:
                raise ModuleNotFoundError(f"{name} is not in the serving install", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    names = set(modules)
    for root in packages:
        names.add(root)
        package = importlib.import_module(root)
        names.update(m.name for m in pkgutil.walk_packages(package.__path__, root + ".", onerror=print))
    failures = {}
    for name in sorted(names):
        try:
            importlib.import_module(name)
        except Exception as e:
            failures[name] = f"{type(e).__name__}: {e}"
    loaded = sorted({m.partition(".")[0] for m in sys.modules} & blocked)
    print(json.dumps({"imported": len(names), "failures": failures, "loaded": loaded}))
    """
)


def _import_blocked(packages: tuple[str, ...], modules: tuple[str, ...], path: Path = ROOT) -> dict:
    args = [",".join(TRAINING_MODULES), ",".join(packages), ",".join(modules)]
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, *args],
        cwd=path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_serving_modules_import_no_training_package() -> None:
    result = _import_blocked(SERVING_PACKAGES, SERVING_MODULES)
    assert result["failures"] == {}
    assert result["loaded"] == []
    assert result["imported"] > 20  # the walk found the packages' modules


def test_blocked_import_is_reported(tmp_path: Path) -> None:
    """The check above can fail: a module that imports plotly at import time is named."""
    package = tmp_path / "probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "charts.py").write_text("import plotly.graph_objects\n")
    (package / "fine.py").write_text("import json\n")
    result = _import_blocked(("probe",), (), path=tmp_path)
    assert list(result["failures"]) == ["probe.charts"]
    assert "plotly" in result["failures"]["probe.charts"]
