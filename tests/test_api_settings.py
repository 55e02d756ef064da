"""The service's settings (one pydantic-settings class: YAML underneath, `JOURNEY_*` on top, unknown keys
refused) and `journey serve`'s handling of a user's mistakes: one line, no traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from features.policy import RuleConfig
from journey.cli import app as cli
from serving.settings import ServeSettings

SHIPPED = Path(__file__).parents[1] / "configs" / "serve.yaml"
# One value, other than the default, for every field, as the environment would give it.
EVERY_FIELD = {
    "tracking_uri": "sqlite:///x.db",
    "model_name": "other",
    "model_alias": "challenger",
    "reload_interval_s": "5",
    "store_url": "redis://127.0.0.1:6379/0",
    "history_len": "100",
    "api_keys": "k",
    "allow_no_auth": "true",
    "max_body_bytes": "1000",
    "max_events_per_request": "10",
    "max_batch": "10",
    "default_items": "5",
    "max_items": "50",
    "exploration": "softmax",
    "epsilon": "0.1",
    "temperature": "0.5",
    "control_share": "0.1",
    "control_salt": "salt",
    "min_uplift": "0.01",
    "rules": '{"max_emails_7d": 1}',
    "max_clock_skew_s": "60",
    "workers": "2",
    "torch_threads": "2",
    "batch_wait_ms": "0",
    "batch_max_customers": "8",
    "seed": "1",
}


def test_every_field_is_settable_from_the_environment() -> None:
    environ = {
        "JOURNEY_MAX_BATCH": "7",
        "JOURNEY_BATCH_WAIT_MS": "0.5",
        "JOURNEY_BATCH_MAX_CUSTOMERS": "16",
        "JOURNEY_WORKERS": "2",
        "JOURNEY_TORCH_THREADS": "3",
        "JOURNEY_ALLOW_NO_AUTH": "true",
        "JOURNEY_API_KEYS": "a, b,,",
        "JOURNEY_RULES": '{"max_emails_28d": 5}',
        "journey_seed": "11",  # names are case-insensitive, as pydantic-settings matches them
    }
    s = ServeSettings.load(None, {"rules.max_emails_7d": 2, "max_batch": 3}, environ=environ)
    assert (s.max_batch, s.batch_wait_ms, s.batch_max_customers, s.workers) == (7, 0.5, 16, 2)
    assert (s.torch_threads, s.allow_no_auth, s.seed) == (3, True, 11)
    assert s.api_keys == ("a", "b")
    assert s.rules == RuleConfig(max_emails_7d=2, max_emails_28d=5)  # the variable merges over the file
    default = ServeSettings.from_dict({})
    for name, value in EVERY_FIELD.items():  # no field the environment cannot reach
        loaded = ServeSettings.load(None, {}, environ={f"JOURNEY_{name.upper()}": value})
        assert getattr(loaded, name) != getattr(default, name), name
    assert set(EVERY_FIELD) == set(ServeSettings.model_fields)


def test_the_environment_wins_over_the_file_and_the_overrides(tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("max_batch: 5\nmax_items: 50\n")
    s = ServeSettings.load(config, {"max_items": 40}, environ={"JOURNEY_MAX_ITEMS": "30"})
    assert (s.max_batch, s.max_items) == (5, 30)
    assert ServeSettings.load(config, {"max_items": 40}, environ={}).max_items == 40


def test_from_dict_reads_the_values_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNEY_MAX_BATCH", "9")
    assert ServeSettings.from_dict({}).max_batch == 1_000
    assert ServeSettings.load(None, {}, environ={}).max_batch == 1_000
    assert ServeSettings().max_batch == 9  # keyword construction is pydantic-settings': env on top
    assert ServeSettings(max_batch=4).max_batch == 4


def test_unknown_keys_and_bad_values_are_named_on_one_line() -> None:
    with pytest.raises(ValueError, match=r"unknown serve setting\(s\): batch_wait, max_bach") as err:
        ServeSettings.from_dict({"max_bach": 3, "batch_wait": 1})
    assert "\n" not in str(err.value)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"batch_wait_ms": -1}, "batch_wait_ms"),
        ({"batch_max_customers": 0}, "batch_max_customers"),
        ({"workers": 0}, "workers"),
        ({"torch_threads": 0}, "torch_threads"),
        ({"control_share": 1.0}, "control_share"),
        ({"default_items": 20, "max_items": 10}, "default_items"),
        ({"rules": {"max_emails_7": 1}}, "max_emails_7"),
        ({"workers": 2, "reload_interval_s": 0}, "reaches one of them"),
    ]
    for bad, named in cases:
        with pytest.raises(ValueError, match=named):
            ServeSettings.from_dict(bad)
    with pytest.raises(ValueError, match="max_items"):
        ServeSettings.load(None, {}, environ={"JOURNEY_MAX_ITEMS": "many"})


def test_batching_defaults_and_the_shipped_file() -> None:
    s = ServeSettings.load(SHIPPED, environ={})
    assert (s.batch_wait_ms, s.batch_max_customers) == (2.0, 64)
    assert s == ServeSettings.from_dict({})
    assert s.replace(seed=3).seed == 3
    with pytest.raises(ValueError, match="batch_wait_ms"):
        s.replace(batch_wait_ms=-0.1)


def test_torch_threads_share_the_cores_among_the_workers() -> None:
    assert ServeSettings.from_dict({}).threads_per_worker(cores=8) == 7  # a core for the Python threads
    assert ServeSettings.from_dict({}).threads_per_worker(cores=2) == 1
    assert ServeSettings.from_dict({"workers": 3, "reload_interval_s": 5}).threads_per_worker(cores=8) == 1
    assert ServeSettings.from_dict({"workers": 4, "reload_interval_s": 5}).threads_per_worker(cores=2) == 1
    assert (
        ServeSettings.from_dict(
            {"workers": 4, "torch_threads": 2, "reload_interval_s": 5}
        ).threads_per_worker(cores=2)
        == 2
    )


def test_to_dict_masks_the_keys() -> None:
    out = ServeSettings.from_dict({"api_keys": ["secret-1"]}).to_dict()
    assert out["api_keys"] == ["se…"]
    assert out["rules"]["max_emails_7d"] == 3
    assert set(out) == set(ServeSettings.model_fields)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--workers", "0"], "workers"),
        (["--workers", "2", "--set", "reload_interval_s=0"], "reaches one of them"),
        (["--set", "max_bach=3"], "unknown serve setting(s): max_bach"),
        (["--config", "missing.yaml"], "missing.yaml"),
        (["--set", "nokey"], "--set expects key=value"),
        (["--store", "postgres://x"], "unsupported store URL"),
        (["--log-level", "loud"], "--log-level must be one of"),
    ],
)
def test_serve_refuses_a_mistake_in_one_line(
    args: list[str], said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JOURNEY_API_KEYS", "k")
    monkeypatch.delenv("JOURNEY_CONFIG", raising=False)
    result = CliRunner().invoke(cli, ["serve", *args])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # typer's Exit, not an error's traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), result.output
    assert said in lines[0], result.output


def test_serve_refuses_to_start_without_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JOURNEY_API_KEYS", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--store", f"sqlite:///{tmp_path / 'o.db'}"])
    assert result.exit_code == 1
    assert "JOURNEY_API_KEYS" in result.output
