"""Failover through ``request()``, ``call()`` and ``probe()`` against the
vendor simulator on 127.0.0.1."""

from __future__ import annotations

import logging
import math
import os
import socket
import struct
import subprocess
import sys
import threading
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from pool import services
from pool.models import ApiKey, Vendor
from pool.services import (
    Attempt,
    KeyInvalid,
    NoUsableKey,
    QuotaExceeded,
    RateLimited,
    SkippedKey,
    SkippedKeyLog,
    TransientError,
)
from pool.simulator import Reply, VendorSimulator
from tests.conftest import fake_secret

PROTOCOLS = [protocol.value for protocol in Vendor.Protocol]
AZURE_CONFIG = {"api_version": "2024-10-21"}
CALL_PATHS = {
    "openai": "chat/completions",
    "anthropic": "messages",
    "azure": "deployments/sim/chat/completions",
    "gemini": "models/gemini-sim:generateContent",
}


@pytest.fixture
def pool_of(sim_vendor, make_key):
    """Create a vendor of ``protocol`` with one key per secret, in order."""

    def make(protocol: str, *secrets: str) -> tuple[Vendor, list[ApiKey]]:
        vendor = sim_vendor(protocol)
        keys = [
            make_key(vendor, secret=secret, config=dict(AZURE_CONFIG))
            for secret in secrets
        ]
        return vendor, keys

    return make


@pytest.fixture(autouse=True)
def fresh_skipped_key_log():
    """Forget the skips logged by earlier tests, whose vendors and keys have
    the same slugs and names."""
    services.skipped_key_log.clear()
    yield
    services.skipped_key_log.clear()


def send(vendor, protocol: str = "openai"):
    return services.request(vendor, "POST", CALL_PATHS[protocol], json={"input": "hi"})


def reload(key: ApiKey) -> ApiKey:
    return ApiKey.objects.get(pk=key.pk)


# request(): one test per outcome and protocol ---------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
class TestRequestOutcomes:
    def test_success_uses_first_key(self, protocol, pool_of):
        vendor, (first, second) = pool_of(protocol, "sk-sim-ok-a1", "sk-sim-ok-a2")

        response = send(vendor, protocol)

        assert response.status_code == 200
        assert response.pool_key == first.name
        assert response.pool_attempts == [Attempt(first.name, "success", 200, "")]

    def test_exceeded_marks_key_and_fails_over(self, protocol, pool_of):
        vendor, (first, second) = pool_of(protocol, "sk-sim-quota0-b1", "sk-sim-ok-b2")

        response = send(vendor, protocol)

        assert response.pool_key == second.name
        assert reload(first).status == ApiKey.Status.EXCEEDED
        assert reload(first).status_reason != ""
        assert reload(second).status == ApiKey.Status.NORMAL

    def test_invalid_marks_key_and_fails_over(self, protocol, pool_of):
        vendor, (first, second) = pool_of(protocol, "sk-sim-invalid-c1", "sk-sim-ok-c2")

        response = send(vendor, protocol)

        assert response.pool_key == second.name
        assert reload(first).status == ApiKey.Status.INVALID

    def test_rate_limited_follows_retry_hint(self, protocol, pool_of):
        vendor, (first, second) = pool_of(protocol, "sk-sim-rate45-d1", "sk-sim-ok-d2")
        before = timezone.now()

        response = send(vendor, protocol)

        first = reload(first)
        assert response.pool_key == second.name
        assert first.status == ApiKey.Status.RATE_LIMITED
        assert first.cooldown_until >= before + timedelta(seconds=45)
        assert first.cooldown_until <= timezone.now() + timedelta(seconds=45)

    def test_transient_keeps_status_and_fails_over(self, protocol, pool_of):
        vendor, (first, second) = pool_of(
            protocol, "sk-sim-error503-e1", "sk-sim-ok-e2"
        )

        response = send(vendor, protocol)

        assert response.pool_key == second.name
        assert response.pool_attempts[0].outcome == "transient"
        assert reload(first).status == ApiKey.Status.NORMAL

    def test_request_error_returned_without_failover(
        self, protocol, pool_of, simulator
    ):
        vendor, (first, second) = pool_of(protocol, "sk-sim-ok-f1", "sk-sim-ok-f2")
        simulator.script(
            first.secret,
            Reply(
                400,
                {
                    "error": {
                        "message": "This model's maximum context length is 8192 tokens."
                    }
                },
            ),
        )

        response = send(vendor, protocol)

        assert response.status_code == 400
        assert response.pool_key == first.name
        assert simulator.count(second.secret) == 0
        assert reload(first).status == ApiKey.Status.NORMAL


# call(): one test per outcome and protocol ------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
class TestCallOutcomes:
    def test_success_returns_value(self, protocol, pool_of):
        vendor, (first, _) = pool_of(protocol, fake_secret(), fake_secret())

        assert services.call(vendor, lambda key: key.name) == first.name

    @pytest.mark.parametrize(
        ("problem", "status"),
        [
            (QuotaExceeded("Insufficient balance"), ApiKey.Status.EXCEEDED),
            (KeyInvalid("Key revoked"), ApiKey.Status.INVALID),
            (RateLimited("Slow down", retry_after=30), ApiKey.Status.RATE_LIMITED),
            (TransientError("Overloaded"), ApiKey.Status.NORMAL),
        ],
    )
    def test_problem_marks_key_and_fails_over(self, protocol, problem, status, pool_of):
        vendor, (first, second) = pool_of(protocol, fake_secret(), fake_secret())

        def use(key: ApiKey) -> str:
            if key.pk == first.pk:
                raise problem
            return key.name

        assert services.call(vendor, use) == second.name
        assert reload(first).status == status

    def test_other_exception_propagates_and_marks_nothing(self, protocol, pool_of):
        vendor, (first, second) = pool_of(protocol, fake_secret(), fake_secret())
        tried = []

        def use(key: ApiKey) -> str:
            tried.append(key.name)
            raise KeyError("model")

        with pytest.raises(KeyError):
            services.call(vendor, use)
        assert tried == [first.name]
        assert reload(first).status == ApiKey.Status.NORMAL


