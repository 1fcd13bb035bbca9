"""The values that one row of the pool page shows about a key, computed
once per row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone
from django.utils.formats import date_format

from pool.models import ApiKey

EXPIRY_WARNING = timedelta(days=7)

BADGE_STYLES = {
    ApiKey.Status.NORMAL: "ok",
    ApiKey.Status.EXCEEDED: "error",
    ApiKey.Status.EXPIRED: "muted",
    ApiKey.Status.DISABLED: "muted",
    ApiKey.Status.INVALID: "error",
    ApiKey.Status.RATE_LIMITED: "warning",
}


def relative_days(moment: datetime, now: datetime) -> str:
    """Return "in 3 days", "2 days ago" and so on, in whole days rounded
    down, or "in less than a day" / "less than a day ago"."""
    days = (moment - now) / timedelta(days=1)
    whole = int(abs(days))
    if whole == 0:
        return "in less than a day" if days >= 0 else "less than a day ago"
    unit = "day" if whole == 1 else "days"
    return f"in {whole} {unit}" if days >= 0 else f"{whole} {unit} ago"


def local_time(moment: datetime) -> str:
    return date_format(timezone.localtime(moment), "H:i")


def local_datetime(moment: datetime) -> str:
    return date_format(timezone.localtime(moment), "Y-m-d H:i")


@dataclass(frozen=True)
class KeyRow:
    key: ApiKey
    priority: int
    status: ApiKey.Status
    badge_style: str
    status_detail: str
    status_since: str
    expiry: str
    expiry_relative: str
    expires_soon: bool
    is_first: bool
    is_last: bool


def status_detail(key: ApiKey, status: ApiKey.Status) -> str:
    """Return the line under the badge: the cooldown end, or the reason."""
    if status == ApiKey.Status.RATE_LIMITED:
        until = f"until {local_time(key.cooldown_until)}"
        return f"{until}: {key.status_reason}" if key.status_reason else until
    if status in (ApiKey.Status.NORMAL, ApiKey.Status.EXPIRED):
        return ""
    return key.status_reason


def build_row(key: ApiKey, index: int, count: int, now: datetime) -> KeyRow:
    """Build the row of ``key``, the ``index``-th of ``count`` keys."""
    status = key.status_at(now)
    expires_at = key.expires_at
    since = ""
    if key.status_changed_at and status != ApiKey.Status.NORMAL:
        since = f"since {local_datetime(key.status_changed_at)}"
    if status == ApiKey.Status.EXPIRED:
        since = f"since {local_datetime(expires_at)}"
    return KeyRow(
        key=key,
        priority=index + 1,
        status=status,
        badge_style=BADGE_STYLES[status],
        status_detail=status_detail(key, status),
        status_since=since,
        expiry=local_datetime(expires_at) if expires_at else "Never",
        expiry_relative=relative_days(expires_at, now) if expires_at else "",
        expires_soon=expires_at is not None and expires_at - now <= EXPIRY_WARNING,
        is_first=index == 0,
        is_last=index == count - 1,
    )


def build_rows(keys: list[ApiKey], now: datetime | None = None) -> list[KeyRow]:
    """Build the rows of ``keys``, given in priority order."""
    now = now or timezone.now()
    return [build_row(key, index, len(keys), now) for index, key in enumerate(keys)]
