"""Property-based fuzzing of the OpenAPI schema (schemathesis): whatever a client sends, the service
answers with a documented status, never a 5xx, and its bodies follow the schema it publishes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from predictor.registry import CHAMPION, MODEL_NAME
from serving.app import create_app
from serving.model import ModelManager
from serving.settings import ServeSettings
from serving.store import open_store
from tests.worlds import Served

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "fuzz-key"


@pytest.fixture(scope="module")
def api_schema(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Any:
    manager = ModelManager(MODEL_NAME, CHAMPION)
    manager.reload()
    store = open_store(f"sqlite:///{Path(tmp_path_factory.mktemp('fuzz')) / 'online.db'}", max_events=50)
    app = create_app(
        ServeSettings(api_keys=(KEY,), reload_interval_s=0, seed=0, max_batch=20, max_events_per_request=50),
        store=store,
        manager=manager,
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_and_documented_answers(api_schema: Any, mode: GenerationMode) -> None:
    """Every operation, with bodies that follow the schema (positive) and bodies that break it (negative).

    The schemathesis pytest plugin does not load under this pytest, so the test drives Hypothesis itself
    with schemathesis's strategies and checks, one operation after the other.
    """
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    fuzzed = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            case.call_and_validate(headers={"X-API-Key": KEY}, checks=CHECKS)

        try:
            check()
        except Unsatisfiable:
            # Nothing to break: an operation without parameters or body has no negative cases.
            assert mode is GenerationMode.NEGATIVE, operation.label
            continue
        except Exception as err:
            raise AssertionError(f"{operation.label} ({mode.value}): {err}") from err
        fuzzed.append(operation.label)
    assert len(fuzzed) >= 6, fuzzed