def test_call_rate_limited_without_hint_cools_down_60s(vendor, make_key):
    first = make_key(vendor)
    make_key(vendor)
    before = timezone.now()

    def use(key: ApiKey) -> None:
        if key.pk == first.pk:
            raise RateLimited("Too many requests", retry_after=0)

    services.call(vendor, use)

    cooldown_until = reload(first).cooldown_until
    assert cooldown_until >= before + timedelta(seconds=60)
    assert cooldown_until <= timezone.now() + timedelta(seconds=60)


def test_call_raises_no_usable_key_with_attempts(vendor, make_key):
    first = make_key(vendor)
    second = make_key(vendor)

    def use(key: ApiKey) -> None:
        raise QuotaExceeded(f"Quota of {key.secret} is used up")

    with pytest.raises(NoUsableKey) as raised:
        services.call(vendor, use)

    attempts = raised.value.attempts
    assert [attempt.key_name for attempt in attempts] == [first.name, second.name]
    assert [attempt.outcome for attempt in attempts] == ["exceeded", "exceeded"]
    assert first.secret not in str(raised.value)
    assert "[redacted]" in attempts[0].message


# Failover rules ---------------------------------------------------------------


def test_request_follows_priority_order(pool_of):
    vendor, keys = pool_of("openai", "sk-sim-ok-g1", "sk-sim-ok-g2", "sk-sim-ok-g3")
    ApiKey.objects.reorder(vendor, [keys[2].pk, keys[0].pk, keys[1].pk])

    response = send(vendor)

    assert response.pool_key == keys[2].name


def test_request_skips_unusable_keys(pool_of, simulator):
    vendor, keys = pool_of(
        "openai", "sk-sim-ok-h1", "sk-sim-ok-h2", "sk-sim-ok-h3", "sk-sim-ok-h4"
    )
    keys[0].disable()
    ApiKey.objects.filter(pk=keys[1].pk).update(
        expires_at=timezone.now() - timedelta(days=1)
    )
    ApiKey.objects.filter(pk=keys[2].pk).update(
        cooldown_until=timezone.now() + timedelta(minutes=5)
    )

    response = send(vendor)

    assert response.pool_key == keys[3].name
    assert simulator.count(keys[0].secret) == 0


def test_request_accepts_vendor_slug(pool_of):
    vendor, (first,) = pool_of("openai", "sk-sim-ok-i1")

    response = services.request(vendor.slug, "GET", "models")

    assert response.pool_key == first.name


def test_request_unknown_slug_rejected(db):
    with pytest.raises(Vendor.DoesNotExist):
        services.request("no-such-vendor", "GET", "models")


@pytest.mark.parametrize(
    "path",
    ["https://attacker.example/v1/models", "//attacker.example/models", "HTTP://x/y"],
)
def test_request_absolute_url_rejected(path, pool_of, simulator):
    vendor, (first,) = pool_of("openai", "sk-sim-ok-j1")

    with pytest.raises(ValueError, match="absolute URL"):
        services.request(vendor, "GET", path)
    assert simulator.count(first.secret) == 0


@pytest.mark.parametrize("path", ["models", "/models"])
def test_request_path_joined_with_one_slash(path, pool_of, simulator):
    vendor, (first,) = pool_of("openai", "sk-sim-ok-k1")

    services.request(vendor, "GET", path)

    assert simulator.requests[-1].path == "/v1/models"


def test_request_uses_key_api_url(pool_of, simulator):
    vendor, (first,) = pool_of("openai", "sk-sim-ok-l1")
    ApiKey.objects.filter(pk=first.pk).update(api_url=simulator.url("custom/v2"))

    services.request(vendor, "GET", "models")

    assert simulator.requests[-1].path == "/custom/v2/models"


def test_request_no_keys_raises_no_usable_key(vendor):
    with pytest.raises(NoUsableKey) as raised:
        services.request(vendor, "GET", "models")

    assert raised.value.attempts == []
    assert "the vendor has no keys" in str(raised.value)


def test_request_all_keys_fail_raises_no_usable_key(pool_of):
    vendor, keys = pool_of("anthropic", "sk-sim-invalid-m1", "sk-sim-html-m2")

    with pytest.raises(NoUsableKey) as raised:
        send(vendor, "anthropic")

    attempts = raised.value.attempts
    assert [attempt.outcome for attempt in attempts] == ["invalid", "transient"]
    assert [attempt.status_code for attempt in attempts] == [401, 502]
    assert attempts[1].message.startswith("HTML error page")
    assert keys[0].name in str(raised.value)


