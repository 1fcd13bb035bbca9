"""Request building per protocol, response classification and retry hints."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from pool.classify import DEFAULT_COOLDOWN, MAX_COOLDOWN, Outcome, classify
from pool.hints import (
    MAX_HINT,
    coerce_retry_after,
    find_header_hint,
    find_text_hint,
    parse_duration,
)
from pool.models import ApiKey, Vendor
from pool.protocols import build_request, join_url

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def verdict(status: int, body=None, headers: dict | None = None):
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return classify(
        status_code=status,
        headers=headers or {},
        body=b"" if body is None else raw,
        now=NOW,
    )


def openai_error(
    message: str, code: str | None = None, kind: str | None = None
) -> dict:
    return {"error": {"message": message, "type": kind, "code": code}}


# URLs and headers ---------------------------------------------------------------


class TestJoinUrl:
    @pytest.mark.parametrize(
        ("base", "path"),
        [
            ("http://h/v1", "models"),
            ("http://h/v1/", "models"),
            ("http://h/v1", "/models"),
            ("http://h/v1/", "/models"),
        ],
    )
    def test_one_slash_between(self, base, path):
        assert join_url(base, path) == "http://h/v1/models"

    @pytest.mark.parametrize(
        "path",
        ["http://other/x", "https://other", "//other/x", "ftp://other", "\\\\other"],
    )
    def test_absolute_url_rejected(self, path):
        with pytest.raises(ValueError, match="absolute URL"):
            join_url("http://h/v1", path)

    def test_query_string_kept(self):
        assert join_url("http://h/v1", "models?limit=5") == "http://h/v1/models?limit=5"


def key_of(protocol: str, **fields) -> ApiKey:
    vendor = Vendor(
        slug="v", name="V", protocol=protocol, base_url="http://127.0.0.1:9/v1"
    )
    return ApiKey(vendor=vendor, name="key1", secret="sk-test-fake-proto-1", **fields)


class TestBuildRequest:
    def test_openai_bearer(self):
        call = build_request(key_of("openai"), "models")

        assert call.headers["Authorization"] == "Bearer sk-test-fake-proto-1"
        assert call.url == "http://127.0.0.1:9/v1/models"

    def test_anthropic_key_and_version(self):
        call = build_request(key_of("anthropic"), "messages")

        assert call.headers["x-api-key"] == "sk-test-fake-proto-1"
        assert call.headers["anthropic-version"] == "2023-06-01"
        assert "Authorization" not in call.headers

    def test_anthropic_version_from_caller_kept(self):
        call = build_request(
            key_of("anthropic"), "messages", headers={"ANTHROPIC-VERSION": "2025-01-01"}
        )

        assert call.headers["anthropic-version"] == "2025-01-01"

    def test_azure_key_and_api_version(self):
        key = key_of("azure", config={"api_version": "2024-10-21"})

        call = build_request(key, "deployments/d/chat/completions", params={"x": "1"})

        assert call.headers["api-key"] == "sk-test-fake-proto-1"
        assert call.params == {"x": "1", "api-version": "2024-10-21"}

    def test_azure_api_version_from_caller_kept(self):
        key = key_of("azure", config={"api_version": "2024-10-21"})

        call = build_request(key, "models", params={"api-version": "2025-01-01"})

        assert call.params["api-version"] == "2025-01-01"

    def test_gemini_goog_api_key(self):
        call = build_request(key_of("gemini"), "models")

        assert call.headers["x-goog-api-key"] == "sk-test-fake-proto-1"
        assert call.params == {}

    def test_config_headers_added(self):
        key = key_of("openai", config={"headers": {"OpenAI-Organization": "org-1"}})

        call = build_request(key, "models", headers={"X-Caller": "a"})

        assert call.headers["OpenAI-Organization"] == "org-1"
        assert call.headers["X-Caller"] == "a"

    def test_caller_cannot_replace_key(self):
        call = build_request(
            key_of("openai"), "models", headers={"authorization": "Bearer x"}
        )

        assert call.headers["Authorization"] == "Bearer sk-test-fake-proto-1"

    def test_key_api_url_used(self):
        key = key_of("openai", api_url="http://127.0.0.1:10/custom/")

        assert build_request(key, "models").url == "http://127.0.0.1:10/custom/models"


# Outcomes -----------------------------------------------------------------------


class TestOutcomes:
    @pytest.mark.parametrize("status", [200, 201, 204, 302])
    def test_success(self, status):
        assert verdict(status).outcome == Outcome.SUCCESS

    @pytest.mark.parametrize(
        ("status", "body"),
        [
            (
                429,
                openai_error(
                    "You exceeded your current quota", kind="insufficient_quota"
                ),
            ),
            (
                429,
                openai_error("Your account is not active", code="billing_not_active"),
            ),
            (402, {"message": "Payment required"}),
            (400, {"error": {"message": "Your credit balance is too low"}}),
            (
                403,
                {"error": {"message": "Spend limit reached for this month's budget"}},
            ),
            (
                429,
                {
                    "error": {
                        "code": "1113",
                        "message": "您的账户已欠费，请充值后重试。",
                    }
                },
            ),
        ],
    )
    def test_exceeded(self, status, body):
        assert verdict(status, body).outcome == Outcome.EXCEEDED

    @pytest.mark.parametrize(
        ("status", "body"),
        [
            (401, None),
            (401, openai_error("Incorrect API key provided", code="invalid_api_key")),
            (403, {"error": {"message": "Your API key was reported as leaked."}}),
            (403, {"error": {"message": "This organization has been disabled."}}),
            (
                400,
                {"error": {"message": "x", "details": [{"reason": "API_KEY_INVALID"}]}},
            ),
        ],
    )
    def test_invalid(self, status, body):
        assert verdict(status, body).outcome == Outcome.INVALID

    @pytest.mark.parametrize(
        ("status", "body"),
        [
            (500, None),
            (502, "<!DOCTYPE html><html><title>502 Bad gateway</title></html>"),
            (503, {"error": {"message": "The model is overloaded."}}),
            (504, None),
            (529, {"type": "error", "error": {"type": "overloaded_error"}}),
            (429, {"error": {"message": "The engine is currently overloaded"}}),
            (403, "<html><head><title>Attention Required</title></head></html>"),
        ],
    )
    def test_transient(self, status, body):
        assert verdict(status, body).outcome == Outcome.TRANSIENT

    @pytest.mark.parametrize(
        ("status", "body"),
        [
            (
                400,
                openai_error(
                    "maximum context length is 8192", code="context_length_exceeded"
                ),
            ),
            (404, {"error": {"code": "DeploymentNotFound"}}),
            (413, openai_error("Request too large", code="rate_limit_exceeded")),
            (422, {"detail": "missing field"}),
            (
                400,
                {
                    "error": {
                        "message": "User location is not supported for the API use."
                    }
                },
            ),
            (429, openai_error("Request too large for gpt-4o; must be reduced")),
        ],
    )
    def test_request_error(self, status, body):
        assert verdict(status, body).outcome == Outcome.REQUEST_ERROR

    def test_html_title_becomes_message(self):
        page = "<!DOCTYPE html><html><title>api | 502: Bad gateway</title></html>"

        assert verdict(502, page).message == "HTML error page: api | 502: Bad gateway"

    def test_message_redacts_echoed_key(self):
        body = openai_error("Incorrect API key provided: sk-abcd1234efgh5678.")

        assert "sk-abcd1234" not in verdict(401, body).message

    def test_message_cut_to_one_line(self):
        body = {"error": {"message": "word\n" * 200}}

        message = verdict(400, body).message

        assert "\n" not in message
        assert len(message) <= 300


# Cooldowns ----------------------------------------------------------------------


def cooldown(status: int = 429, body=None, headers: dict | None = None) -> timedelta:
    result = verdict(status, body if body is not None else {"error": {}}, headers)
    assert result.outcome == Outcome.RATE_LIMITED
    return result.cooldown_until - NOW


class TestCooldowns:
    def test_default_without_hint(self):
        assert cooldown() == DEFAULT_COOLDOWN

    def test_coerce_retry_after(self):
        assert cooldown(headers={"retry-after": "17"}) == timedelta(seconds=17)

    def test_retry_after_http_date(self):
        headers = {"retry-after": "Sun, 01 Mar 2026 12:02:00 GMT"}

        assert cooldown(headers=headers) == timedelta(minutes=2)

    def test_retry_after_ms_first(self):
        headers = {"retry-after-ms": "1500", "retry-after": "2"}

        assert cooldown(headers=headers) == timedelta(milliseconds=1500)

    def test_zero_hint_counts_as_none(self):
        assert cooldown(headers={"retry-after": "0"}) == DEFAULT_COOLDOWN

    def test_past_hint_counts_as_none(self):
        headers = {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2024-03-26T20:00:00Z",
        }

        assert cooldown(headers=headers) == DEFAULT_COOLDOWN

    def test_anthropic_reset_of_exhausted_limit(self):
        headers = {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2026-03-01T12:00:30Z",
            "anthropic-ratelimit-tokens-remaining": "500",
            "anthropic-ratelimit-tokens-reset": "2026-03-01T12:05:00Z",
        }

        assert cooldown(headers=headers) == timedelta(seconds=30)

    def test_openai_reset_header_duration(self):
        headers = {
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "6m0s",
        }

        assert cooldown(headers=headers) == timedelta(minutes=6)

    def test_gemini_retry_delay(self):
        body = {
            "error": {
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {
                        "violations": [
                            {"quotaId": "GenerateRequestsPerMinutePerProject"}
                        ]
                    },
                    {"retryDelay": "26s"},
                ],
            }
        }

        assert cooldown(body=body) == timedelta(seconds=26)

    def test_gemini_per_day_quota_exceeded(self):
        body = {
            "error": {
                "details": [
                    {"violations": [{"quotaId": "GenerateRequestsPerDayPerProject"}]},
                    {"retryDelay": "47s"},
                ]
            }
        }

        assert verdict(429, body).outcome == Outcome.EXCEEDED

    @pytest.mark.parametrize(
        ("message", "wait"),
        [
            ("Please try again in 6ms.", timedelta(milliseconds=6)),
            ("Please try again in 1.98s.", timedelta(seconds=1.98)),
            ("Please try again in 9m38s.", timedelta(minutes=9, seconds=38)),
            ("Please retry after 3 seconds.", timedelta(seconds=3)),
            ("Try again in 2 seconds.", timedelta(seconds=2)),
        ],
    )
    def test_hint_in_message(self, message, wait):
        assert cooldown(body={"error": {"message": message}}) == wait

    def test_timespan_reset_followed_as_given(self):
        body = {
            "message": "Out of call volume quota. "
            "Quota will be replenished in 22.14:18:12."
        }

        wait = cooldown(403, body)

        assert wait == timedelta(days=22, hours=14, minutes=18, seconds=12)

    def test_daily_cap_without_reset_exceeded(self):
        body = {"error": {"message": "Rate limit exceeded: free-models-per-day."}}

        assert verdict(429, body).outcome == Outcome.EXCEEDED

    def test_monthly_cap_with_short_hint_exceeded(self):
        body = {"message": "Limited to 1000 API calls / month. Try again in 30s."}

        assert verdict(429, body).outcome == Outcome.EXCEEDED

    def test_regain_access_date_followed(self):
        body = {
            "error": {
                "message": "Monthly limit reached. "
                "You will regain access on 2026-04-01."
            }
        }

        assert cooldown(body=body) == datetime(2026, 4, 1, tzinfo=UTC) - NOW

    def test_hint_beyond_maximum_exceeded(self):
        assert (
            verdict(429, {}, {"retry-after": str(90 * 86400)}).outcome
            == Outcome.EXCEEDED
        )

    def test_plain_rate_limit_not_parked_for_hours(self):
        body = openai_error(
            "Rate limit reached for requests", code="rate_limit_exceeded"
        )

        assert cooldown(body=body) <= timedelta(minutes=1)


class TestParseDuration:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("6ms", 0.006),
            ("26s", 26),
            ("0.5s", 0.5),
            ("1h2m3s", 3723),
            ("3 seconds", 3),
            ("1 minute", 60),
            ("2 hours", 7200),
            ("01:00:00", 3600),
            ("1.00:00:00", 86400),
        ],
    )
    def test_units(self, text, seconds):
        assert parse_duration(text) == timedelta(seconds=seconds)

    @pytest.mark.parametrize("text", ["", "soon", "0s", "0 seconds"])
    def test_no_duration(self, text):
        assert parse_duration(text) is None

    def test_text_without_hint(self):
        assert find_text_hint("rate limit reached", NOW) is None

    def test_header_names_lowercase(self):
        assert find_header_hint({"retry-after": "5"}, NOW) == timedelta(seconds=5)


class TestJoinUrlPaths:
    @pytest.mark.parametrize(
        "path",
        [
            "models/gemini-pro:generateContent",
            "gemini-pro:generateContent",
            "models/gemini-1.5-flash:streamGenerateContent?alt=sse",
            "deployments/d:1/chat",
        ],
    )
    def test_colon_in_relative_path_accepted(self, path):
        assert join_url("http://h/v1beta", path) == f"http://h/v1beta/{path}"

    @pytest.mark.parametrize(
        "path",
        [
            "http:other/x",
            "https:/other/x",
            "HTTPS:\\\\other",
            "git+ssh://other/x",
            "x-custom:\\\\other",
            "/\\other/x",
            "\\/other/x",
            "mailto:a@example.test",
            " http://other/x",
            "\x00//other/x",
        ],
    )
    def test_other_absolute_forms_rejected(self, path):
        with pytest.raises(ValueError, match="absolute URL"):
            join_url("http://h/v1", path)

    @pytest.mark.parametrize(
        "path",
        [
            "../../x",
            "models/../../x",
            "./models",
            "models/..",
            "%2e%2e/x",
            "%2E%2e/x",
            ".%2e/x",
            "models/%2e/x",
            "%252e%252e/x",
            "..\\x",
        ],
    )
    def test_dot_segment_rejected(self, path):
        with pytest.raises(ValueError, match="'.' or '..'"):
            join_url("http://h/v1", path)

    def test_dots_inside_segment_accepted(self):
        path = "models/gemini-1.5..x/...?next=../y"

        assert join_url("http://h/v1", path) == f"http://h/v1/{path}"

    @pytest.mark.parametrize("path", ["models\r\nX-Injected: 1", "mod\tels"])
    def test_control_character_rejected(self, path):
        with pytest.raises(ValueError, match="control character"):
            join_url("http://h/v1", path)


class TestKeyEvidence:
    """Invalid needs evidence about the key, account or organisation."""

    @pytest.mark.parametrize(
        ("status", "body"),
        [
            (400, {"error": {"message": "Image input is disabled for this model."}}),
            (400, {"error": {"message": "Streaming is disabled for this request."}}),
            (400, {"error": {"message": "The tool call was terminated."}}),
            (400, {"error": {"message": "Function calling is suspended for o1."}}),
            (403, {"error": {"message": "Image input is disabled for this model."}}),
        ],
    )
    def test_model_feature_is_request_error(self, status, body):
        assert verdict(status, body).outcome == Outcome.REQUEST_ERROR

    @pytest.mark.parametrize(
        "message",
        [
            "Your request was terminated",
            "Stream revoked by upstream, slow down",
            "Concurrency for this endpoint is disabled while busy",
        ],
    )
    def test_429_without_quota_evidence_rate_limited(self, message):
        assert cooldown(body={"error": {"message": message}}) == DEFAULT_COOLDOWN

    @pytest.mark.parametrize(
        ("status", "body"),
        [
            (400, {"error": {"message": "API key expired. Please renew the API key."}}),
            (400, {"error": {"message": "Your account has been deactivated."}}),
            (400, {"code": "x", "error": "Incorrect API key provided: xx***xx."}),
            (403, {"error": {"message": "This API key has been revoked."}}),
            (403, {"error": {"message": "Your account is suspended."}}),
            (403, {"error": {"message": "Your organization has been restricted."}}),
            (403, {"error": {"message": "Access terminated.", "type": "x"}}),
        ],
    )
    def test_key_evidence_invalid(self, status, body):
        assert verdict(status, body).outcome == Outcome.INVALID

    def test_401_with_context_length_invalid(self):
        body = openai_error("context_length_exceeded", code="context_length_exceeded")

        assert verdict(401, body).outcome == Outcome.INVALID

    def test_401_html_page_invalid(self):
        page = "<html><title>401 Authorization Required</title></html>"

        assert verdict(401, page).outcome == Outcome.INVALID


class TestQuotaEvidence:
    def test_403_quota_exceeded_for_key(self):
        body = {"error": {"message": "Quota exceeded for this API key."}}

        assert verdict(403, body).outcome == Outcome.EXCEEDED

    def test_429_unpaid_invoices_exceeded(self):
        body = {
            "error": {
                "message": "Your account has been deactivated due to unpaid invoices."
            }
        }

        assert verdict(429, body).outcome == Outcome.EXCEEDED

    def test_per_minute_limit_mentioning_monthly_rate_limited(self):
        body = openai_error(
            "Rate limit reached on tokens per min (TPM): Limit 30000. "
            "Please try again in 2s. Upgrade your monthly plan for more.",
            code="rate_limit_exceeded",
        )

        assert cooldown(body=body) == timedelta(seconds=2)

    def test_monthly_limit_hit_with_per_minute_mention_exceeded(self):
        body = {
            "error": {
                "message": "You reached your monthly request limit. "
                "Your per-minute limit is 60."
            }
        }

        assert verdict(429, body).outcome == Outcome.EXCEEDED

    def test_per_minute_quota_exceeded_rate_limited(self):
        body = {
            "error": {
                "message": "Quota exceeded for quota metric 'Requests' and limit "
                "'Requests per minute'."
            }
        }

        assert cooldown(body=body) == DEFAULT_COOLDOWN


class TestTextHints:
    @pytest.mark.parametrize(
        ("message", "wait"),
        [
            ("Please try again in an hour.", timedelta(hours=1)),
            ("Please try again in a minute.", timedelta(minutes=1)),
            ("Try again in 4h 12m.", timedelta(hours=4, minutes=12)),
            ("Try again in 1 hour 30 minutes.", timedelta(hours=1, minutes=30)),
            ("Try again in 2 hours and 5 minutes.", timedelta(hours=2, minutes=5)),
            ("Please wait 30 seconds.", timedelta(seconds=30)),
            ("Please wait for 45 seconds before retrying.", timedelta(seconds=45)),
            ("Try again in 20 s.", timedelta(seconds=20)),
            ("Retry after 90 sec.", timedelta(seconds=90)),
        ],
    )
    def test_hint_followed(self, message, wait):
        assert cooldown(body={"error": {"message": message}}) == wait

    def test_hint_without_duration_ignored(self):
        body = {"error": {"message": "Please wait a few minutes and try again."}}

        assert cooldown(body=body) == DEFAULT_COOLDOWN


class TestHugeHints:
    @pytest.mark.parametrize(
        "headers",
        [
            {"retry-after": "1e20"},
            {"retry-after": "1e400"},
            {"retry-after-ms": "1e20"},
            {"retry-after-ms": "1e400"},
            {"retry-after-ms": "1e999999999999"},
            pytest.param({"retry-after": "9" * 400}, id="400-digits"),
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "99999999999d",
            },
        ],
    )
    def test_finite_hint_beyond_cap_exceeded(self, headers):
        assert verdict(429, {}, headers).outcome == Outcome.EXCEEDED

    @pytest.mark.parametrize(
        "headers",
        [
            {"retry-after": "inf"},
            {"retry-after": "-inf"},
            {"retry-after": "nan"},
            {"retry-after-ms": "Infinity"},
            {"retry-after-ms": "NaN"},
            {"retry-after": "-5"},
        ],
    )
    def test_non_finite_hint_counts_as_none(self, headers):
        assert cooldown(headers=headers) == DEFAULT_COOLDOWN

    @pytest.mark.parametrize(
        "message",
        [
            "Try again in 99999999999d.",
            "Try again in 99999999999 days.",
            "Quota will be replenished in 99999999999.00:00:00.",
            pytest.param(f"Try again in {'9' * 400}s.", id="400-digits"),
        ],
    )
    def test_huge_text_hint_exceeded(self, message):
        assert verdict(429, {"error": {"message": message}}).outcome == (
            Outcome.EXCEEDED
        )

    @pytest.mark.parametrize(
        "text",
        [
            "99999999999d",
            "99999999999 days",
            pytest.param(f"{'9' * 400}h", id="400-digits"),
            pytest.param(f"1{'0' * 1_000_000}s", id="million-digits"),
            "99999999999.00:00:00",
        ],
    )
    def test_parse_duration_capped(self, text):
        assert parse_duration(text) == MAX_HINT


class TestCoerceRetryAfter:
    @pytest.mark.parametrize(
        ("value", "wait"),
        [
            (5, timedelta(seconds=5)),
            (0.25, timedelta(milliseconds=250)),
            ("17", timedelta(seconds=17)),
            (" 2.5 ", timedelta(seconds=2.5)),
            (Decimal("3"), timedelta(seconds=3)),
            (timedelta(minutes=2), timedelta(minutes=2)),
        ],
    )
    def test_valid_value(self, value, wait):
        assert coerce_retry_after(value) == wait

    @pytest.mark.parametrize(
        "value",
        [
            None,
            0,
            -1,
            float("nan"),
            float("inf"),
            float("-inf"),
            "inf",
            "nan",
            "soon",
            "",
            True,
            [5],
            {"seconds": 5},
            object(),
            timedelta(0),
            timedelta(seconds=-5),
        ],
    )
    def test_no_hint(self, value):
        assert coerce_retry_after(value) is None

    @pytest.mark.parametrize(
        "value",
        [
            1e20,
            pytest.param(10**400, id="int-with-401-digits"),
            "1e20",
            timedelta.max,
            Decimal("1e400"),
        ],
    )
    def test_huge_value_capped(self, value):
        assert coerce_retry_after(value) == MAX_HINT

    def test_capped_value_beyond_cooldown_maximum(self):
        assert MAX_HINT > MAX_COOLDOWN
