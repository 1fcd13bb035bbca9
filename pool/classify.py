"""Classification of vendor responses into failover outcomes.

The status code alone does not decide, because vendors send quota errors as
400, 402, 403 and 429, invalid keys as 400, 401 and 403, and overload as
429, 500, 503 and 529. So ``classify_error`` reads the body too, with the
more specific checks first (see its body for the order).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pool.hints import (
    LONG_COOLDOWN,
    find_header_hint,
    find_text_hint,
    parse_duration,
)
from pool.redaction import redact

DEFAULT_COOLDOWN = timedelta(seconds=60)
# A hint longer than this is not a cooldown any more: the key is marked
# exceeded and waits for someone to re-enable it.
MAX_COOLDOWN = timedelta(days=35)
MESSAGE_MAX_LENGTH = 300


class Outcome(StrEnum):
    SUCCESS = "success"
    EXCEEDED = "exceeded"
    INVALID = "invalid"
    RATE_LIMITED = "rate_limited"
    TRANSIENT = "transient"
    REQUEST_ERROR = "request_error"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one response for the key that sent it."""

    outcome: Outcome
    message: str = ""
    cooldown_until: datetime | None = None


@dataclass(frozen=True)
class ErrorBody:
    """The parts of an error body that the checks read."""

    message: str
    text: str
    is_html: bool
    gemini_reasons: frozenset[str]
    gemini_quota_ids: tuple[str, ...]
    gemini_retry_delay: str | None


# Each pattern runs on the lowercased message, type and code together.
REQUEST_ERROR_PATTERNS = re.compile(
    r"request too large|must be reduced|reduce your message size"
    r"|context[_ ]length|maximum context|too many tokens in the request"
    r"|unsupported_country_region_territory|country, region, or territory"
    r"|location is not supported|region is not supported|deploymentnotfound"
    r"|model_not_found"
    # A feature of the model, such as image input, that the request used.
    r"|(?:is|are) (?:not supported|disabled|not enabled|not available)"
    r" (?:for|by|with|on|in) (?:this|the) model"
)
EXCEEDED_PATTERNS = re.compile(
    r"insufficient_quota|billing_not_active|billing_error|exceeded_current_quota"
    r"|arrearage|allocationquota|credit balance|more credits|insufficient balance"
    r"|insufficient (?:credit|funds)|balance is (?:too )?low|billing details"
    r"|account is not active|spend(?:ing)? limit|arrear|good standing"
    r"|free tier of the model has been exhausted|free quota has been exhausted"
    r"|out of (?:call volume )?quota|payment required|unpaid|欠费|余额不足"
)
# Quota words without billing words: a quota of any window, so they count
# only when no per-minute or per-second limit is named first.
QUOTA_PATTERNS = re.compile(
    r"quota (?:has been |was )?(?:exceeded|exhausted|used up)"
    r"|exceeded (?:your |the )?(?:current )?quota"
)
PERIODIC_CAP_PATTERNS = re.compile(
    r"per[- ]day|/\s*day\b|\bdaily\b|per[- ]month|/\s*month\b|\bmonthly\b"
    r"|replenished in|regain access on|perday|permonth"
)
SHORT_WINDOW_PATTERNS = re.compile(
    r"per[- ]min(?:ute)?\b|/\s*min(?:ute)?\b|\b[rt]pm\b|per[- ]second|\b[rt]ps\b"
    r"|perminute|persecond"
)
# Evidence about the key itself, trusted on any status but 429, because a
# 429 is about the rate of requests.
KEY_INVALID_PATTERNS = re.compile(
    r"invalid_api_key|authentication_error|incorrect api key|invalid api key"
    r"|api key not valid|api key not found|invalid x-api-key|invalid api token"
    r"|reported as leaked|api[_ ]key[_ ]invalid|api[_ ]key[_ ](?:has )?expired"
    r"|expired api key"
)
# A key, account, organisation or project that is blocked, trusted on 400
# and 403. A bare "is disabled" or "terminated" may be about a model
# feature or one request, so the subject must come first in the sentence.
ACCOUNT_BLOCKED_PATTERNS = re.compile(
    r"\b(?:api key|key|account|organi[sz]ation|org|project|subscription)\b"
    r"[^.]{0,80}?\b(?:suspended|terminated|revoked|disabled|deactivated"
    r"|restricted|banned|blocked)\b"
)
# A 403 is an authorisation failure, so these words are about the caller's
# access and not about the request.
FORBIDDEN_PATTERNS = re.compile(
    r"permission_error|permission[_ ]denied|access[_ ]terminated|service_disabled"
    r"|access (?:has been )?(?:revoked|suspended)"
)
OVERLOAD_PATTERNS = re.compile(r"overloaded|capacity exceeded|server_error")