def test_request_timeout_fails_over(pool_of):
    vendor, (slow, fast) = pool_of("openai", "sk-sim-slow500-n1", "sk-sim-ok-n2")

    response = services.request(vendor, "GET", "models", timeout=0.1)

    assert response.pool_key == fast.name
    assert response.pool_attempts[0] == Attempt(
        slow.name, "transient", None, "Timed out waiting for the vendor."
    )
    assert reload(slow).status == ApiKey.Status.NORMAL


def test_request_connection_error_fails_over(sim_vendor, make_key, simulator):
    vendor = sim_vendor("openai")
    closed = make_key(vendor, secret="sk-sim-ok-o1", api_url=closed_port_url())
    working = make_key(vendor, secret="sk-sim-ok-o2")

    response = send(vendor)

    assert response.pool_key == working.name
    assert response.pool_attempts[0].message == "Could not connect to the vendor."
    assert reload(closed).status == ApiKey.Status.NORMAL


def closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_request_default_timeout_applied(pool_of, monkeypatch):
    vendor, (slow, fast) = pool_of("openai", "sk-sim-slow500-p1", "sk-sim-ok-p2")
    monkeypatch.setattr(services, "DEFAULT_TIMEOUT", (1.0, 0.1))

    response = services.request(vendor, "GET", "models")

    assert response.pool_key == fast.name


def test_request_error_status_not_marked_as_exceeded(pool_of, simulator):
    vendor, (first, second) = pool_of("openai", "sk-sim-ok-q1", "sk-sim-ok-q2")
    simulator.script(first.secret, Reply(404, {"error": {"message": "Unknown model"}}))

    response = send(vendor)

    assert response.status_code == 404
    assert reload(first).status == ApiKey.Status.NORMAL


# Protocol headers on the wire -------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "header", "value"),
    [
        ("openai", "authorization", "Bearer sk-sim-ok-r1"),
        ("anthropic", "x-api-key", "sk-sim-ok-r1"),
        ("azure", "api-key", "sk-sim-ok-r1"),
        ("gemini", "x-goog-api-key", "sk-sim-ok-r1"),
    ],
)
def test_request_sends_protocol_auth_header(
    protocol, header, value, pool_of, simulator
):
    vendor, _ = pool_of(protocol, "sk-sim-ok-r1")

    send(vendor, protocol)

    assert simulator.requests[-1].headers[header] == value


def test_request_anthropic_version_default(pool_of, simulator):
    vendor, _ = pool_of("anthropic", "sk-sim-ok-s1")

    send(vendor, "anthropic")

    assert simulator.requests[-1].headers["anthropic-version"] == "2023-06-01"


def test_request_anthropic_version_from_caller_kept(pool_of, simulator):
    vendor, _ = pool_of("anthropic", "sk-sim-ok-s2")

    services.request(
        vendor, "POST", "messages", json={}, headers={"Anthropic-Version": "2024-01-01"}
    )

    assert simulator.requests[-1].headers["anthropic-version"] == "2024-01-01"


def test_request_azure_api_version_from_config(pool_of, simulator):
    vendor, _ = pool_of("azure", "sk-sim-ok-t1")

    send(vendor, "azure")

    assert simulator.requests[-1].query["api-version"] == ["2024-10-21"]


def test_request_adds_config_headers(sim_vendor, make_key, simulator):
    vendor = sim_vendor("openai")
    make_key(
        vendor, secret="sk-sim-ok-u1", config={"headers": {"OpenAI-Project": "proj_1"}}
    )

    send(vendor)

    assert simulator.requests[-1].headers["openai-project"] == "proj_1"


# Usage bookkeeping ------------------------------------------------------------


def test_usage_counted_after_flush(pool_of):
    vendor, (first, second) = pool_of("openai", "sk-sim-quota2-v1", "sk-sim-ok-v2")
    services.flush_usage()

    for _ in range(4):
        send(vendor)
    services.flush_usage()

    first, second = reload(first), reload(second)
    assert first.success_count == 2
    assert first.failure_count == 1
    assert second.success_count == 2
    assert second.last_used_at is not None


def test_successful_request_runs_one_query(pool_of, django_assert_num_queries):
    vendor, _ = pool_of("openai", "sk-sim-ok-w1")
    send(vendor)
    services.flush_usage()

    # The usable keys are read; usage waits in memory for the next flush.
    with django_assert_num_queries(1):
        send(vendor)


@pytest.mark.django_db(transaction=True)
def test_usage_written_by_timer(pool_of, settings):
    settings.KEYPOOL_USAGE_FLUSH_SECONDS = 0.05
    vendor, (key,) = pool_of("openai", "sk-sim-ok-w2")

    send(vendor)

    # Poll rather than sleep a fixed time: the timer thread writes soon.
    for _ in range(200):
        if reload(key).success_count:
            break
        threading.Event().wait(0.05)
    assert reload(key).success_count == 1
    assert reload(key).last_used_at is not None


# Probe ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_probe_lists_models(protocol, pool_of, simulator):
    _, (key,) = pool_of(protocol, "sk-sim-ok-x1")

    attempt = services.probe(key)

    assert attempt == Attempt(key.name, "success", 200, "")
    assert simulator.requests[-1].method == "GET"
    assert simulator.requests[-1].path.endswith("/models")


def test_probe_marks_invalid_key(pool_of):
    _, (key,) = pool_of("openai", "sk-sim-invalid-y1")

    attempt = services.probe(key)

    assert attempt.outcome == "invalid"
    assert attempt.status_code == 401
    assert key.secret not in attempt.message
    assert reload(key).status == ApiKey.Status.INVALID


