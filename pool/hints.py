"""Retry hints in vendor responses: headers, Gemini details and free text.

Every function returns how long to wait from ``now`` as a ``timedelta``, or
None when there is no hint. A hint in the past, of zero, negative or not a
finite number counts as none. A finite hint longer than ``MAX_HINT`` is
returned as ``MAX_HINT``, so arithmetic on it cannot overflow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import (
    MAX_EMAX,
    MIN_EMIN,
    Context,
    Decimal,
    InvalidOperation,
    localcontext,
)
from email.utils import parsedate_to_datetime

# A wait of at least this long is a periodic reset, not a short rate limit.
LONG_COOLDOWN = timedelta(hours=1)
# Longer hints are capped here rather than rejected: the cap is far beyond
# ``pool.classify.MAX_COOLDOWN``, so a capped hint still marks the key
# exceeded instead of parking it, and no caller has to handle OverflowError.
MAX_HINT = timedelta(days=366)
# Decimal arithmetic with the widest exponent range, so that no hint that
# fits in a response body overflows the default context.
WIDE_CONTEXT = Context(Emax=MAX_EMAX, Emin=MIN_EMIN)

UNIT_SECONDS = {
    "ms": Decimal("0.001"),
    "millisecond": Decimal("0.001"),
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
# One part of a duration such as "6ms", "1.98s", "20 s", "an hour" or
# "4 hours". The lookahead keeps "m" from matching the start of "more".
DURATION_PART = re.compile(
    r"(\d+(?:\.\d+)?|an?|one)\s*"
    r"(milliseconds?|ms|seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d)"
    r"(?![a-z])"
)
# Separator between parts, as in "9m38s", "4h 12m", "1 hour, 30 minutes",
# "2 hours and 5 minutes".
PART_SEPARATOR = re.compile(r"\s*,?\s*(?:and\s+)?")
# .NET TimeSpan, e.g. "22.14:18:12" for 22 days, 14 hours, 18 minutes, 12 s.
TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.\d+)?")
# Up to six words after the phrase go to ``parse_duration``, which reads
# the duration at their start and ignores the rest of the sentence.
TEXT_HINT = re.compile(
    r"(?:(?:try again|retry|retrying)(?: your request)? (?:in|after)"
    r"|\bwait(?: for)?|replenished in) (\S+(?:\s+\S+){0,5})"
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


def coerce_retry_after(value: object) -> timedelta | None:
    """Convert a caller-given retry hint in seconds to a wait.

    ``value`` may be a number, a numeric string or a ``timedelta``. Return
    None for anything else, including booleans, NaN, infinities, zero and
    negative values. A wait longer than ``MAX_HINT`` is returned as
    ``MAX_HINT``. Never raises.
    """
    if isinstance(value, timedelta):
        return positive(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        return None
    return seconds_to_wait(value)


def seconds_to_wait(seconds: float | int | Decimal | str) -> timedelta | None:
    """Convert a number of seconds to a wait: None unless it is a finite
    positive number, and at most ``MAX_HINT``."""
    try:
        number = Decimal(seconds.strip() if isinstance(seconds, str) else seconds)
    except (InvalidOperation, ValueError, TypeError):
        return None
    # Decimal compares big integers and "1e400" exactly, where float()
    # would overflow or round.
    if not number.is_finite() or number <= 0:
        return None
    if number >= Decimal(MAX_HINT.total_seconds()):
        return MAX_HINT
    return positive(timedelta(seconds=float(number)))


def parse_duration(text: str) -> timedelta | None:
    """Parse "6ms", "1.98s", "9m38s", "4h 12m", "3 seconds", "an hour" or
    "22.14:18:12" at the start of ``text``."""
    text = text.strip().lower()
    with localcontext(WIDE_CONTEXT):
        return parse_duration_in_context(text)


def parse_duration_in_context(text: str) -> timedelta | None:
    if match := TIMESPAN.match(text):
        days, hours, minutes, seconds = (
            Decimal(group or 0) for group in match.groups()
        )
        return seconds_to_wait(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    # Decimal, because float() turns a number of 309 digits into inf.
    total = Decimal(0)
    position = 0
    while match := DURATION_PART.match(text, position):
        number = Decimal(1) if match[1] in ("a", "an", "one") else Decimal(match[1])
        unit = match[2]
        if unit != "ms":
            unit = unit.rstrip("s") or "s"
        total += number * UNIT_SECONDS[unit]
        position = PART_SEPARATOR.match(text, match.end()).end()
    if position == 0:
        return None
    return seconds_to_wait(total)


def find_text_hint(text: str, now: datetime) -> timedelta | None:
    """Find "try again in 2s", "retry after 3 seconds", "wait 30 seconds",
    "replenished in 22.14:18:12" or "regain access on 2026-01-01" in a
    lowercased message."""
    for match in TEXT_HINT.finditer(text):
        hint = parse_duration(match[1])
        if hint is not None:
            return hint
    if match := TEXT_DATE.search(text):
        return until(parse_timestamp(match[1]), now)
    return None


def find_header_hint(headers: Mapping[str, str], now: datetime) -> timedelta | None:
    """Find the wait in ``retry-after-ms``, ``retry-after`` or the
    ``*-ratelimit-*-reset`` headers. ``headers`` has lowercase names."""
    if value := headers.get("retry-after-ms"):
        hint = milliseconds_to_wait(value)
        if hint is not None:
            return hint
    if value := headers.get("retry-after"):
        hint = parse_retry_after(value, now)
        if hint is not None:
            return hint
    return find_reset_hint(headers, now)


def parse_retry_after(value: str, now: datetime) -> timedelta | None:
    """Parse ``retry-after`` as seconds or as an HTTP date."""
    if (hint := seconds_to_wait(value)) is not None:
        return hint
    try:
        return until(parsedate_to_datetime(value), now)
    except (TypeError, ValueError, OverflowError):
        return None


def milliseconds_to_wait(value: str) -> timedelta | None:
    try:
        milliseconds = Decimal(value.strip())
    except InvalidOperation:
        return None
    with localcontext(WIDE_CONTEXT):
        return seconds_to_wait(milliseconds / 1000)


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
    if wait <= timedelta(0):
        return None
    return min(wait, MAX_HINT)