def classify(
    *, status_code: int, headers: dict[str, str], body: bytes, now: datetime
) -> Verdict:
    """Return the outcome of a response with this status, headers and body.

    ``now`` is when the response arrived: relative retry hints count from it.
    """
    if status_code < 400:
        return Verdict(Outcome.SUCCESS)
    error = parse_error_body(body)
    return classify_error(status_code, headers, error, now)


def classify_error(
    status_code: int, headers: dict[str, str], error: ErrorBody, now: datetime
) -> Verdict:
    """Return the outcome of an error response (status 400 and above)."""
    message = error.message or f"HTTP {status_code}"
    text = error.text
    if status_code >= 500:
        return Verdict(Outcome.TRANSIENT, message)
    # A 401 is about the key whatever the body contains, even an HTML page.
    if status_code == 401:
        return Verdict(Outcome.INVALID, message)
    if error.is_html:
        return Verdict(Outcome.TRANSIENT, message)
    if status_code in (404, 405, 413, 415, 422) or REQUEST_ERROR_PATTERNS.search(text):
        return Verdict(Outcome.REQUEST_ERROR, message)
    if "API_KEY_INVALID" in error.gemini_reasons:
        return Verdict(Outcome.INVALID, message)
    if error.gemini_quota_ids:
        return classify_gemini_quota(headers, error, message, now)
    window = limit_window(text)
    if window == "periodic":
        return periodic_cap(headers, text, message, now)
    if EXCEEDED_PATTERNS.search(text) or status_code == 402:
        return Verdict(Outcome.EXCEEDED, message)
    if window is None and QUOTA_PATTERNS.search(text):
        return Verdict(Outcome.EXCEEDED, message)
    if is_key_invalid(status_code, text):
        return Verdict(Outcome.INVALID, message)
    if OVERLOAD_PATTERNS.search(text) or status_code == 408:
        return Verdict(Outcome.TRANSIENT, message)
    if status_code == 429:
        return rate_limited(headers, text, message, now)
    if status_code == 403:
        # A 403 that names neither the key nor its quota (an edge or
        # firewall block) may clear by itself, so the key is left alone.
        return Verdict(Outcome.TRANSIENT, message)
    return Verdict(Outcome.REQUEST_ERROR, message)


def limit_window(text: str) -> str | None:
    """Return "periodic" or "short" for the window of the limit that the
    text names first, or None when it names none.

    Vendors name the limit that was hit before any other they mention, as
    in "tokens per min (TPM) ... upgrade your monthly plan", so the first
    one decides.
    """
    periodic = PERIODIC_CAP_PATTERNS.search(text)
    short_window = SHORT_WINDOW_PATTERNS.search(text)
    if periodic and (short_window is None or periodic.start() < short_window.start()):
        return "periodic"
    if short_window:
        return "short"
    return None


def is_key_invalid(status_code: int, text: str) -> bool:
    """Tell whether the body is evidence that the key, its account or its
    organisation cannot be used. A 429 never is."""
    if status_code == 429:
        return False
    if KEY_INVALID_PATTERNS.search(text):
        return True
    if status_code in (400, 403) and ACCOUNT_BLOCKED_PATTERNS.search(text):
        return True
    return status_code == 403 and FORBIDDEN_PATTERNS.search(text) is not None


def classify_gemini_quota(
    headers: dict[str, str], error: ErrorBody, message: str, now: datetime
) -> Verdict:
    """Classify a Gemini 429 by its QuotaFailure ids rather than its text,
    which reads "check your plan and billing details" even for per-minute
    limits."""
    quota_ids = " ".join(error.gemini_quota_ids).lower()
    if "perday" in quota_ids or "permonth" in quota_ids:
        # The RetryInfo sent next to a per-day violation is the per-minute
        # delay, so it is no sign of when the daily quota resets.
        return Verdict(Outcome.EXCEEDED, message)
    return rate_limited(headers, error.text, message, now, error.gemini_retry_delay)