def test_probe_connection_error_returns_transient(sim_vendor, make_key):
    vendor = sim_vendor("openai")
    key = make_key(vendor, secret="sk-sim-ok-z1", api_url=closed_port_url())

    attempt = services.probe(key)

    assert attempt.outcome == "transient"
    assert attempt.status_code is None


def test_probe_tests_disabled_key_too(pool_of):
    _, (key,) = pool_of("gemini", "sk-sim-quota0-z2")
    key.disable()

    attempt = services.probe(key)

    assert attempt.outcome == "exceeded"


# Status changes while a request is in flight -----------------------------------


@pytest.mark.django_db(transaction=True)
def test_mark_skipped_when_key_reenabled_during_request(pool_of, simulator):
    vendor, (first, second) = pool_of("openai", "sk-sim-ok-aa1", "sk-sim-ok-aa2")
    quota = {"error": {"type": "insufficient_quota", "message": "Out of quota"}}
    simulator.script(first.secret, Reply(429, quota, delay=0.3))

    def enable_elsewhere() -> None:
        try:
            ApiKey.objects.get(pk=first.pk).enable()
        finally:
            connection.close()

    timer = threading.Timer(0.1, enable_elsewhere)
    timer.start()
    response = send(vendor)
    timer.join()

    assert response.pool_key == second.name
    assert reload(first).status == ApiKey.Status.NORMAL


# Secrets never leak ------------------------------------------------------------


def test_no_secret_in_logs_errors_or_attempts(pool_of, simulator, caplog):
    caplog.set_level(logging.DEBUG)
    secrets = ["sk-sim-invalid-leak01", "sk-sim-quota0-leak02", "sk-sim-rate5-leak03"]
    vendor, keys = pool_of("openai", *secrets)
    echo = {"error": {"message": f"Key {secrets[2]} is rate limited"}}
    simulator.script(secrets[2], Reply(429, echo))

    with pytest.raises(NoUsableKey) as raised:
        send(vendor)
    services.probe(reload(keys[0]))

    texts = [record.getMessage() for record in caplog.records]
    texts += [str(raised.value)] + [str(attempt) for attempt in raised.value.attempts]
    texts += [reload(key).status_reason for key in keys]
    assert len(caplog.records) > 0
    for secret in secrets:
        assert not [text for text in texts if secret in text]


# Concurrency --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_eight_threads_share_pool_until_exhausted(sim_vendor, make_key):
    vendor = sim_vendor("openai")
    keys = [make_key(vendor, secret=f"sk-sim-quota{n}-th{n}") for n in (5, 10, 15)]
    services.flush_usage()
    results: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            for _ in range(8):
                try:
                    response = send(vendor)
                except NoUsableKey:
                    outcome = "none"
                else:
                    outcome = "ok" if response.status_code == 200 else "bad"
                with lock:
                    results.append(outcome)
        finally:
            services.flush_usage()
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    counts = ApiKey.objects.filter(vendor=vendor).values_list(
        "success_count", flat=True
    )
    # The three keys can serve 5 + 10 + 15 calls between them.
    assert results.count("ok") == 30
    assert results.count("bad") == 0
    assert results.count("none") == 64 - 30
    assert sum(counts) == 30
    assert [reload(key).status for key in keys] == [ApiKey.Status.EXCEEDED] * 3


@pytest.mark.django_db(transaction=True)
def test_reenabled_key_used_by_next_call(pool_of, simulator):
    vendor, (first, second) = pool_of("openai", "sk-sim-quota1-ab1", "sk-sim-ok-ab2")
    send(vendor)
    assert send(vendor).pool_key == second.name
    assert reload(first).status == ApiKey.Status.EXCEEDED
    # The vendor has topped the key up.
    simulator.script(first.secret, Reply(200, {"object": "chat.completion"}))

    def enable_elsewhere() -> None:
        # A fresh connection, as the pool page in another process would use.
        try:
            ApiKey.objects.get(pk=first.pk).enable()
        finally:
            connection.close()

    thread = threading.Thread(target=enable_elsewhere)
    thread.start()
    thread.join()

    assert send(vendor).pool_key == first.name


# Redirects and streaming ------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_redirect_returned_not_followed(protocol, pool_of, simulator):
    vendor, (first,) = pool_of(protocol, "sk-sim-ok-ac1")
    elsewhere = closed_port_url()
    simulator.script(first.secret, Reply(302, None, {"Location": elsewhere}))

    response = send(vendor, protocol)

    assert response.status_code == 302
    assert response.pool_key == first.name
    assert response.headers["Location"] == elsewhere


def test_stream_success_left_unread(pool_of):
    vendor, _ = pool_of("openai", "sk-sim-ok-ad1")

    response = services.request(vendor, "GET", "models", stream=True)

    assert response._content_consumed is False
    assert response.json()["object"] == "list"


def test_stream_error_returned_with_body(pool_of, simulator):
    vendor, (first,) = pool_of("openai", "sk-sim-ok-ae1")
    body = {"error": {"message": "This model's maximum context length is 8192."}}
    simulator.script(first.secret, Reply(400, body))

    response = services.request(vendor, "POST", "chat/completions", stream=True)

    assert response.status_code == 400
    assert response.json() == body


# Secrets echoed by vendors or carried by errors ---------------------------------

# Azure secrets are 32 hexadecimal characters, a shape that the generic
# redaction patterns cannot recognise.
AZURE_FAKE_SECRETS = ["0" * 31 + "1", "0" * 31 + "2"]


