"""The admin API fuzzed from its own OpenAPI document (schemathesis), with and without the
token, against ``sluice serve`` on a simulated fleet: never a 5xx, an OpenAI error body on
every 4xx, and without the token nothing but 401s."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import Case

from gateway.api import openapi
from tests.fuzz.conftest import TALLY, TOKEN, Target, start_gateway, stop


@pytest.fixture(scope="module")
def admin_gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    target = start_gateway(sim_url, tmp_path_factory.mktemp("admin"), SLUICE_ADMIN_TOKEN=TOKEN)
    try:
        yield target
    finally:
        stop(target)


# The document the gateway serves at /admin/openapi.json (tests/integration checks it).
SCHEMA = schemathesis.openapi.from_dict(openapi.document())
CASES = SCHEMA.as_strategy()


LOOPBACK = "http://127.0.0.1:9"  # the discard port: nothing listens, nothing leaves the host


def _loopback_only(value: Any) -> Any:
    """Every URL in a generated body (backend and webhook addresses) pointed at loopback: the
    gateway probes the backends it is given and posts to webhooks, and a fuzzer's made-up
    host must never be contacted."""
    if isinstance(value, dict):
        return {k: _loopback_only(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_loopback_only(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return LOOPBACK
    return value


def _call(case: Case[Any], base_url: str, headers: dict[str, str]) -> Any:
    if isinstance(case.body, dict | list | str):
        case.body = _loopback_only(case.body)
    return case.call(base_url=base_url, headers=headers, timeout=30)


def _check(response: Any) -> None:
    TALLY[f"admin {response.status_code}"] += 1
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body


@given(case=CASES)
def test_admin_api_with_the_token(admin_gateway: Target, case: Case[Any]) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = _call(case, admin_gateway.url, headers)
    _check(response)


@given(case=CASES, wrong=st.booleans())
def test_admin_api_without_the_token(admin_gateway: Target, case: Case[Any], wrong: bool) -> None:
    headers = {"Authorization": "Bearer wrong"} if wrong else {}
    response = _call(case, admin_gateway.url, headers)
    _check(response)
    assert response.status_code == 401, response.text[:300]
    assert response.headers["www-authenticate"] == ['Bearer realm="sluice"']
