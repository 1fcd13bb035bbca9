"""Failover for internal callers: use the highest-priority usable key and
move to the next one when the vendor's response shows that this key cannot
serve.

``request()`` sends HTTP requests itself. ``call()`` runs a function that
uses a vendor SDK and signals key problems with the exceptions below. Each
call reads the usable keys from the database afresh, so a key re-enabled
on the pool page is used by the very next call in every process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

import requests
from django.utils import timezone

from pool.classify import Outcome, Verdict, cooldown, short
from pool.models import ApiKey, Vendor
from pool.protocols import PROBE_PATHS, build_request, classify_response, join_url
from pool.redaction import redact
from pool.usage import buffer as usage_buffer
from pool.usage import flush_usage

__all__ = [
    "Attempt",
    "KeyInvalid",
    "KeyProblem",
    "NoUsableKey",
    "QuotaExceeded",
    "RateLimited",
    "TransientError",
    "call",
    "flush_usage",
    "probe",
    "request",
]

logger = logging.getLogger(__name__)

# Seconds to connect and to wait for the first byte of the response. A
# caller's own ``timeout`` replaces it.
DEFAULT_TIMEOUT = (5.0, 120.0)

T = TypeVar("T")

MARKS = {
    Outcome.EXCEEDED: ApiKey.Status.EXCEEDED,
    Outcome.INVALID: ApiKey.Status.INVALID,
    Outcome.RATE_LIMITED: ApiKey.Status.RATE_LIMITED,
}


@dataclass(frozen=True)
class Attempt:
    """One key tried for one call, without its secret."""

    key_name: str
    outcome: str
    status_code: int | None
    message: str

    def __str__(self) -> str:
        status = self.status_code if self.status_code is not None else "no response"
        return f"{self.key_name}: {self.outcome} ({status}) {self.message}".rstrip()


class KeyProblem(Exception):
    """A problem with the key in use, so ``call()`` tries the next key."""


class QuotaExceeded(KeyProblem):
    """The key is out of quota, credit or billing. It is marked EXCEEDED."""


class KeyInvalid(KeyProblem):
    """The vendor rejects the key itself. It is marked INVALID."""


class RateLimited(KeyProblem):
    """The key is rate limited. It cools down for ``retry_after`` seconds,
    or for 60 s when that is None or not positive."""

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TransientError(KeyProblem):
    """The vendor failed for a reason unrelated to the key, which keeps its
    status."""


class NoUsableKey(Exception):
    """No key of the vendor was usable, or every key tried failed.

    ``attempts`` lists each key tried, in order.
    """

    def __init__(self, vendor: str, attempts: list[Attempt]) -> None:
        self.vendor = vendor
        self.attempts = attempts
        if attempts:
            tried = "; ".join(str(attempt) for attempt in attempts)
            message = f"No usable key for vendor {vendor!r}; every key failed: {tried}"
        else:
            message = (
                f"No usable key for vendor {vendor!r}: every key is disabled, "
                "expired, exceeded, invalid or cooling down."
            )
        super().__init__(message)


# Public API ------------------------------------------------------------------


def request(
    vendor: Vendor | str, method: str, path: str, **kwargs: Any
) -> requests.Response:
    """Send one request with the highest-priority usable key of ``vendor``,
    failing over to the next key as the outcome of each response requires.

    ``path`` is appended to the key's API URL, and ``kwargs`` are those of
    ``requests.request``. The response carries ``pool_key`` (name of the key
    that served) and ``pool_attempts``. A request error (e.g. 400 for a too
    long context) is returned like a success, without failover. Redirects
    are returned, not followed, unless the caller passes
    ``allow_redirects=True``.

    Raises ``ValueError`` for an absolute URL, ``Vendor.DoesNotExist`` for
    an unknown slug and ``NoUsableKey`` when no key could serve.

    NOTE: a ``data`` iterator or open file is consumed by the first key, so
    pass bytes, a string or ``json`` when a failover must resend the body.
    """
    join_url("http://127.0.0.1", path)
    kwargs.setdefault("timeout", DEFAULT_TIMEOUT)
    # requests drops only Authorization on a redirect to another host, so
    # x-api-key, api-key and x-goog-api-key would follow it.
    kwargs.setdefault("allow_redirects", False)
    headers = kwargs.pop("headers", None)
    params = kwargs.pop("params", None)
    attempts: list[Attempt] = []
    for key in usable_keys(vendor):
        prepared = build_request(key, path, headers=headers, params=params)
        started = timezone.now()
        try:
            response = session().request(
                method,
                prepared.url,
                headers=prepared.headers,
                params=prepared.params,
                **kwargs,
            )
        except requests.RequestException as error:
            response = None
            verdict = Verdict(Outcome.TRANSIENT, describe_exception(error, key))
        else:
            verdict = classify_response(response, now=timezone.now())
        status_code = response.status_code if response is not None else None
        attempts.append(attempt_for(key, verdict, status_code))
        if verdict.outcome in (Outcome.SUCCESS, Outcome.REQUEST_ERROR):
            finish(key, verdict, status_code, started)
            response.pool_key = key.name
            response.pool_attempts = attempts
            return response
        fail_over(key, verdict, status_code, started)
        if response is not None:
            response.close()
    raise_no_usable_key(vendor, attempts)


def call(vendor: Vendor | str, func: Callable[[ApiKey], T]) -> T:
    """Return ``func(key)`` for the highest-priority usable key of
    ``vendor``, failing over while ``func`` raises ``QuotaExceeded``,
    ``KeyInvalid``, ``RateLimited`` or ``TransientError``.

    Any other exception propagates unchanged and marks nothing. Raises
    ``Vendor.DoesNotExist`` for an unknown slug and ``NoUsableKey`` when no
    key could serve.
    """
    attempts: list[Attempt] = []
    for key in usable_keys(vendor):
        started = timezone.now()
        try:
            value = func(key)
        except KeyProblem as problem:
            verdict = verdict_for_problem(problem, key)
            attempts.append(attempt_for(key, verdict, None))
            fail_over(key, verdict, None, started)
            continue
        finish(key, Verdict(Outcome.SUCCESS), None, started)
        return value
    raise_no_usable_key(vendor, attempts)


def probe(key: ApiKey) -> Attempt:
    """Send the protocol's model list request with ``key`` alone, mark the
    key as the outcome requires, and return the result.

    Never raises for a vendor error or a network error, because those are
    reported in the returned ``Attempt``.
    """
    prepared = build_request(key, PROBE_PATHS[key.vendor.protocol])
    started = timezone.now()
    try:
        response = session().get(
            prepared.url,
            headers=prepared.headers,
            params=prepared.params,
            timeout=DEFAULT_TIMEOUT,
            allow_redirects=False,
        )
    except requests.RequestException as error:
        verdict = Verdict(Outcome.TRANSIENT, describe_exception(error, key))
        status_code = None
    else:
        verdict = classify_response(response, now=timezone.now())
        status_code = response.status_code
        response.close()
    attempt = attempt_for(key, verdict, status_code)
    logger.info(
        "Probe of key %s of vendor %s: %s (status %s)",
        key.name,
        key.vendor.slug,
        verdict.outcome,
        status_code,
    )
    success = verdict.outcome == Outcome.SUCCESS
    usage_buffer.add(key.pk, success=success, used_at=started)
    mark(key, verdict, status_code, started)
    return attempt


# Steps -----------------------------------------------------------------------

_local = threading.local()


def session() -> requests.Session:
    """Return this thread's session, which keeps connections alive between
    calls. It stores no key state, because headers are set per request."""
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def usable_keys(vendor: Vendor | str) -> list[ApiKey]:
    keys = list(ApiKey.objects.usable(vendor))
    if (
        not keys
        and isinstance(vendor, str)
        and not Vendor.objects.filter(slug=vendor).exists()
    ):
        raise Vendor.DoesNotExist(f"No vendor has the slug {vendor!r}.")
    return keys


def finish(
    key: ApiKey, verdict: Verdict, status_code: int | None, started: datetime
) -> None:
    success = verdict.outcome == Outcome.SUCCESS
    usage_buffer.add(key.pk, success=success, used_at=started)
    if not success:
        logger.info(
            "Key %s of vendor %s: request error (status %s), returned to the caller "
            "without failover: %s",
            key.name,
            key.vendor.slug,
            status_code,
            verdict.message,
        )


def fail_over(
    key: ApiKey, verdict: Verdict, status_code: int | None, started: datetime
) -> None:
    usage_buffer.add(key.pk, success=False, used_at=started)
    logger.warning(
        "Failover from key %s of vendor %s: %s (status %s): %s",
        key.name,
        key.vendor.slug,
        verdict.outcome,
        status_code,
        verdict.message,
    )
    mark(key, verdict, status_code, started)


def mark(
    key: ApiKey, verdict: Verdict, status_code: int | None, started: datetime
) -> None:
    """Mark the key as ``verdict`` requires, unless its status changed on
    the page (or by another caller) after ``started``."""
    status = MARKS.get(verdict.outcome)
    if status is None:
        return
    marked = key.mark(
        status,
        verdict.message,
        observed_at=started,
        cooldown_until=verdict.cooldown_until,
    )
    if marked:
        logger.warning(
            "Marked key %s of vendor %s %s (status %s)%s",
            key.name,
            key.vendor.slug,
            status.label.lower(),
            status_code,
            f" until {verdict.cooldown_until.isoformat()}"
            if verdict.cooldown_until
            else "",
        )
    else:
        logger.info(
            "Skipped marking key %s of vendor %s %s (status %s): its status "
            "changed while the request was in flight",
            key.name,
            key.vendor.slug,
            status.label.lower(),
            status_code,
        )


def verdict_for_problem(problem: KeyProblem, key: ApiKey) -> Verdict:
    message = short(redact(str(problem), [key.secret])) or type(problem).__name__
    if isinstance(problem, QuotaExceeded):
        return Verdict(Outcome.EXCEEDED, message)
    if isinstance(problem, KeyInvalid):
        return Verdict(Outcome.INVALID, message)
    if isinstance(problem, RateLimited):
        hint = timedelta(seconds=problem.retry_after) if problem.retry_after else None
        return cooldown(message, timezone.now(), hint)
    return Verdict(Outcome.TRANSIENT, message)


def attempt_for(key: ApiKey, verdict: Verdict, status_code: int | None) -> Attempt:
    return Attempt(
        key_name=key.name,
        outcome=str(verdict.outcome),
        status_code=status_code,
        message=redact(verdict.message, [key.secret]),
    )


def describe_exception(error: requests.RequestException, key: ApiKey) -> str:
    """Name the network error without its text, which may repeat the URL."""
    if isinstance(error, requests.Timeout):
        return "Timed out waiting for the vendor."
    if isinstance(error, requests.ConnectionError):
        return "Could not connect to the vendor."
    return short(redact(f"{type(error).__name__}: {error}", [key.secret]))


def raise_no_usable_key(vendor: Vendor | str, attempts: list[Attempt]) -> NoReturn:
    slug = vendor.slug if isinstance(vendor, Vendor) else vendor
    if attempts:
        logger.warning(
            "No usable key left for vendor %s after %d attempts", slug, len(attempts)
        )
    else:
        logger.warning("No usable key for vendor %s", slug)
    raise NoUsableKey(slug, attempts)