def captured_texts(caplog, attempts: list[Attempt]) -> list[str]:
    texts = [record.getMessage() for record in caplog.records]
    return texts + [str(attempt) for attempt in attempts]


def test_echoed_azure_secret_never_logged(pool_of, simulator, caplog):
    caplog.set_level(logging.DEBUG)
    vendor, (first, second) = pool_of("azure", *AZURE_FAKE_SECRETS)
    rejected = {"error": {"code": "401", "message": f"Invalid key {first.secret}."}}
    too_long = {
        "error": {
            "code": "context_length_exceeded",
            "message": f"Maximum context length exceeded for key {second.secret}.",
        }
    }
    simulator.script(first.secret, Reply(401, rejected))
    simulator.script(second.secret, Reply(400, too_long))

    response = send(vendor, "azure")

    assert response.status_code == 400
    assert response.pool_key == second.name
    texts = captured_texts(caplog, response.pool_attempts)
    texts.append(reload(first).status_reason)
    assert len(caplog.records) > 0
    for secret in AZURE_FAKE_SECRETS:
        assert not [text for text in texts if secret in text]
    assert "[redacted]" in response.pool_attempts[0].message
    assert "[redacted]" in response.pool_attempts[1].message


def test_secret_cut_by_message_limit_redacted(pool_of, simulator, caplog):
    caplog.set_level(logging.DEBUG)
    vendor, (first, second) = pool_of("azure", *AZURE_FAKE_SECRETS)
    # The message is cut to 300 characters in the middle of the secret.
    message = "x" * 290 + f" {first.secret}"
    simulator.script(first.secret, Reply(401, {"error": {"message": message}}))

    response = send(vendor, "azure")

    assert response.pool_key == second.name
    texts = captured_texts(caplog, response.pool_attempts)
    texts.append(reload(first).status_reason)
    assert not [text for text in texts if first.secret[:8] in text]
    assert response.pool_attempts[0].message.endswith("[redacted]…")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "secret",
    [fake_secret("newline") + "\n", fake_secret("cyrillic") + "-ключ"],
    ids=["newline", "non-latin-1"],
)
def test_unsendable_secret_marked_invalid(protocol, secret, pool_of, caplog):
    caplog.set_level(logging.DEBUG)
    vendor, (first, second) = pool_of(protocol, secret, "sk-sim-ok-af2")

    response = send(vendor, protocol)

    first = reload(first)
    assert response.pool_key == second.name
    assert first.status == ApiKey.Status.INVALID
    assert first.status_reason == services.UNSENDABLE_SECRET_MESSAGE
    assert response.pool_attempts[0].outcome == "invalid"
    texts = captured_texts(caplog, response.pool_attempts)
    assert not [text for text in texts if secret.strip() in text]


def test_invalid_caller_header_never_echoed(pool_of, caplog):
    caplog.set_level(logging.DEBUG)
    vendor, (first,) = pool_of("openai", "sk-sim-ok-ag1")
    # Not shaped like any known secret, so only leaving out the error text
    # keeps it out of the logs.
    value = "fake-caller-value-0001\n"

    with pytest.raises(NoUsableKey) as raised:
        services.request(vendor, "GET", "models", headers={"X-Note": value})

    attempt = raised.value.attempts[0]
    assert attempt.outcome == "transient"
    assert attempt.message.startswith("InvalidHeader:")
    texts = captured_texts(caplog, raised.value.attempts) + [str(raised.value)]
    assert not [text for text in texts if value.strip() in text]
    assert reload(first).status == ApiKey.Status.NORMAL


# Retry hints given to call() ----------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "status"),
    [
        (math.inf, ApiKey.Status.RATE_LIMITED),
        (math.nan, ApiKey.Status.RATE_LIMITED),
        (-5, ApiKey.Status.RATE_LIMITED),
        ("30", ApiKey.Status.RATE_LIMITED),
        (object(), ApiKey.Status.RATE_LIMITED),
        (1e16, ApiKey.Status.EXCEEDED),
        (10**400, ApiKey.Status.EXCEEDED),
    ],
    ids=["inf", "nan", "negative", "string", "object", "1e16", "huge-int"],
)
def test_call_odd_retry_after_never_crashes(retry_after, status, vendor, make_key):
    first = make_key(vendor)
    second = make_key(vendor)

    def use(key: ApiKey) -> str:
        if key.pk == first.pk:
            raise RateLimited("Slow down", retry_after=retry_after)
        return key.name

    assert services.call(vendor, use) == second.name
    assert reload(first).status == status


def test_call_string_retry_after_followed(vendor, make_key):
    first = make_key(vendor)
    make_key(vendor)
    before = timezone.now()

    def use(key: ApiKey) -> None:
        if key.pk == first.pk:
            raise RateLimited("Slow down", retry_after="30")

    services.call(vendor, use)

    cooldown_until = reload(first).cooldown_until
    assert cooldown_until >= before + timedelta(seconds=30)
    assert cooldown_until <= timezone.now() + timedelta(seconds=30)


# Errors while an error body is read ----------------------------------------------


