"""Usage counters of keys, buffered in memory and written in batches.

A write per call would make every request wait for the database, and on
SQLite every writer waits for the one write lock, so concurrent callers
would run one at a time. Instead each process adds up its counts, and a
timer thread writes them with one ``F()`` increment per key
``KEYPOOL_USAGE_FLUSH_SECONDS`` (default 1) after the first count that is
not yet written, or at once when ``KEYPOOL_USAGE_FLUSH_CALLS`` (default
100) calls are waiting. The rest is written once more at normal exit.

NOTE: a process ended by a signal that Python does not handle (SIGTERM by
default, SIGKILL always) skips the exit handler and loses the counts not
yet written: at most one interval or one batch of calls.
"""

from __future__ import annotations

import atexit
import logging
import threading
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.models import Case, F, Q, Value, When

from pool.models import ApiKey

logger = logging.getLogger(__name__)

DEFAULT_FLUSH_SECONDS = 1.0
DEFAULT_FLUSH_CALLS = 100


@dataclass
class PendingUsage:
    successes: int = 0
    failures: int = 0
    last_used_at: datetime | None = None


class UsageBuffer:
    """Usage counts of this process that are not yet in the database."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, PendingUsage] = {}
        self._calls = 0
        self._timer: threading.Timer | None = None
        self._timer_delay = 0.0

    def add(self, key_id: int, *, success: bool, used_at: datetime) -> None:
        """Count one call of the key, and schedule a write: after the flush
        interval, or at once when ``KEYPOOL_USAGE_FLUSH_CALLS`` calls are
        waiting. Never touches the database itself."""
        with self._lock:
            pending = self._pending.setdefault(key_id, PendingUsage())
            if success:
                pending.successes += 1
            else:
                pending.failures += 1
            if pending.last_used_at is None or used_at > pending.last_used_at:
                pending.last_used_at = used_at
            self._calls += 1
            # Only reaching the limit writes at once. Counts kept after a
            # failed write are above it and wait for the interval, so a
            # database outage gives no write attempt per call.
            delay = 0.0 if self._calls == flush_calls() else flush_interval()
            self._schedule(delay)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            if self._timer_delay <= delay:
                return
            self._timer.cancel()
        self._timer = threading.Timer(delay, self._flush_later)
        self._timer.daemon = True
        self._timer_delay = delay
        self._timer.start()

    def _flush_later(self) -> None:
        with self._lock:
            # A sooner write may have replaced this timer in the meantime.
            if self._timer is threading.current_thread():
                self._timer = None
        try:
            self.flush()
        finally:
            # The timer thread ends here, so its connections would leak.
            connections.close_all()

    def flush(self) -> int:
        """Write the buffered counts with one UPDATE per key, and return the
        number of keys written. Counts that fail to write are kept for the
        next flush."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._calls = 0
        for key_id, usage in pending.items():
            try:
                write_usage(key_id, usage)
            except DatabaseError:
                logger.exception("Writing the usage counts of key id %s failed", key_id)
                self._restore(key_id, usage)
        return len(pending)

    def discard(self) -> None:
        """Drop the buffered counts and any scheduled write."""
        with self._lock:
            self._pending = {}
            self._calls = 0
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _restore(self, key_id: int, usage: PendingUsage) -> None:
        with self._lock:
            pending = self._pending.setdefault(key_id, PendingUsage())
            pending.successes += usage.successes
            pending.failures += usage.failures
            self._calls += usage.successes + usage.failures
            pending.last_used_at = max(
                filter(None, [pending.last_used_at, usage.last_used_at]), default=None
            )


def write_usage(key_id: int, usage: PendingUsage) -> None:
    """Add the counts with one UPDATE. ``last_used_at`` never moves back,
    because another process may have written a later time already."""
    used_at = usage.last_used_at
    ApiKey.objects.filter(pk=key_id).update(
        success_count=F("success_count") + usage.successes,
        failure_count=F("failure_count") + usage.failures,
        last_used_at=Case(
            When(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=used_at),
                then=Value(used_at),
            ),
            default=F("last_used_at"),
        ),
    )


def flush_interval() -> float:
    return float(
        getattr(settings, "KEYPOOL_USAGE_FLUSH_SECONDS", DEFAULT_FLUSH_SECONDS)
    )


def flush_calls() -> int:
    return int(getattr(settings, "KEYPOOL_USAGE_FLUSH_CALLS", DEFAULT_FLUSH_CALLS))


buffer = UsageBuffer()


def flush_usage() -> int:
    """Write this process's buffered usage counts now, and return the
    number of keys written."""
    return buffer.flush()


def flush_at_exit() -> None:
    try:
        buffer.flush()
    except Exception:
        # At interpreter exit the database may already be unreachable, and
        # an exception here would hide the program's own exit status.
        logger.exception("Writing usage counts at exit failed")


atexit.register(flush_at_exit)
