"""Retry hints in vendor responses: headers, Gemini details and free text.

Every function returns how long to wait from ``now`` as a ``timedelta``, or
None when there is no hint. A hint in the past or of zero counts as none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

# A wait of at least this long is a periodic reset, not a short rate limit.
LONG_COOLDOWN = timedelta(hours=1)

UNIT_SECONDS = {
    "ms": 0.001,
    "millisecond": 0.001,
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
COMPACT_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|h|m|s|d))+")
COMPACT_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s|d)")
SPACED_DURATION = re.compile(
    r"^(\d+(?:\.\d+)?)\s*(milliseconds?|seconds?|secs?|minutes?|mins?|hours?|days?)\b"
)
# .NET TimeSpan, e.g. "22.14:18:12" for 22 days, 14 hours, 18 minutes, 12 s.
TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.\d+)?")
TEXT_HINT = re.compile(
    r"(?:try again|retry|retrying)(?: your request)? (?:in|after) (\S+(?: \w+)?)"
    r"|replenished in (\S+)"
)
TEXT_DATE = re.compile(
    r"(?:regain access on|reset(?:s)? (?:on|at)) (\d{4}-\d{2}-\d{2}(?:[t ][\d:.]+)?z?)"
)
# Reset headers and the "remaining" header of the same limit: Anthropic's
# anthropic-ratelimit-requests-reset (RFC 3339) with ...-requests-remaining,
# OpenAI's x-ratelimit-reset-requests (e.g. "6m0s") with
# x-ratelimit-remaining-requests.
RESET_HEADERS = (
    (
        re.compile(r"^anthropic-ratelimit-(.+)-reset$"),
        "anthropic-ratelimit-{}-remaining",
    ),
    (re.compile(r"^x-ratelimit-reset-(.+)$"), "x-ratelimit-remaining-{}"),
)


def parse_duration(text: str) -> timedelta | None:
    """Parse "6ms", "1.98s", "9m38s", "3 seconds" or "22.14:18:12"."""
    text = text.strip().lower()
    if match := TIMESPAN.match(text):
        days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
        return positive(
            timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        )
    if match := COMPACT_DURATION.match(text):
        seconds = sum(
            float(number) * UNIT_SECONDS[unit]
            for number, unit in COMPACT_PART.findall(match[0])
        )
        return positive(timedelta(seconds=seconds))
    if match := SPACED_DURATION.match(text):
        unit = match[2].rstrip("s") or "s"
        return positive(timedelta(seconds=float(match[1]) * UNIT_SECONDS[unit]))
    return None


def find_text_hint(text: str, now: datetime) -> timedelta | None:
    """Find "try again in 2s", "retry after 3 seconds", "replenished in
    22.14:18:12" or "regain access on 2026-01-01" in a lowercased message."""
    for match in TEXT_HINT.finditer(text):
        hint = parse_duration(match[1] or match[2])
        if hint is not None:
            return hint
    if match := TEXT_DATE.search(text):
        return until(parse_timestamp(match[1]), now)
    return None


def find_header_hint(headers: Mapping[str, str], now: datetime) -> timedelta | None:
    """Find the wait in ``retry-after-ms``, ``retry-after`` or the
    ``*-ratelimit-*-reset`` headers. ``headers`` has lowercase names."""
    if value := headers.get("retry-after-ms"):
        try:
            return positive(timedelta(milliseconds=float(value)))
        except ValueError:
            pass
    if value := headers.get("retry-after"):
        hint = parse_retry_after(value, now)
        if hint is not None:
            return hint
    return find_reset_hint(headers, now)


def parse_retry_after(value: str, now: datetime) -> timedelta | None:
    """Parse ``retry-after`` as seconds or as an HTTP date."""
    try:
        return positive(timedelta(seconds=float(value)))
    except ValueError:
        pass
    try:
        return until(parsedate_to_datetime(value), now)
    except (TypeError, ValueError):
        return None


def find_reset_hint(headers: Mapping[str, str], now: datetime) -> timedelta | None:
    """Return the wait until the latest reset of a limit with 0 remaining,
    because only an exhausted limit explains the 429."""
    waits = []
    for name, value in headers.items():
        for pattern, remaining_name in RESET_HEADERS:
            match = pattern.match(name)
            if not match or headers.get(remaining_name.format(match[1])) != "0":
                continue
            wait = until(parse_timestamp(value), now) or parse_duration(value)
            if wait is not None:
                waits.append(wait)
    return max(waits, default=None)


def parse_timestamp(value: str) -> datetime | None:
    """Parse an RFC 3339 timestamp; a date alone means its midnight UTC."""
    value = value.strip().upper().replace(" ", "T")
    if len(value) == 10:
        value += "T00:00:00Z"
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment


def until(moment: datetime | None, now: datetime) -> timedelta | None:
    if moment is None:
        return None
    return positive(moment - now)


def positive(wait: timedelta) -> timedelta | None:
    return wait if wait > timedelta(0) else None
