"""Real vendor error responses and our own edge cases, replayed by the
simulator, reach one of their expected outcomes through ``request()``."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from pool import services
from pool.models import ApiKey
from pool.simulator import Reply

DATA = Path(__file__).parent / "data"
CASES = [
    *json.loads((DATA / "vendor_errors.json").read_text())["cases"],
    *json.loads((DATA / "extra_errors.json").read_text())["cases"],
]
# Headers that describe the recorded transfer, not the replayed one.
TRANSFER_HEADERS = {
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
}


def replay(case: dict) -> Reply:
    headers = {
        name: value
        for name, value in case["headers"].items()
        if name.lower() not in TRANSFER_HEADERS
    }
    return Reply(case["status"], case["body"], headers)


def observed_outcome(first: ApiKey, response, started) -> str:
    """Return the outcome the pool reached for the first key, read from the
    key's stored status fields and from which key served.

    The fields are read rather than ``status``, because a cooldown of a few
    milliseconds is over before the test looks.
    """
    if first.is_exceeded:
        return "exceeded"
    if first.is_invalid:
        return "invalid"
    if first.cooldown_until is not None:
        if first.cooldown_until - started >= timedelta(hours=1):
            return "rate_limited_long"
        return "rate_limited"
    if response.pool_key == first.name:
        return "request_error"
    return "transient"


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_vendor_error_reaches_expected_outcome(case, sim_vendor, make_key, simulator):
    vendor = sim_vendor(case["protocol"])
    config = {"api_version": "2024-10-21"}
    first = make_key(vendor, secret=f"sk-sim-ok-case-{case['id']}", config=config)
    second = make_key(vendor, secret="sk-sim-ok-second", config=config)
    simulator.script(first.secret, replay(case))
    started = timezone.now()

    response = services.request(vendor, "POST", "chat/completions", json={})

    first.refresh_from_db()
    outcome = observed_outcome(first, response, started)
    expected = set(case["expected"])
    if "rate_limited_long" in expected:
        expected.add("exceeded")
    assert outcome in expected
    if outcome == "request_error":
        assert response.status_code == case["status"]
        assert simulator.count(second.secret) == 0
    else:
        assert response.pool_key == second.name
        assert response.status_code == 200
