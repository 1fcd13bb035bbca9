"""Failover for internal callers: use the highest-priority usable key and
move to the next one when the vendor's response shows that this key cannot
serve.

``request()`` sends HTTP requests itself. ``call()`` runs a function that
uses a vendor SDK and signals key problems with the exceptions below. Each
call reads the vendor's keys from the database afresh, so a key re-enabled
on the pool page is used by the very next call in every process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from http.cookiejar import DefaultCookiePolicy
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import requests
from django.utils import timezone
from requests.exceptions import InvalidHeader
from requests.structures import CaseInsensitiveDict
from requests.utils import check_header_validity

from pool.classify import Outcome, Verdict, cooldown, short
from pool.hints import coerce_retry_after
from pool.models import ApiKey, Vendor
from pool.protocols import PROBE_PATHS, build_request, classify_response, join_url
from pool.redaction import ELLIPSIS, REDACTED, redact
from pool.usage import buffer as usage_buffer
from pool.usage import flush_usage

__all__ = [
    "Attempt",
    "KeyInvalid",
    "KeyProblem",
    "NoUsableKey",
    "QuotaExceeded",
    "RateLimited",
    "SkippedKey",
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

# An error body is read only this far for classification, because the
# vendor's message comes first and a 429 body can be hundreds of megabytes.
ERROR_BODY_MAX_BYTES = 1024 * 1024
BODY_CHUNK_BYTES = 64 * 1024

# The headers that carry a secret in any protocol.
AUTH_HEADERS = ("Authorization", "x-api-key", "api-key", "x-goog-api-key")
DEFAULT_PORTS = {"http": 80, "https": 443}

UNSENDABLE_SECRET_MESSAGE = (
    "The secret contains characters that cannot be sent in an HTTP header."
)

# Seconds between two log lines about the same skipped keys of a vendor in
# one process. A change in which keys are skipped, or why, is logged at once.
SKIP_LOG_INTERVAL = 60.0

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
    or for 60 s when that is not a finite positive number (a number or a
    numeric string). A wait longer than the longest cooldown marks the key
    EXCEEDED instead."""

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TransientError(KeyProblem):
    """The vendor failed for a reason unrelated to the key, which keeps its
    status."""


@dataclass(frozen=True)
class SkippedKey:
    """A key left out of a call because its status is not normal."""

    key_name: str
    status: ApiKey.Status

    def __str__(self) -> str:
        return f"{self.key_name} ({self.status.label.lower()})"


