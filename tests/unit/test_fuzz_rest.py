"""REST API fuzzing, the short version for CI: schemathesis against docs/openapi.json,
3 generated cases per operation and generation mode (fixed seed) plus schemathesis'
deterministic coverage cases, sent in process to the real API on the in-memory doubles
with web's token, batch's token, no token and garbage tokens (reliability/fuzz_rest.py;
the full run and its figures: docs/reliability.md#rest-api-fuzzing). Then three broken
backends, to show each kind of check fails when it should."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fastapi import HTTPException

from reliability import fuzz_rest as fuzz  # the script, as a module

SOLAR = "GET /v1/apps/{app}/solar_power"


@pytest.fixture(scope="module")
def report() -> Any:
    return fuzz.run(examples=3, seed=1)


@pytest.mark.timeout(120)
def test_fuzz_reaches_every_operation_as_every_identity(report: Any) -> None:
    doc = json.loads(fuzz.DOC.read_text())
    documented = {f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops}
    assert set(report.operations) == documented
    # every operation answered 2xx to web at least once: the fuzz got past the auth
    assert set(report.own_2xx) == documented, documented - set(report.own_2xx)
    for identity in fuzz.IDENTITIES:
        assert report.per_identity[identity] > 0, report.per_identity
    for status in ("200", "401", "403", "404", "422"):
        assert report.statuses[status] > 0, report.statuses
    assert report.per_mode["positive"] > 0 and report.per_mode["negative"] > 0
    assert report.stream_requests > 0 and report.published > 0


def test_fuzz_finds_no_server_error_no_mismatch_and_no_leak(report: Any) -> None:
    """No 5xx, every status code, content type, body and header as docs/openapi.json
    says, invalid requests refused, no 2xx for another app's token, no token or a wrong
    one, and no other app in any answer or published command. The failures are listed."""
    assert report.document_is_current, fuzz.render(report)
    assert report.failures == {}, fuzz.render(report)


def _broken(state: Callable[[str], Awaitable[Any]]) -> Any:
    """The fuzz of one operation with the state source's ``state(app)`` replaced."""
    env = fuzz.make_env()
    env.state.state = state
    return fuzz.run(examples=3, seed=1, coverage=False, include=SOLAR.__eq__, env=env)


def test_a_server_error_is_reported() -> None:
    async def crash(app: str) -> Any:
        raise RuntimeError("boom")

    rep = _broken(crash)
    assert rep.failures_by_check["not_a_server_error"] > 0 and not rep.ok()


def test_an_undocumented_status_is_reported() -> None:
    async def conflict(app: str) -> Any:
        raise HTTPException(409, "not in the document")

    rep = _broken(conflict)
    assert rep.failures_by_check["status_code_conformance"] > 0, fuzz.render(rep)


def test_another_apps_data_in_an_answer_is_reported() -> None:
    batch = fuzz.make_env().state.states["batch"]

    async def batchs(app: str) -> Any:
        return batch

    rep = _broken(batchs)
    assert rep.failures_by_check["tenant_isolation"] > 0, fuzz.render(rep)
