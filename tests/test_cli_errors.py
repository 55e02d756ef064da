"""A user's mistake on the command line is one line on stderr naming what is wrong, with a non-zero exit
status and no traceback; a bug keeps its traceback.

Most cases run the app in process (`CliRunner`: an error the handler did not turn into a line would be the
result's exception); the first ones run the installed `journey` in a subprocess, as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from journey.cli import app
from journey.errors import user_error

JOURNEY = Path(sys.executable).parent / "journey"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every case in its own folder with its own MLflow store (nothing reaches the project's mlruns/)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("JOURNEY_CONFIG", raising=False)
    return tmp_path


def one_line_error(stderr: str, *named: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for text in named:
        assert text in lines[0], stderr
    return lines[0]


def refused(result: Result, *named: str) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # handled: not an error's traceback
    return one_line_error(result.stderr, *named)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def run_journey(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    return subprocess.run([str(JOURNEY), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["evaluate", "--features", "/nope"], "/nope"),
        (["promote", "--features", "/nope"], "/nope"),
        (["ingest", "generic", "events.csv", "--out", "out", "--tz", "Mars/Olympus"], "Mars/Olympus"),
    ],
)
def test_the_installed_command_says_one_line(args: list[str], named: str, isolated: Path) -> None:
    (isolated / "events.csv").write_text("customer_id,ts,event_type\nc1,2026-01-01 10:00:00,product_view\n")
    done = run_journey(*args, cwd=isolated)
    assert done.returncode == 1, done.stderr
    one_line_error(done.stderr, named)
    assert not (isolated / "out").exists()  # the zone is refused before the file is read


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("fit.epoch=3", "fit.epoch"),
        ("model.d_modle=8", "model.d_modle"),
        ("baselines.lightgbm.leaves=3", "baselines.lightgbm"),
        ("epochs=3", "epochs"),
        ("fit.max_epochs=many", "fit.max_epochs"),
        ("model.encoder=lstm", "model.encoder"),
        ("gate.floors={roc_auc: high}", "high"),
    ],
)
def test_a_train_setting_typo_is_refused_before_anything_starts(
    override: str, named: str, isolated: Path
) -> None:
    # A build that does not exist: the config is checked first, so the error names the setting.
    line = refused(invoke("train", "--features", "/nope", "--set", override, "--force-register"), named)
    assert "/nope" not in line
    assert not (isolated / "mlflow.db").exists()  # no MLflow run was started (not even the store)


def test_an_unknown_key_is_named_with_the_known_ones() -> None:
    line = refused(invoke("train", "--set", "fit.epoch=3"))
    assert "unknown fit setting(s): fit.epoch; known: batch_size" in line
    assert "max_epochs" in line


@pytest.mark.parametrize("command", ["train", "promote"])
def test_a_train_config_that_is_not_there_is_named(command: str) -> None:
    refused(invoke(command, "--features", "f", "--config", "/nope/train.yaml"), "/nope/train.yaml")


def test_a_bad_gate_key_in_the_config_of_promote(isolated: Path) -> None:
    config = isolated / "train.yaml"
    config.write_text("gate:\n  tolerance: 0.1\n")
    refused(invoke("promote", "--features", "f", "--config", str(config)), "gate.tolerance")


def test_a_yaml_syntax_error_is_one_line(isolated: Path) -> None:
    config = isolated / "train.yaml"
    config.write_text("fit: [1,\n  2\nmodel: {\n")
    refused(invoke("train", "--config", str(config)))


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--set", "nokey"],
        ["features", "build", "events", "--out", "f", "--set", "nokey"],
        ["score-audience", "--events", "e", "--out", "a.csv", "--set", "nokey"],
    ],
)
def test_a_set_without_a_value(args: list[str]) -> None:
    refused(invoke(*args), "--set expects key=value", "nokey")


def test_features_build_names_a_missing_config() -> None:
    refused(invoke("features", "build", "events", "--out", "f", "--config", "/nope.yaml"), "/nope.yaml")


def test_ingest_names_an_unknown_source() -> None:
    refused(invoke("ingest", "shopify", "x.csv", "--out", "o"), "shopify")


def test_score_audience_names_missing_events_before_loading_a_model() -> None:
    refused(invoke("score-audience", "--events", "/nope", "--out", "a.csv"), "/nope")


def test_score_audience_names_a_time_that_is_not_one(isolated: Path) -> None:
    (isolated / "events").mkdir()
    refused(invoke("score-audience", "--events", "events", "--out", "a.csv", "--now", "soon"), "soon")


def test_score_audience_names_a_missing_model(isolated: Path) -> None:
    (isolated / "events").mkdir()  # and a new, empty MLflow store: its creation is not logged by default
    refused(invoke("score-audience", "--events", "events", "--out", "a.csv"), "journey-scorer")


def test_decisions_export_refuses_a_store_that_is_not_there(isolated: Path) -> None:
    missing = isolated / "nowhere" / "journey.db"
    refused(invoke("decisions", "export", "--out", "d.csv", "--store", f"sqlite:///{missing}"), str(missing))
    assert not missing.parent.exists()  # nothing created by a read


def test_report_names_a_missing_decision_log() -> None:
    refused(invoke("report", "--decisions", "/nope.csv", "--out", "r", "--no-mlflow"), "/nope.csv")


def test_simulate_names_a_bad_setting() -> None:
    refused(invoke("simulate", "--out", "shop", "--control-share", "1.5"), "control_share")


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.train

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug, not a mistake of the user")

    monkeypatch.setattr(training.train, "evaluate_registered", broken)
    result = invoke("evaluate", "--features", "f")
    assert isinstance(result.exception, KeyError)


def test_verbose_shows_the_traceback_of_a_handled_error() -> None:
    result = invoke("-v", "train", "--set", "fit.epoch=3")
    assert isinstance(result.exception, ValueError)


def test_which_errors_are_the_users() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
    from pydantic import BaseModel, ConfigDict, ValidationError

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int = 0

    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({"n": "x", "m": 1})
    assert user_error(caught.value) == (
        "invalid Settings: n: Input should be a valid integer, unable to parse string as an integer; "
        "m: unknown setting"
    )
    assert user_error(FileNotFoundError(2, "No such file or directory", "/nope")) is not None
    assert user_error(ValueError("bad\n  value")) == "bad value"
    missing = MlflowException("Registered Model with name=x not found", RESOURCE_DOES_NOT_EXIST)
    assert user_error(missing) == "Registered Model with name=x not found"
    no_alias = MlflowException("Registered model alias champion not found.", INVALID_PARAMETER_VALUE)
    assert user_error(no_alias) == "Registered model alias champion not found."
    misuse = MlflowException("Changing param values is not allowed", INVALID_PARAMETER_VALUE)
    assert user_error(misuse) is None  # a bug of the caller, not a missing model
    assert user_error(KeyError("k")) is None
    assert user_error(TypeError("t")) is None
    assert user_error(RuntimeError("r")) is None


def test_a_set_below_a_setting_that_is_a_value_is_named() -> None:
    refused(invoke("train", "--set", "fit.max_epochs=3", "--set", "fit.max_epochs.x=1"), "fit.max_epochs.x")


def test_a_config_file_that_is_not_a_mapping_is_named(isolated: Path) -> None:
    config = isolated / "train.yaml"
    config.write_text("- fit\n- model\n")
    refused(invoke("train", "--config", str(config)), "train.yaml", "mapping")
