"""The change history of the pool page, kept in the admin's ``LogEntry``.

Entries record who changed what and when. They name fields, never values of
secrets.
"""

from __future__ import annotations

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db.models import Model, Q, QuerySet

from pool.models import ApiKey, Vendor

FIELD_LABELS = {
    "name": "name",
    "secret": "API key",
    "api_url": "API URL",
    "expires_at": "expiry",
    "config": "settings",
    "base_url": "base URL",
    "protocol": "protocol",
}


def describe_fields(fields: list[str]) -> str:
    """Return e.g. ``"Changed name, API URL."`` for changed field names."""
    labels = ", ".join(FIELD_LABELS.get(field, field) for field in fields)
    return f"Changed {labels}."


def _log(user, obj: Model, flag: int, message: str) -> None:
    # log_actions() only iterates its argument, so a list of the instance
    # saves a query and works after a deletion too.
    LogEntry.objects.log_actions(user.pk, [obj], flag, message, single_object=True)


def log_addition(user, obj: Model, message: str = "Added.") -> None:
    _log(user, obj, ADDITION, message)


def log_change(user, obj: Model, message: str) -> None:
    _log(user, obj, CHANGE, message)


def log_deletion(user, obj: Model, message: str = "Deleted.") -> None:
    _log(user, obj, DELETION, message)


def key_history(key: ApiKey) -> QuerySet[LogEntry]:
    """Return the log entries of ``key`` and of its vendor, whose changes
    (priority order, base URL, protocol) apply to the key too, newest
    first, with their users."""
    key_type = ContentType.objects.get_for_model(ApiKey)
    vendor_type = ContentType.objects.get_for_model(Vendor)
    return (
        LogEntry.objects.filter(
            Q(content_type=key_type, object_id=str(key.pk))
            | Q(content_type=vendor_type, object_id=str(key.vendor_id))
        )
        .select_related("user", "content_type")
        .order_by("-action_time", "-pk")
    )