class RawServer:
    """A one-shot HTTP server on 127.0.0.1 for responses that the simulator
    cannot send: a body cut off by a reset, or a very large body."""

    def __init__(self, head: bytes, body: bytes = b"", *, reset: bool = False):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.sent_whole_body = False
        self.thread = threading.Thread(
            target=self.serve, args=(head, body, reset), daemon=True
        )
        self.thread.start()

    def serve(self, head: bytes, body: bytes, reset: bool) -> None:
        connection_, _ = self.listener.accept()
        with connection_, self.listener:
            connection_.recv(65536)
            try:
                connection_.sendall(head)
                for start in range(0, len(body), 65536):
                    connection_.sendall(body[start : start + 65536])
                self.sent_whole_body = True
            except OSError:
                return
            if reset:
                # Linger 0 makes close() send a TCP reset.
                connection_.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )

    def join(self) -> None:
        self.thread.join(timeout=10)


def error_head(length: int) -> bytes:
    return (
        "HTTP/1.1 429 Too Many Requests\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("stream", [True, False])
def test_bad_gzip_error_body_fails_over(stream, pool_of, simulator):
    vendor, (first, second) = pool_of("openai", "sk-sim-ok-ah1", "sk-sim-ok-ah2")
    simulator.script(
        first.secret, Reply(429, "not gzip data", {"Content-Encoding": "gzip"})
    )

    response = services.request(vendor, "GET", "models", stream=stream)

    assert response.pool_key == second.name
    assert response.pool_attempts[0].outcome == "transient"
    assert response.pool_attempts[0].status_code == 429
    assert reload(first).status == ApiKey.Status.NORMAL


@pytest.mark.parametrize("stream", [True, False])
def test_reset_during_error_body_fails_over(stream, sim_vendor, make_key):
    server = RawServer(error_head(100_000), b'{"error": {"message": "Rate', reset=True)
    vendor = sim_vendor("openai")
    first = make_key(vendor, secret="sk-sim-ok-ai1", api_url=server.url)
    second = make_key(vendor, secret="sk-sim-ok-ai2")

    response = services.request(vendor, "GET", "models", stream=stream)
    server.join()

    assert response.pool_key == second.name
    assert response.pool_attempts[0].outcome == "transient"
    assert reload(first).status == ApiKey.Status.NORMAL


def test_large_error_body_read_only_in_part(sim_vendor, make_key):
    # Far more than the socket buffers of both ends can hold, so the server
    # can only send it all if the pool reads it all.
    size = 48 * 1024 * 1024
    server = RawServer(error_head(size), b" " * size)
    vendor = sim_vendor("openai")
    first = make_key(vendor, secret="sk-sim-ok-aj1", api_url=server.url)
    second = make_key(vendor, secret="sk-sim-ok-aj2")

    response = send(vendor)
    server.join()

    assert response.pool_key == second.name
    assert reload(first).status == ApiKey.Status.RATE_LIMITED
    assert server.sent_whole_body is False


def test_bad_gzip_success_fails_over(pool_of, simulator):
    vendor, (first, second) = pool_of("openai", "sk-sim-ok-ak1", "sk-sim-ok-ak2")
    simulator.script(
        first.secret, Reply(200, "not gzip data", {"Content-Encoding": "gzip"})
    )

    response = send(vendor)

    assert response.pool_key == second.name
    assert response.pool_attempts[0].outcome == "transient"
    assert response.pool_attempts[0].status_code == 200


# Cookies and redirects -------------------------------------------------------------


def test_cookie_not_sent_with_next_key(pool_of, sim_vendor, make_key, simulator):
    vendor, (first,) = pool_of("openai", "sk-sim-ok-al1")
    other = sim_vendor("anthropic")
    second = make_key(other, secret="sk-sim-ok-al2")
    simulator.script(
        first.secret,
        Reply(200, {"object": "list"}, {"Set-Cookie": "session=abc123; Path=/"}),
    )

    send(vendor)
    send(other, "anthropic")

    seen = [
        received for received in simulator.requests if received.secret == second.secret
    ]
    assert len(seen) == 1
    assert "cookie" not in seen[0].headers


@pytest.fixture
def other_host():
    """A second simulator on another port of 127.0.0.1, as a foreign host."""
    server = VendorSimulator().start()
    server.script("", *[Reply(200, {"object": "list"})] * 4)
    yield server
    server.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_redirect_elsewhere_drops_key_headers(
    protocol, sim_vendor, make_key, simulator, other_host
):
    vendor = sim_vendor(protocol)
    config = dict(AZURE_CONFIG, headers={"X-Team": "ml"})
    first = make_key(vendor, secret="sk-sim-ok-am1", config=config)
    target = other_host.url("v1/elsewhere")
    simulator.script(first.secret, Reply(307, None, {"Location": target}))

    response = services.request(
        vendor, "POST", CALL_PATHS[protocol], json={}, allow_redirects=True
    )

    assert response.status_code == 200
    assert len(other_host.requests) == 1
    headers = other_host.requests[0].headers
    for name in ("authorization", "x-api-key", "api-key", "x-goog-api-key", "x-team"):
        assert name not in headers
    assert not [value for value in headers.values() if first.secret in value]


def test_redirect_same_origin_keeps_key_headers(pool_of, simulator):
    vendor, (first,) = pool_of("anthropic", "sk-sim-ok-an1")
    simulator.script(first.secret, Reply(307, None, {"Location": "/v1/moved"}))

    response = services.request(
        vendor, "POST", "messages", json={}, allow_redirects=True
    )

    assert response.status_code == 200
    assert simulator.count(first.secret) == 2


# Usage bookkeeping -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_usage_written_when_many_calls_wait(pool_of, settings):
    settings.KEYPOOL_USAGE_FLUSH_CALLS = 3
    vendor, (key,) = pool_of("openai", "sk-sim-ok-ao1")

    for _ in range(3):
        send(vendor)

    deadline = timezone.now() + timedelta(seconds=10)
    while reload(key).success_count < 3 and timezone.now() < deadline:
        threading.Event().wait(0.02)
    assert reload(key).success_count == 3


# Logging ------------------------------------------------------------------------


def service_records(caplog, level: int) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "pool.services" and record.levelno == level
    ]