class NoUsableKey(Exception):
    """No key of the vendor was usable, or every key tried failed.

    ``attempts`` lists each key tried, in order, and ``skipped`` each key
    left out because its status was not normal, in priority order.
    """

    def __init__(
        self,
        vendor: str,
        attempts: list[Attempt],
        skipped: Iterable[SkippedKey] = (),
    ) -> None:
        self.vendor = vendor
        self.attempts = attempts
        self.skipped = list(skipped)
        not_usable = ", ".join(str(key) for key in self.skipped)
        if attempts:
            tried = "; ".join(str(attempt) for attempt in attempts)
            message = f"No usable key for vendor {vendor!r}; every key failed: {tried}"
            if not_usable:
                message += f". Keys not tried because they are not usable: {not_usable}"
        elif not_usable:
            message = (
                f"No usable key for vendor {vendor!r}: every key was skipped "
                f"because it is not usable: {not_usable}. Enable a key, extend an "
                "expired one, or wait for a cooldown to end."
            )
        else:
            message = (
                f"No usable key for vendor {vendor!r}: the vendor has no keys. "
                "Add a key to it."
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
    ``allow_redirects=True``. A redirect to another scheme, host or port
    then loses the key's headers. At most 1 MiB of a body that causes a
    failover is read. The body of the response returned is loaded unless
    the caller passes ``stream=True``, and the body of a returned request
    error is always loaded.

    Raises ``ValueError`` for an absolute URL, ``Vendor.DoesNotExist`` for
    an unknown slug and ``NoUsableKey`` when no key could serve.

    NOTE: a ``data`` iterator or open file is consumed by the first key, so
    pass bytes, a string or ``json`` when a failover must resend the body.
    """
    join_url("http://127.0.0.1", path)
    kwargs.setdefault("timeout", DEFAULT_TIMEOUT)
    kwargs.setdefault("allow_redirects", False)
    stream = bool(kwargs.pop("stream", False))
    headers = kwargs.pop("headers", None)
    params = kwargs.pop("params", None)
    attempts: list[Attempt] = []
    keys, skipped = usable_keys(vendor)
    for key in keys:
        started = timezone.now()
        response, verdict = send_with_key(
            key, method, path, headers=headers, params=params, stream=stream, **kwargs
        )
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
    raise_no_usable_key(vendor, attempts, skipped)


def call(vendor: Vendor | str, func: Callable[[ApiKey], T]) -> T:
    """Return ``func(key)`` for the highest-priority usable key of
    ``vendor``, failing over while ``func`` raises ``QuotaExceeded``,
    ``KeyInvalid``, ``RateLimited`` or ``TransientError``.

    Any other exception propagates unchanged and marks nothing. Raises
    ``Vendor.DoesNotExist`` for an unknown slug and ``NoUsableKey`` when no
    key could serve.
    """
    attempts: list[Attempt] = []
    keys, skipped = usable_keys(vendor)
    for key in keys:
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
    raise_no_usable_key(vendor, attempts, skipped)


def probe(key: ApiKey) -> Attempt:
    """Send the protocol's model list request with ``key`` alone, mark the
    key as the outcome requires, and return the result.

    Never raises for a vendor error or a network error, because those are
    reported in the returned ``Attempt``.
    """
    started = timezone.now()
    response, verdict = send_with_key(
        key,
        "GET",
        PROBE_PATHS[key.vendor.protocol],
        timeout=DEFAULT_TIMEOUT,
        allow_redirects=False,
    )
    status_code = response.status_code if response is not None else None
    if response is not None:
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


class PoolSession(requests.Session):
    """A session that keeps connections alive but stores no cookies, and
    drops the key's headers on a redirect to another origin.

    requests itself drops only ``Authorization`` on such a redirect, so
    ``x-api-key``, ``api-key``, ``x-goog-api-key`` and the key's extra
    headers would follow it.
    """

    def __init__(self) -> None:
        super().__init__()
        # A cookie that one key's response sets would otherwise be sent
        # with every later request of this thread, whatever the key.
        self.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self.key_headers: frozenset[str] = frozenset()

    def request(  # type: ignore[override]
        self, method: str, url: str, *, key_headers: Iterable[str] = (), **kwargs: Any
    ) -> requests.Response:
        """Send a request like ``requests.Session.request``. ``key_headers``
        names the headers to drop on a redirect to another origin."""
        self.key_headers = frozenset(key_headers)
        try:
            return super().request(method, url, **kwargs)
        finally:
            self.key_headers = frozenset()

    def rebuild_auth(
        self, prepared_request: requests.PreparedRequest, response: requests.Response
    ) -> None:
        """Let requests rebuild its own authentication, then drop the key's
        headers when the redirect changes the scheme, host or port."""
        super().rebuild_auth(prepared_request, response)
        if origin(response.request.url) != origin(prepared_request.url):
            for name in self.key_headers:
                prepared_request.headers.pop(name, None)


def origin(url: str | None) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url or "")
    scheme = parts.scheme.lower()
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        # An invalid port in a Location header matches no real origin.
        port = -1
    return scheme, parts.hostname, port


def session() -> PoolSession:
    """Return this thread's session, which keeps connections alive between
    calls. It stores no key state, because headers are set per request."""
    if not hasattr(_local, "session"):
        _local.session = PoolSession()
    return _local.session


def send_with_key(
    key: ApiKey,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    stream: bool = False,
    **kwargs: Any,
) -> tuple[requests.Response | None, Verdict]:
    """Send one request with ``key`` and return the response (None when
    none arrived) and its verdict, with the key's secret redacted.

    A network error, or an error while the body is read, is transient. A
    secret that cannot be sent in a header makes the key invalid.
    """
    prepared = build_request(key, path, headers=headers, params=params)
    try:
        response = session().request(
            method,
            prepared.url,
            headers=prepared.headers,
            params=prepared.params,
            stream=True,
            key_headers=added_headers(prepared.headers, headers),
            **kwargs,
        )
    except (UnicodeEncodeError, InvalidHeader) as error:
        if secret_fits_header(key.secret):
            if isinstance(error, UnicodeEncodeError):
                # The caller's own headers or body are not Latin-1.
                raise
            return None, Verdict(Outcome.TRANSIENT, describe_exception(error))
        return None, Verdict(Outcome.INVALID, UNSENDABLE_SECRET_MESSAGE)
    except requests.RequestException as error:
        return None, Verdict(Outcome.TRANSIENT, describe_exception(error))
    try:
        verdict = read_response(response, stream=stream)
    except requests.RequestException as error:
        verdict = Verdict(
            Outcome.TRANSIENT,
            f"Reading the vendor's response failed ({type(error).__name__}).",
        )
    return response, redacted(verdict, key)


def read_response(response: requests.Response, *, stream: bool) -> Verdict:
    """Classify ``response``, reading at most ``ERROR_BODY_MAX_BYTES`` of an
    error body unless the error is returned to the caller.

    A success body is loaded unless the caller streams, as requests does.
    Raises the ``requests`` errors of reading the body.
    """
    now = timezone.now()
    if response.status_code < 400:
        if not stream:
            response.content  # noqa: B018 (loads the body)
        return classify_response(response, now=now)
    chunks = response.iter_content(BODY_CHUNK_BYTES)
    body = read_up_to(chunks, ERROR_BODY_MAX_BYTES)
    # requests keeps a loaded body in ``_content``; setting it lets
    # classify_response() and the caller read the part already consumed.
    # ``_content_consumed`` stays as the stream left it, so that close()
    # drops a connection whose body was not read to the end.
    response._content = body
    verdict = classify_response(response, now=now)
    if verdict.outcome == Outcome.REQUEST_ERROR:
        response._content = body + b"".join(chunks)
    return verdict


def read_up_to(chunks: Iterator[bytes], limit: int) -> bytes:
    """Read chunks until at least ``limit`` bytes or the end of the body."""
    parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)


def added_headers(
    sent: CaseInsensitiveDict, caller_headers: Mapping[str, str] | None
) -> list[str]:
    """Return the names of the headers that the pool added or replaced:
    the protocol's authentication and the key's extra headers."""
    caller = CaseInsensitiveDict(caller_headers or {})
    added = [name for name, value in sent.items() if caller.get(name) != value]
    return added + [name for name in AUTH_HEADERS if name in sent]


def secret_fits_header(secret: str) -> bool:
    """Return whether requests and ``http.client`` accept ``secret`` as a
    header value: Latin-1, no line break, no leading whitespace."""
    try:
        secret.encode("latin-1")
        check_header_validity(("x-api-key", secret))
    except (UnicodeEncodeError, InvalidHeader):
        return False
    return True


def redacted(verdict: Verdict, key: ApiKey) -> Verdict:
    """Return ``verdict`` with the key's secret redacted from its message,
    once, so that logs, attempts and the stored reason all get that text."""
    message = redact(verdict.message, [key.secret])
    # The message was cut to length before this, so it may end in the first
    # characters of the secret.
    if message.endswith(ELLIPSIS):
        text = message.removesuffix(ELLIPSIS)
        for length in range(min(len(key.secret), len(text)), 3, -1):
            if text.endswith(key.secret[:length]):
                message = text[:-length] + REDACTED + ELLIPSIS
                break
    return replace(verdict, message=message)


def usable_keys(vendor: Vendor | str) -> tuple[list[ApiKey], list[SkippedKey]]:
    """Read the keys of ``vendor`` with one query, split them into usable
    and skipped keys, and log the skipped ones through ``skipped_key_log``.

    Raises ``Vendor.DoesNotExist`` for an unknown slug.
    """
    keys, skipped = read_keys(vendor)
    slug = vendor.slug if isinstance(vendor, Vendor) else vendor
    skipped_key_log.report(slug, skipped)
    return keys, skipped


def read_keys(vendor: Vendor | str) -> tuple[list[ApiKey], list[SkippedKey]]:
    """Return the usable keys of ``vendor`` and the skipped ones, each
    highest priority first, with their vendor loaded: one query.

    A key is usable when ``status_at()`` is normal, which is the rule of
    ``ApiKey.objects.usable()`` evaluated in Python, so the skipped keys
    can be named without a second query. Raises ``Vendor.DoesNotExist``
    for an unknown slug, which costs a second query only when no key
    matched.
    """
    now = timezone.now()
    keys = ApiKey.objects.select_related("vendor").order_by("order", "pk")
    if isinstance(vendor, Vendor):
        keys = keys.filter(vendor=vendor)
    else:
        keys = keys.filter(vendor__slug=vendor)
    usable: list[ApiKey] = []
    skipped: list[SkippedKey] = []
    for key in keys:
        status = key.status_at(now)
        if status == ApiKey.Status.NORMAL:
            usable.append(key)
        else:
            skipped.append(SkippedKey(key.name, status))
    if (
        not usable
        and not skipped
        and isinstance(vendor, str)
        and not Vendor.objects.filter(slug=vendor).exists()
    ):
        raise Vendor.DoesNotExist(f"No vendor has the slug {vendor!r}.")
    return usable, skipped


class SkippedKeyLog:
    """Log the skipped keys of each call at INFO, one line per call, unless
    the same keys of that vendor were logged with the same statuses less
    than ``interval`` seconds ago in this process."""

    def __init__(
        self,
        interval: float = SKIP_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        # Vendor slug -> (skipped keys last logged, clock time of that line).
        self._logged: dict[str, tuple[frozenset[SkippedKey], float]] = {}

    def report(self, vendor_slug: str, skipped: list[SkippedKey]) -> bool:
        """Log ``skipped`` unless it repeats the last line of the vendor
        within ``interval`` seconds, and return whether it was logged."""
        current = frozenset(skipped)
        now = self.clock()
        with self._lock:
            if not current:
                # A call that skips no key ends the repeat, so the next skip
                # is logged at once.
                self._logged.pop(vendor_slug, None)
                return False
            last = self._logged.get(vendor_slug)
            if last and last[0] == current and now - last[1] < self.interval:
                return False
            self._logged[vendor_slug] = (current, now)
        logger.info(
            "Skipped keys of vendor %s that are not usable: %s",
            vendor_slug,
            ", ".join(str(key) for key in skipped),
        )
        return True

    def clear(self) -> None:
        """Forget what was logged, so the next skip of every vendor is
        logged."""
        with self._lock:
            self._logged.clear()


skipped_key_log = SkippedKeyLog()


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
        hint = coerce_retry_after(problem.retry_after)
        return cooldown(message, timezone.now(), hint)
    return Verdict(Outcome.TRANSIENT, message)


def attempt_for(key: ApiKey, verdict: Verdict, status_code: int | None) -> Attempt:
    return Attempt(
        key_name=key.name,
        outcome=str(verdict.outcome),
        status_code=status_code,
        message=verdict.message,
    )


def describe_exception(error: requests.RequestException) -> str:
    """Name the network error with a fixed explanation. Its own text is
    never used, because it may repeat the URL or a header value, and a
    header value may be the secret."""
    if isinstance(error, requests.Timeout):
        return "Timed out waiting for the vendor."
    if isinstance(error, requests.ConnectionError):
        return "Could not connect to the vendor."
    if isinstance(error, InvalidHeader):
        return "InvalidHeader: a header of the request cannot be sent in HTTP."
    return f"{type(error).__name__}: the request to the vendor failed."


def raise_no_usable_key(
    vendor: Vendor | str, attempts: list[Attempt], skipped: list[SkippedKey]
) -> NoReturn:
    slug = vendor.slug if isinstance(vendor, Vendor) else vendor
    if attempts:
        logger.warning(
            "No usable key left for vendor %s after %d attempts", slug, len(attempts)
        )
    else:
        logger.warning(
            "No usable key for vendor %s: %d keys skipped", slug, len(skipped)
        )
    raise NoUsableKey(slug, attempts, skipped)
