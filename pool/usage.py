"""Usage counters of keys, buffered in memory and written in batches.

A write per call would make every request wait for the database, and on
SQLite every writer waits for the one write lock, so concurrent callers
would run one at a time. Instead each process adds up its counts, and a
timer thread writes them with one ``F()`` increment per key
``KEYPOOL_USAGE_FLUSH_SECONDS`` (default 5) after the first count that is
not yet written. The rest is written once more at exit.
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

DEFAULT_FLUSH_SECONDS = 5.0


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
        self._timer: threading.Timer | None = None

    def add(self, key_id: int, *, success: bool, used_at: datetime) -> None:
        """Count one call of the key, and schedule a write unless one is
        already scheduled. Never touches the database itself."""
        with self._lock:
            pending = self._pending.setdefault(key_id, PendingUsage())
            if success:
                pending.successes += 1
            else:
                pending.failures += 1
            if pending.last_used_at is None or used_at > pending.last_used_at:
                pending.last_used_at = used_at
            if self._timer is None:
                self._timer = threading.Timer(flush_interval(), self._flush_later)
                self._timer.daemon = True
                self._timer.start()

    def _flush_later(self) -> None:
        with self._lock:
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
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _restore(self, key_id: int, usage: PendingUsage) -> None:
        with self._lock:
            pending = self._pending.setdefault(key_id, PendingUsage())
            pending.successes += usage.successes
            pending.failures += usage.failures
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