def skip_records(caplog) -> list[logging.LogRecord]:
    return [
        record
        for record in service_records(caplog, logging.INFO)
        if record.getMessage().startswith("Skipped keys of vendor")
    ]


def test_failover_logged_with_vendor_key_and_status(pool_of, caplog):
    caplog.set_level(logging.INFO, logger="pool")
    vendor, (first, _) = pool_of("openai", "sk-sim-quota0-lg1", "sk-sim-ok-lg2")

    send(vendor)

    failovers = [
        record.getMessage()
        for record in service_records(caplog, logging.WARNING)
        if record.getMessage().startswith("Failover")
    ]
    assert len(failovers) == 1
    assert vendor.slug in failovers[0]
    assert first.name in failovers[0]
    assert "(status 429)" in failovers[0]


def test_mark_logged_with_vendor_key_and_status(pool_of, caplog):
    caplog.set_level(logging.INFO, logger="pool")
    vendor, (first, _) = pool_of("openai", "sk-sim-invalid-lg3", "sk-sim-ok-lg4")

    send(vendor)

    marks = [
        record.getMessage()
        for record in service_records(caplog, logging.WARNING)
        if record.getMessage().startswith("Marked")
    ]
    assert len(marks) == 1
    assert vendor.slug in marks[0]
    assert first.name in marks[0]
    assert "invalid" in marks[0]
    assert "(status 401)" in marks[0]


def test_skipped_keys_logged_in_one_line(pool_of, caplog):
    caplog.set_level(logging.INFO, logger="pool")
    vendor, (trial, old, _) = pool_of(
        "openai", "sk-sim-ok-lg5", "sk-sim-ok-lg6", "sk-sim-ok-lg7"
    )
    ApiKey.objects.filter(pk=trial.pk).update(is_exceeded=True)
    old.disable()

    send(vendor)

    records = skip_records(caplog)
    assert len(records) == 1
    assert records[0].getMessage() == (
        f"Skipped keys of vendor {vendor.slug} that are not usable: "
        f"{trial.name} (exceeded), {old.name} (disabled)"
    )


def test_skip_log_repeat_suppressed(pool_of, caplog):
    caplog.set_level(logging.INFO, logger="pool")
    vendor, (first, _) = pool_of("openai", "sk-sim-ok-lg8", "sk-sim-ok-lg9")
    first.disable()

    send(vendor)
    send(vendor)

    assert len(skip_records(caplog)) == 1


def test_skip_log_repeated_when_status_changes(pool_of, caplog):
    caplog.set_level(logging.INFO, logger="pool")
    vendor, (first, _) = pool_of("openai", "sk-sim-ok-lg10", "sk-sim-ok-lg11")
    first.disable()
    send(vendor)
    first.enable()
    ApiKey.objects.filter(pk=first.pk).update(is_invalid=True)

    send(vendor)

    records = skip_records(caplog)
    assert len(records) == 2
    assert records[1].getMessage().endswith(f"{first.name} (invalid)")


def test_skip_log_repeated_when_usable_again_then_skipped(pool_of, caplog):
    caplog.set_level(logging.INFO, logger="pool")
    vendor, (first, _) = pool_of("openai", "sk-sim-ok-lg12", "sk-sim-ok-lg13")
    first.disable()
    send(vendor)
    first.enable()
    send(vendor)
    first.disable()

    send(vendor)

    assert len(skip_records(caplog)) == 2


def test_skip_log_repeated_after_interval(caplog):
    caplog.set_level(logging.INFO, logger="pool")
    now = [1000.0]
    skip_log = SkippedKeyLog(interval=60.0, clock=lambda: now[0])
    skipped = [SkippedKey("trial", ApiKey.Status.EXCEEDED)]

    logged = [skip_log.report("openai", skipped)]
    now[0] += 59.0
    logged.append(skip_log.report("openai", skipped))
    now[0] += 1.0
    logged.append(skip_log.report("openai", skipped))

    assert logged == [True, False, True]
    assert len(skip_records(caplog)) == 2


def test_skip_log_kept_per_vendor(caplog):
    caplog.set_level(logging.INFO, logger="pool")
    skip_log = SkippedKeyLog(clock=lambda: 0.0)
    skipped = [SkippedKey("trial", ApiKey.Status.EXCEEDED)]

    skip_log.report("openai", skipped)
    skip_log.report("anthropic", skipped)

    assert len(skip_records(caplog)) == 2


def test_no_secret_in_any_log_record(pool_of, simulator, caplog):
    caplog.set_level(logging.DEBUG)
    secrets = [
        "sk-sim-ok-lg14",
        "sk-sim-quota0-lg15",
        "sk-sim-invalid-lg16",
        "sk-sim-ok-lg17",
    ]
    vendor, keys = pool_of("openai", *secrets)
    keys[0].disable()
    echo = {"error": {"type": "insufficient_quota", "message": secrets[1]}}
    simulator.script(secrets[1], Reply(429, echo))

    send(vendor)

    texts = [record.getMessage() for record in caplog.records]
    assert len(skip_records(caplog)) == 1
    assert len(service_records(caplog, logging.WARNING)) >= 2
    for secret in secrets:
        assert not [text for text in texts if secret in text]


