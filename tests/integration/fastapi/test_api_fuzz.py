"""Schemathesis generates requests for every operation of the API's OpenAPI schema
(valid and invalid bodies, paths and queries): the API must never answer 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings


def test_no_server_errors_on_any_operation(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    failures: list[str] = []
    tested = 0
    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    for result in schema.get_all_operations():
        operation = result.ok()
        tested += 1
        strategy = operation.as_strategy(generation_mode=modes[0]) | operation.as_strategy(
            generation_mode=modes[1]
        )

        @given(case=strategy)
        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=api_url, timeout=10)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: "
                                f"{response.status_code} {response.text[:200]}")

        check()
    assert tested >= 8
    assert failures == []