def periodic_cap(
    headers: dict[str, str], text: str, message: str, now: datetime
) -> Verdict:
    """Follow a stated reset of an hour or more, else mark the key exceeded.

    A shorter hint next to a per-day or per-month cap is a per-request
    delay, not the reset, so it is not trusted.
    """
    hint = find_header_hint(headers, now) or find_text_hint(text, now)
    if hint is not None and LONG_COOLDOWN <= hint <= MAX_COOLDOWN:
        return Verdict(Outcome.RATE_LIMITED, message, now + hint)
    return Verdict(Outcome.EXCEEDED, message)


def rate_limited(
    headers: dict[str, str],
    text: str,
    message: str,
    now: datetime,
    retry_delay: str | None = None,
) -> Verdict:
    """Cool the key down until the first retry hint found in the headers,
    the Gemini ``retryDelay`` or the message."""
    hint = find_header_hint(headers, now)
    if hint is None and retry_delay:
        hint = parse_duration(retry_delay)
    if hint is None:
        hint = find_text_hint(text, now)
    return cooldown(message, now, hint)


def cooldown(message: str, now: datetime, hint: timedelta | None) -> Verdict:
    """Return a cooldown until ``now + hint``, or for ``DEFAULT_COOLDOWN``
    when the hint is missing, zero or negative.

    A hint longer than ``MAX_COOLDOWN`` gives EXCEEDED instead.
    """
    if hint is None or hint <= timedelta(0):
        hint = DEFAULT_COOLDOWN
    if hint > MAX_COOLDOWN:
        return Verdict(Outcome.EXCEEDED, message)
    return Verdict(Outcome.RATE_LIMITED, message, now + hint)


# Body parsing ----------------------------------------------------------------


def parse_error_body(body: bytes) -> ErrorBody:
    """Extract message, type, code and Gemini details from an error body."""
    raw = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return parse_text_body(raw)
    error = data.get("error")
    fields = error if isinstance(error, dict) else data
    message = first_text(fields.get("message"), error, data.get("message"))
    metadata = fields.get("metadata")
    upstream = metadata.get("raw") if isinstance(metadata, dict) else None
    parts = [
        message,
        as_text(fields.get("type")),
        as_text(fields.get("code")),
        as_text(fields.get("status")),
        as_text(data.get("code")),
        as_text(upstream),
    ]
    details = fields.get("details")
    details = details if isinstance(details, list) else []
    reasons = gemini_detail_values(details, "reason")
    parts.extend(reasons)
    return ErrorBody(
        message=short(message),
        text=" ".join(part for part in parts if part).lower(),
        is_html=False,
        gemini_reasons=frozenset(reasons),
        gemini_quota_ids=tuple(gemini_quota_ids(details)),
        gemini_retry_delay=next(
            iter(gemini_detail_values(details, "retryDelay")), None
        ),
    )


def parse_text_body(raw: str) -> ErrorBody:
    """Read a body that is not a JSON object: plain text or an HTML page."""
    is_html = raw[:200].lower().lstrip().startswith(("<!doctype", "<html"))
    message = html_title(raw) if is_html else raw
    return ErrorBody(
        message=short(message),
        text=raw[:2000].lower(),
        is_html=is_html,
        gemini_reasons=frozenset(),
        gemini_quota_ids=(),
        gemini_retry_delay=None,
    )


def gemini_detail_values(details: list[Any], field: str) -> list[str]:
    return [
        detail[field]
        for detail in details
        if isinstance(detail, dict) and isinstance(detail.get(field), str)
    ]


def gemini_quota_ids(details: list[Any]) -> list[str]:
    ids = []
    for detail in details:
        if not isinstance(detail, dict):
            continue
        for violation in detail.get("violations") or []:
            if isinstance(violation, dict) and isinstance(
                violation.get("quotaId"), str
            ):
                ids.append(violation["quotaId"])
    return ids


def first_text(*values: Any) -> str:
    for value in values:
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def html_title(page: str) -> str:
    match = re.search(r"<title>(.*?)</title>", page, re.IGNORECASE | re.DOTALL)
    title = match[1].strip() if match else "no title"
    return f"HTML error page: {title}"


def short(message: str) -> str:
    """Return the message with credentials redacted, cut to a log line."""
    message = redact(" ".join(message.split()))
    if len(message) > MESSAGE_MAX_LENGTH:
        return message[: MESSAGE_MAX_LENGTH - 1] + "…"
    return message