# Reading the keys ---------------------------------------------------------------


def test_read_keys_splits_like_usable_queryset(vendor, make_key):
    now = timezone.now()
    unusable_fields = [
        {"is_enabled": False},
        {"is_invalid": True},
        {"is_exceeded": True},
        {"expires_at": now - timedelta(minutes=1)},
        {"cooldown_until": now + timedelta(minutes=1)},
    ]
    usable_fields = [
        {"expires_at": now + timedelta(days=1)},
        {"cooldown_until": now - timedelta(minutes=1)},
        {},
    ]
    keys = []
    for fields in unusable_fields + usable_fields:
        key = make_key(vendor)
        ApiKey.objects.filter(pk=key.pk).update(**fields)
        keys.append(key)
    ApiKey.objects.reorder(vendor, [key.pk for key in reversed(keys)])

    usable, skipped = services.read_keys(vendor)

    expected = [key.pk for key in ApiKey.objects.usable(vendor)]
    assert [key.pk for key in usable] == expected
    assert len(usable) == len(usable_fields)
    assert [key.key_name for key in skipped] == [
        key.name for key in reversed(keys[: len(unusable_fields)])
    ]
    assert [key.status for key in skipped] == [
        ApiKey.Status.RATE_LIMITED,
        ApiKey.Status.EXPIRED,
        ApiKey.Status.EXCEEDED,
        ApiKey.Status.INVALID,
        ApiKey.Status.DISABLED,
    ]


def test_read_keys_by_slug_matches_vendor(vendor, other_vendor, make_key):
    mine = make_key(vendor)
    make_key(other_vendor)

    usable, skipped = services.read_keys(vendor.slug)

    assert usable == [mine]
    assert skipped == []


def test_request_with_skipped_keys_runs_one_query(
    pool_of, caplog, django_assert_num_queries
):
    caplog.set_level(logging.INFO, logger="pool")
    vendor, keys = pool_of("openai", "sk-sim-ok-rk1", "sk-sim-ok-rk2", "sk-sim-ok-rk3")
    keys[0].disable()
    ApiKey.objects.filter(pk=keys[1].pk).update(is_exceeded=True)
    services.flush_usage()

    # One read of the vendor's keys, the skipped ones included, and nothing
    # else: logging the skipped keys reads no more rows.
    with django_assert_num_queries(1):
        response = send(vendor)

    assert response.pool_key == keys[2].name
    assert len(skip_records(caplog)) == 1


def test_no_usable_key_names_skipped_keys(pool_of, simulator):
    vendor, (trial, old) = pool_of("openai", "sk-sim-ok-rk4", "sk-sim-ok-rk5")
    ApiKey.objects.filter(pk=trial.pk).update(is_exceeded=True)
    old.disable()

    with pytest.raises(NoUsableKey) as raised:
        send(vendor)

    message = str(raised.value)
    assert raised.value.attempts == []
    assert f"{trial.name} (exceeded), {old.name} (disabled)" in message
    assert "every key was skipped because it is not usable" in message
    assert raised.value.skipped == [
        SkippedKey(trial.name, ApiKey.Status.EXCEEDED),
        SkippedKey(old.name, ApiKey.Status.DISABLED),
    ]
    assert simulator.count(trial.secret) == 0


def test_no_usable_key_after_failover_names_skipped_keys(pool_of):
    vendor, (old, broken) = pool_of("openai", "sk-sim-ok-rk6", "sk-sim-invalid-rk7")
    old.disable()

    with pytest.raises(NoUsableKey) as raised:
        send(vendor)

    message = str(raised.value)
    assert [attempt.key_name for attempt in raised.value.attempts] == [broken.name]
    assert f"not tried because they are not usable: {old.name} (disabled)" in message


# Another process ------------------------------------------------------------------


def database_url() -> str:
    """Return a DATABASE_URL for the test database that this process uses."""
    database = connection.settings_dict
    if database["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{database['NAME']}"
    user = quote(database["USER"] or "", safe="")
    if database["PASSWORD"]:
        user += ":" + quote(database["PASSWORD"], safe="")
    host = database["HOST"] or "127.0.0.1"
    port = f":{database['PORT']}" if database["PORT"] else ""
    return f"postgres://{user}@{host}{port}/{database['NAME']}"


def run_in_other_process(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` with ``manage.py shell`` against the test database."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "SECRET_KEY": settings.SECRET_KEY,
        "KEYPOOL_ENCRYPTION_KEYS": ",".join(settings.KEYPOOL_ENCRYPTION_KEYS),
    }
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.django_db(transaction=True)
def test_key_reenabled_in_other_process_used_next(pool_of, simulator):
    vendor, (first, second) = pool_of("openai", "sk-sim-quota1-op1", "sk-sim-ok-op2")
    send(vendor)
    assert send(vendor).pool_key == second.name
    assert reload(first).status == ApiKey.Status.EXCEEDED
    # The vendor has topped the key up.
    simulator.script(first.secret, Reply(200, {"object": "chat.completion"}))

    result = run_in_other_process(
        f"from pool.models import ApiKey; ApiKey.objects.get(pk={first.pk}).enable()"
    )

    assert result.returncode == 0, result.stderr
    assert send(vendor).pool_key == first.name
