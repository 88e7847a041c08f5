"""Property-based fuzzing of the OpenAPI schema with schemathesis against a real uvicorn server:
whatever the generated request, no 5xx, and every response conforms to the schema — its
status is listed, its content type is the listed one, its body validates against the listed
model (bounded: a few dozen examples per operation)."""

from __future__ import annotations

import time

import pytest
import schemathesis
from helpers_serving import make_checkpoint, running_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from semlayout.serving.app import create_app
from semlayout.serving.settings import ServeSettings

EXAMPLES = 25
STATS: dict[str, dict[int, int]] = {}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.mark.slow
def test_openapi_fuzz_never_answers_5xx_and_conforms(tmp_path):
    ckpt = make_checkpoint(tmp_path / "c", seed=2)
    app = create_app(
        ServeSettings(
            model=str(ckpt),
            monitor_db=tmp_path / "m.db",
            feedback_uri=tmp_path / "fb",
            api_token="fuzz-api",
            admin_token="fuzz-admin",
            poll_interval_s=0,
        )
    )
    with running_server(app) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        failures: list[str] = []
        counts: dict[str, int] = {}
        t0 = time.monotonic()
        for result in schema.get_all_operations():
            op = result.ok()

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            # schema-valid requests and schema-violating ones (whose refusals must conform too)
            @given(
                case=st.one_of(
                    op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE)
                )
            )
            def run(case) -> None:
                label = f"{case.operation.method.upper()} {case.operation.path}"
                # half the cases carry a valid token so the handlers behind the auth check get
                # fuzzed too
                n = sum(STATS.get(label, {}).values())
                if n % 2:
                    case.headers = {**(case.headers or {}), "Authorization": "Bearer fuzz-admin"}
                response = case.call(base_url=url, timeout=30)
                counts[label] = counts.get(label, 0) + 1
                STATS.setdefault(label, {}).setdefault(response.status_code, 0)
                STATS[label][response.status_code] += 1
                try:
                    case.validate_response(response, checks=CHECKS)
                except (Exception, BaseExceptionGroup) as err:  # noqa: BLE001 - all are collected
                    failures.append(
                        f"{label} -> {response.status_code}: {str(err).splitlines()[:3]} "
                        f"{response.text[:200]}"
                    )

            run()
        elapsed = time.monotonic() - t0
    assert not failures, failures
    assert len(counts) >= 10 and sum(counts.values()) >= 100, counts
    assert elapsed < 120
    # the valid token got the requests past the auth check
    assert (
        200 in STATS["POST /v1/admin/reload"]
        and 404 in STATS["POST /v1/ground-truth/{prediction_id}"]
    ), STATS
