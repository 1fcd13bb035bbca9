"""Vendors and their API keys, with the status rules of the pool.

Sibling apps use these models and querysets directly. Automatic status
(exceeded, invalid, cooldown) is written by single UPDATE statements that
touch only the status fields, so a concurrent edit on the pool page and a
concurrent mark by the failover service never overwrite each other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import models, transaction
from django.db.models import Case, Count, F, Q, Value, When
from django.db.models.functions import Coalesce, Greatest, Lower
from django.db.models.signals import pre_delete
from django.dispatch import receiver
from django.utils import timezone
from ordered_model.models import (
    OrderedModel,
    OrderedModelManager,
    OrderedModelQuerySet,
)

from pool.fields import EncryptedTextField
from pool.redaction import mask, redact

STATUS_REASON_MAX_LENGTH = 500
KEY_NAME_PATTERN = re.compile(r"^key(\d+)$")
# The columns that a plain ``save()`` of an existing key writes.
EDITABLE_FIELDS = ("vendor", "name", "secret", "api_url", "config", "expires_at")

# A secret travels in an HTTP header, which takes printable ASCII only. A
# space or an invisible character in a secret usually comes from copy and
# paste.
SECRET_MAX_LENGTH = 1024
SECRET_PATTERN = re.compile(r"^[\x21-\x7e]+$")
SECRET_CHARACTERS_MESSAGE = (
    "The API key may contain only printable ASCII characters without spaces; "
    "check for a space or invisible character left by copy and paste."
)

# Vendor URLs are called with ``requests``, which speaks only HTTP(S).
# Its own code keeps a ModelForm from replacing the message with the form
# field's generic "invalid" one.
validate_http_url = URLValidator(
    schemes=["http", "https"],
    message="Enter a valid URL. It must start with http:// or https://.",
    code="invalid_http_url",
)

# Extra headers that a key may send. The protocol's own authentication
# headers come from the secret, and the framing and hop-by-hop headers
# belong to the HTTP client, so a key may not set any of them.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
    }
)
HEADER_NAME_PATTERN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
HEADER_VALUE_PATTERN = re.compile(r"^[\x20-\x7e]*$")
HEADER_NAME_MAX_LENGTH = 100
HEADER_VALUE_MAX_LENGTH = 8192
MAX_HEADERS = 50

# Settings that the protocols send as a header or a query parameter.
SETTING_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
SETTING_MAX_LENGTHS = {"api_version": 50, "organization": 100, "project": 100}
SETTING_LABELS = {
    "api_version": "API version",
    "organization": "organization",
    "project": "project",
}


def validate_secret(secret: str) -> None:
    """Reject a secret that cannot be sent in an HTTP header.

    The message never contains the secret or any part of it.
    """
    if len(secret) > SECRET_MAX_LENGTH:
        raise ValidationError(
            f"The API key is longer than {SECRET_MAX_LENGTH} characters. Check "
            "that only the key was pasted.",
            code="secret_too_long",
        )
    if not SECRET_PATTERN.match(secret):
        raise ValidationError(SECRET_CHARACTERS_MESSAGE, code="secret_characters")


def validate_headers(headers: object) -> None:
    """Reject extra headers that cannot or must not be sent.

    ``headers`` maps names to values. Messages name the header, never its
    value, which may be a credential.
    """
    if not isinstance(headers, dict):
        raise ValidationError(
            "The extra headers must be an object of names and values.",
            code="invalid_headers",
        )
    if len(headers) > MAX_HEADERS:
        raise ValidationError(
            f"There are {len(headers)} extra headers. At most {MAX_HEADERS} are "
            "allowed.",
            code="too_many_headers",
        )
    seen: set[str] = set()
    for name, value in headers.items():
        validate_header(name, value)
        if name.lower() in seen:
            raise ValidationError(
                f"The header {name} is listed twice. Keep one line for it.",
                code="duplicate_header",
            )
        seen.add(name.lower())


def validate_header(name: object, value: object) -> None:
    """Reject one extra header; see ``validate_headers``."""
    if (
        not isinstance(name, str)
        or len(name) > HEADER_NAME_MAX_LENGTH
        or not HEADER_NAME_PATTERN.match(name)
    ):
        raise ValidationError(
            f"A header name is invalid. Use at most {HEADER_NAME_MAX_LENGTH} "
            "letters, digits and -, for example X-Team.",
            code="invalid_header_name",
        )
    if name.lower() in RESERVED_HEADERS:
        raise ValidationError(
            f"The header {name} cannot be set here because the pool sets it "
            "itself. Remove that line.",
            code="reserved_header",
        )
    if not isinstance(value, str) or not HEADER_VALUE_PATTERN.match(value):
        raise ValidationError(
            f"The value of the header {name} may contain only printable ASCII "
            "characters and spaces.",
            code="invalid_header_value",
        )
    if len(value) > HEADER_VALUE_MAX_LENGTH:
        raise ValidationError(
            f"The value of the header {name} is longer than "
            f"{HEADER_VALUE_MAX_LENGTH} characters.",
            code="header_value_too_long",
        )


def validate_setting(name: str, value: str) -> None:
    """Reject an API version, organization or project that is too long or
    contains characters other than letters, digits, ``.``, ``_`` and ``-``."""
    label = SETTING_LABELS[name]
    max_length = SETTING_MAX_LENGTHS[name]
    if len(value) > max_length or not SETTING_PATTERN.match(value):
        raise ValidationError(
            f"The {label} may contain only letters, digits, “.”, “_” and “-”, "
            f"at most {max_length} characters.",
            code=f"invalid_{name}",
        )


def validate_config(config: object) -> None:
    """Reject ``ApiKey.config`` values that the protocols cannot send."""
    if not isinstance(config, dict):
        raise ValidationError(
            "The settings must be a JSON object.", code="invalid_config"
        )
    for name in SETTING_MAX_LENGTHS:
        value = config.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise ValidationError(
                f"The {SETTING_LABELS[name]} must be a string.",
                code=f"invalid_{name}",
            )
        validate_setting(name, value)
    if "headers" in config:
        validate_headers(config["headers"])


class Protocol(models.TextChoices):
    OPENAI = "openai", "OpenAI-compatible"
    ANTHROPIC = "anthropic", "Anthropic"
    AZURE = "azure", "Azure OpenAI"
    GEMINI = "gemini", "Google Gemini"


class VendorQuerySet(models.QuerySet):
    def with_key_counts(self) -> VendorQuerySet:
        """Annotate ``key_count`` and ``usable_key_count`` in the same query."""
        return self.annotate(
            key_count=Count("keys", distinct=True),
            usable_key_count=Count(
                "keys", filter=usable_key_filter(prefix="keys__"), distinct=True
            ),
        )

    def resolve(self, vendor: Vendor | str) -> Vendor:
        """Return ``vendor`` itself, or the vendor with that slug.

        Raises ``Vendor.DoesNotExist`` for an unknown slug.
        """
        if isinstance(vendor, Vendor):
            return vendor
        return self.get(slug=vendor)


class Vendor(models.Model):
    Protocol = Protocol

    slug = models.SlugField(
        unique=True, max_length=50, help_text="Short identifier used in URLs and code."
    )
    name = models.CharField(max_length=100)
    protocol = models.CharField(
        max_length=20,
        choices=Protocol.choices,
        default=Protocol.OPENAI,
        help_text="How requests are authenticated and errors are read.",
    )
    base_url = models.URLField(
        "base URL",
        max_length=500,
        validators=[validate_http_url],
        help_text="Default API URL for keys that do not set their own.",
    )

    objects = VendorQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                Lower("name"),
                name="pool_vendor_unique_name_ci",
                violation_error_message=(
                    "A vendor with this name already exists. Pick another name."
                ),
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def default_key(self) -> ApiKey | None:
        """The vendor's default key, or None while it has no keys."""
        return self.keys.filter(is_default=True).first()


def usable_key_filter(*, prefix: str = "", now: datetime | None = None) -> Q:
    """Build the condition for "may be called now", optionally across a
    relation (``prefix="keys__"``)."""
    now = now or timezone.now()
    return (
        Q(
            **{
                f"{prefix}is_enabled": True,
                f"{prefix}is_invalid": False,
                f"{prefix}is_exceeded": False,
            }
        )
        & (
            Q(**{f"{prefix}expires_at__isnull": True})
            | Q(**{f"{prefix}expires_at__gt": now})
        )
        & (
            Q(**{f"{prefix}cooldown_until__isnull": True})
            | Q(**{f"{prefix}cooldown_until__lte": now})
        )
    )


def lock_vendors(vendor_ids: Iterable[int], *, using: str | None = None) -> None:
    """Lock the vendors' rows until the transaction ends, lowest id first.

    Every change of a vendor's priorities or default key takes this lock
    before it reads the keys, so creates, deletes and moves of one vendor's
    keys run one at a time and leave the priorities 0..n-1. On SQLite the
    transaction's write lock does the same (``transaction_mode`` IMMEDIATE).
    """
    vendors = Vendor.objects.using(using).select_for_update()
    ids = vendors.filter(pk__in=set(vendor_ids)).order_by("pk")
    list(ids.values_list("pk", flat=True))


class DefaultKeyDeletionError(ValidationError):
    """Raised when the default key of a vendor would be deleted on its own."""

    @classmethod
    def for_key(cls, key: ApiKey) -> DefaultKeyDeletionError:
        """Build the error for ``key``, naming the key, its vendor and the fix."""
        return cls(
            f"Key {key.name!r} is the default key of {key.vendor.name} and "
            "cannot be deleted. Make another key the default first, or delete "
            "the vendor with all its keys.",
            code="default_key",
        )


class StaleOrderError(ValueError):
    """A new priority order did not list exactly the vendor's current keys."""


class ApiKeyQuerySet(OrderedModelQuerySet):
    def usable(self, vendor: Vendor | str) -> ApiKeyQuerySet:
        """Return the keys of ``vendor`` that may be called now, highest
        priority first, with their vendor loaded: one query.

        ``vendor`` is a ``Vendor`` or a slug. An unknown slug gives no keys.
        """
        if isinstance(vendor, Vendor):
            keys = self.filter(vendor=vendor)
        else:
            keys = self.filter(vendor__slug=vendor)
        keys = keys.filter(usable_key_filter()).select_related("vendor")
        return keys.order_by("order", "pk")

    def delete(self):
        """Delete the keys and renumber each affected vendor's priorities.

        Raises ``DefaultKeyDeletionError`` if the keys include a default key,
        and then deletes nothing.
        """
        with transaction.atomic(using=self.db):
            vendor_ids = set(self.values_list("vendor_id", flat=True))
            lock_vendors(vendor_ids, using=self.db)
            result = super().delete()
            for vendor_id in vendor_ids:
                self.model.objects.renumber(vendor_id)
        return result

    delete.alters_data = True
    delete.queryset_only = True

    def reorder(self, vendor: Vendor, ids: list[int]) -> None:
        """Give the vendor's keys the priority order ``ids`` (highest first).

        The vendor's keys are locked while the list is checked, and only
        ``order`` is written. Raises ``StaleOrderError``, and changes
        nothing, unless ``ids`` is exactly the vendor's current set of keys.
        """
        with transaction.atomic():
            lock_vendors([vendor.pk])
            keys = self.model.objects.filter(vendor=vendor)
            current = set(keys.select_for_update().values_list("pk", flat=True))
            if len(ids) != len(set(ids)) or set(ids) != current:
                raise StaleOrderError(
                    "The list of keys does not match the vendor's current keys."
                )
            keys.write_order(ids)

    def renumber(self, vendor: Vendor | int) -> None:
        """Close gaps in the vendor's priorities so they run 0..n-1.

        The vendor's keys are locked while they are counted, so a concurrent
        reorder or move cannot interleave with the renumbering.
        """
        with transaction.atomic(using=self.db):
            lock_vendors([vendor.pk if isinstance(vendor, Vendor) else vendor])
            keys = self.model.objects.filter(vendor=vendor)
            ids = list(
                keys.select_for_update()
                .order_by("order", "pk")
                .values_list("pk", flat=True)
            )
            keys.write_order(ids)

    def bulk_create(self, objs: Iterable[ApiKey], *args, **kwargs) -> list[ApiKey]:
        """Create the keys, each at the bottom of its vendor's list.

        The first key of a vendor that has no default key becomes its
        default key, as with ``save()``.
        """
        objs = list(objs)
        with transaction.atomic(using=self.db):
            vendor_ids = {obj.vendor_id for obj in objs}
            lock_vendors(vendor_ids, using=self.db)
            defaults = self.model.objects.filter(
                vendor_id__in=vendor_ids, is_default=True
            )
            with_default = set(defaults.values_list("vendor_id", flat=True))
            with_default.update(obj.vendor_id for obj in objs if obj.is_default)
            for obj in objs:
                if obj.vendor_id not in with_default:
                    obj.is_default = True
                    with_default.add(obj.vendor_id)
            return super().bulk_create(objs, *args, **kwargs)

    bulk_create.alters_data = True

    def write_order(self, ids: list[int]) -> int:
        """Give the keys ``ids`` the priorities 0..n-1 in list order.

        One UPDATE that writes only ``order``, whatever the number of keys.
        """
        if not ids:
            return 0
        position = Case(
            *(When(pk=pk, then=Value(index)) for index, pk in enumerate(ids)),
            output_field=models.PositiveIntegerField(),
        )
        return self.filter(pk__in=ids).update(order=position)

    def suggest_name(self, vendor: Vendor) -> str:
        """Return ``key`` + (the highest N among the vendor's ``keyN`` names
        + 1), e.g. ``key3`` after ``key1`` and ``key2``."""
        names = self.filter(vendor=vendor, name__startswith="key").values_list(
            "name", flat=True
        )
        numbers = [
            int(match[1]) for name in names if (match := KEY_NAME_PATTERN.match(name))
        ]
        return f"key{max(numbers, default=0) + 1}"


class ApiKeyManager(OrderedModelManager.from_queryset(ApiKeyQuerySet)):
    pass


class ApiKey(OrderedModel):
    """One credential of a vendor, with its place in the priority order.

    ``order`` 0 is the highest priority. ``status`` is derived from the
    stored fields whenever it is read, so an expiry or the end of a cooldown
    takes effect without any job running.
    """

    class Status(models.TextChoices):
        NORMAL = "normal", "Normal"
        EXCEEDED = "exceeded", "Exceeded"
        EXPIRED = "expired", "Expired"
        DISABLED = "disabled", "Disabled"
        INVALID = "invalid", "Invalid"
        RATE_LIMITED = "rate_limited", "Rate limited"

    vendor = models.ForeignKey(Vendor, on_delete=models.CASCADE, related_name="keys")
    name = models.CharField(max_length=100)
    secret = EncryptedTextField(
        validators=[validate_secret], help_text="The credential. Stored encrypted."
    )
    api_url = models.URLField(
        "API URL",
        max_length=500,
        blank=True,
        validators=[validate_http_url],
        help_text="Leave blank to use the vendor's base URL.",
    )
    config = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_config],
        help_text='Extra settings, e.g. {"headers": {...}, "api_version": "..."}.',
    )
    expires_at = models.DateTimeField(
        "expires", null=True, blank=True, help_text="Leave blank for never."
    )
    is_enabled = models.BooleanField("enabled", default=True)
    is_default = models.BooleanField("default key", default=False, editable=False)

    # Automatic status, written by the failover service.
    is_exceeded = models.BooleanField("out of quota", default=False)
    is_invalid = models.BooleanField("rejected by vendor", default=False)
    cooldown_until = models.DateTimeField(null=True, blank=True)
    status_reason = models.CharField(max_length=STATUS_REASON_MAX_LENGTH, blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)

    # Usage.
    last_used_at = models.DateTimeField(null=True, blank=True)
    success_count = models.PositiveBigIntegerField(default=0)
    failure_count = models.PositiveBigIntegerField(default=0)

    created_at = models.DateTimeField(auto_now_add=True)

    order_with_respect_to = "vendor"

    objects = ApiKeyManager()

    class Meta(OrderedModel.Meta):
        verbose_name = "API key"
        constraints = [
            models.UniqueConstraint(
                fields=["vendor", "name"],
                name="pool_apikey_unique_name_per_vendor",
                violation_error_message="This vendor already has a key with this name.",
            ),
            models.UniqueConstraint(
                fields=["vendor"],
                condition=Q(is_default=True),
                name="pool_apikey_one_default_per_vendor",
            ),
        ]
        indexes = [models.Index(fields=["vendor", "order"])]

    def __str__(self) -> str:
        return self.name

    # Status ----------------------------------------------------------------

    def status_at(self, now: datetime) -> ApiKey.Status:
        """Return the status at ``now``, by the precedence expired >
        disabled > invalid > exceeded > rate limited > normal."""
        if self.expires_at is not None and self.expires_at <= now:
            return self.Status.EXPIRED
        if not self.is_enabled:
            return self.Status.DISABLED
        if self.is_invalid:
            return self.Status.INVALID
        if self.is_exceeded:
            return self.Status.EXCEEDED
        if self.cooldown_until is not None and self.cooldown_until > now:
            return self.Status.RATE_LIMITED
        return self.Status.NORMAL

    @property
    def status(self) -> ApiKey.Status:
        """The status now; see ``status_at``."""
        return self.status_at(timezone.now())

    @property
    def is_usable(self) -> bool:
        """Whether the key may be called now (its status is normal)."""
        return self.status == self.Status.NORMAL

    @property
    def is_expired(self) -> bool:
        """Whether ``expires_at`` has passed."""
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def masked(self) -> str:
        """The display form of the secret, e.g. ``sk-t…0001``."""
        return mask(self.secret or "")

    @property
    def effective_url(self) -> str:
        """The key's API URL, or the vendor's base URL when it has none."""
        return self.api_url or self.vendor.base_url

    # Saving and deleting ---------------------------------------------------

    def save(self, *args, **kwargs) -> None:
        """Save the key. A new key goes to the bottom of its vendor's list,
        and the first key of a vendor becomes its default key.

        A new key created with ``is_default=True`` takes the default from the
        vendor's old default key. Saving an existing key without
        ``update_fields`` writes only ``EDITABLE_FIELDS``: the status, usage,
        ``is_enabled``, ``is_default`` and ``order`` columns change only
        through their methods or an explicit ``update_fields``, so a stale
        instance never overwrites what the failover service wrote.

        Raises ``ValidationError`` when an existing key would move to
        another vendor.
        """
        if not self._state.adding:
            if kwargs.get("update_fields") is None:
                kwargs["update_fields"] = EDITABLE_FIELDS
            if {"vendor", "vendor_id"} & set(kwargs["update_fields"]):
                self._reject_vendor_change()
            super().save(*args, **kwargs)
            return
        with transaction.atomic():
            # Two keys added at once must not both take the next priority or
            # both become the default key.
            lock_vendors([self.vendor_id])
            siblings = ApiKey.objects.filter(vendor_id=self.vendor_id)
            if self.is_default:
                # Unset first: the partial unique constraint allows one default.
                siblings.filter(is_default=True).update(is_default=False)
            else:
                self.is_default = not siblings.exists()
            super().save(*args, **kwargs)

    def _reject_vendor_change(self) -> None:
        # OrderedModel records the vendor the instance was loaded with.
        if self._wrt_map() != self._original_wrt_map:
            raise ValidationError(
                f"Key {self.name!r} cannot move to another vendor, because its "
                "vendor would lose its place in the priority order or its "
                "default key. Add a new key to the other vendor and delete "
                "this one.",
                code="vendor_change",
            )

    def delete(self, *args, **kwargs) -> tuple[int, dict[str, int]]:
        """Delete the key and move the keys below it up one place.

        Raises ``DefaultKeyDeletionError`` for the default key, and then
        deletes nothing.
        """
        with transaction.atomic(using=kwargs.get("using")):
            lock_vendors([self.vendor_id], using=kwargs.get("using"))
            # Skip OrderedModel.delete(): it shifts the keys below by the
            # in-memory ``order``, which is stale after a concurrent reorder.
            result = models.Model.delete(self, *args, **kwargs)
            ApiKey.objects.renumber(self.vendor_id)
        return result

    def set_default(self) -> None:
        """Make this key the vendor's default key in place of the old one."""
        with transaction.atomic():
            lock_vendors([self.vendor_id])
            # Unset first: the partial unique constraint allows one default.
            ApiKey.objects.filter(vendor_id=self.vendor_id, is_default=True).exclude(
                pk=self.pk
            ).update(is_default=False)
            ApiKey.objects.filter(pk=self.pk).update(is_default=True)
        self.is_default = True

    def move(self, direction: str) -> bool:
        """Swap the key with its neighbour above (``"up"``) or below
        (``"down"``), writing only ``order``. Return False at either end."""
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', not {direction!r}.")
        with transaction.atomic():
            lock_vendors([self.vendor_id])
            siblings = ApiKey.objects.filter(vendor_id=self.vendor_id)
            siblings = siblings.select_for_update()
            ids = list(siblings.order_by("order", "pk").values_list("pk", flat=True))
            index = ids.index(self.pk)
            target = index - 1 if direction == "up" else index + 1
            if not 0 <= target < len(ids):
                return False
            ids[index], ids[target] = ids[target], ids[index]
            siblings.write_order(ids)
        self.order = target
        return True

    # OrderedModel's own moves (up, down, to, top, bottom, above, below, swap)
    # call save(), which writes every column from memory. They are redone
    # here on top of write_order(), so they too write only ``order``.

    def to(self, order: int, extra_update: dict | None = None) -> None:
        """Move the key to priority ``order``, shifting the keys in between.

        Writes only ``order``. An ``order`` past the end moves the key to the
        bottom.
        """
        if extra_update:
            raise TypeError("ApiKey.to() writes only the order: no extra_update.")
        if not isinstance(order, int):
            raise TypeError(f"order must be an int, not {type(order).__name__}.")
        with transaction.atomic():
            lock_vendors([self.vendor_id])
            siblings = ApiKey.objects.filter(vendor_id=self.vendor_id)
            siblings = siblings.select_for_update()
            ids = list(siblings.order_by("order", "pk").values_list("pk", flat=True))
            ids.remove(self.pk)
            ids.insert(max(order, 0), self.pk)
            siblings.write_order(ids)
        self.order = ids.index(self.pk)

    def swap(self, replacement: ApiKey) -> None:
        """Exchange the priorities of this key and ``replacement``.

        Writes only ``order``. Raises ``ValueError`` for a key of another
        vendor.
        """
        self._validate_ordering_reference(replacement)
        with transaction.atomic():
            lock_vendors([self.vendor_id])
            siblings = ApiKey.objects.filter(vendor_id=self.vendor_id)
            siblings = siblings.select_for_update()
            ids = list(siblings.order_by("order", "pk").values_list("pk", flat=True))
            first, second = ids.index(self.pk), ids.index(replacement.pk)
            ids[first], ids[second] = ids[second], ids[first]
            siblings.write_order(ids)
        self.order, replacement.order = second, first

    def up(self) -> None:
        """Move the key one place up; see ``move``."""
        self.move("up")

    def down(self) -> None:
        """Move the key one place down; see ``move``."""
        self.move("down")

    # Status changes --------------------------------------------------------

    def enable(self) -> None:
        """Enable the key and clear exceeded, invalid and any cooldown, so
        the very next call may use it.

        Raises ``ValidationError`` for an expired key.
        """
        if self.is_expired:
            raise ValidationError(
                f"Key {self.name!r} has expired. Extend its expiry date or "
                "delete the key.",
                code="expired",
            )
        self._write_status(
            is_enabled=True,
            is_exceeded=False,
            is_invalid=False,
            cooldown_until=None,
            status_reason="",
        )

    def disable(self) -> None:
        """Disable the key. It is skipped until it is enabled again."""
        self._write_status(is_enabled=False)

    def _write_status(self, **fields) -> None:
        fields["status_changed_at"] = timezone.now()
        ApiKey.objects.filter(pk=self.pk).update(**fields)
        for name, value in fields.items():
            setattr(self, name, value)

    def mark(
        self,
        status: ApiKey.Status,
        reason: str = "",
        *,
        observed_at: datetime,
        cooldown_until: datetime | None = None,
    ) -> bool:
        """Record the status that a vendor response showed for this key:
        EXCEEDED, INVALID or RATE_LIMITED (with ``cooldown_until``).

        One conditional UPDATE of the status fields. It is skipped, and
        False returned, when the status changed after ``observed_at`` (the
        time the request started) and the key carries no automatic mark
        (exceeded, invalid or a cooldown). So a key that someone re-enabled
        while the request was in flight stays enabled. A cooldown never
        moves to an earlier end. ``reason`` is stored with secrets redacted.
        """
        reason = redact(reason, [self.secret])
        changes: dict[str, object] = {
            "status_reason": reason[:STATUS_REASON_MAX_LENGTH],
            "status_changed_at": timezone.now(),
        }
        if status == self.Status.EXCEEDED:
            changes["is_exceeded"] = True
        elif status == self.Status.INVALID:
            changes["is_invalid"] = True
        elif status == self.Status.RATE_LIMITED:
            if cooldown_until is None:
                raise ValueError("RATE_LIMITED needs cooldown_until.")
            # A mark from an older request must not cut a later, longer
            # cooldown short.
            changes["cooldown_until"] = Greatest(
                Coalesce(F("cooldown_until"), Value(cooldown_until)),
                Value(cooldown_until),
            )
        else:
            raise ValueError(
                f"mark() takes EXCEEDED, INVALID or RATE_LIMITED, not {status}."
            )
        not_changed_since = Q(status_changed_at__isnull=True) | Q(
            status_changed_at__lte=observed_at
        )
        # enable() clears every automatic mark, so a key that still carries
        # one was not re-enabled, whatever changed it since (for example a
        # cooldown set by a concurrent request).
        carries_mark = (
            Q(is_exceeded=True) | Q(is_invalid=True) | Q(cooldown_until__isnull=False)
        )
        updated = ApiKey.objects.filter(
            not_changed_since | carries_mark, pk=self.pk
        ).update(**changes)
        if updated:
            self.refresh_from_db(fields=list(changes))
        return bool(updated)

    def record_usage(
        self, *, successes: int = 0, failures: int = 0, used_at: datetime
    ) -> None:
        """Add to the usage counters with one UPDATE that touches only them."""
        ApiKey.objects.filter(pk=self.pk).update(
            success_count=F("success_count") + successes,
            failure_count=F("failure_count") + failures,
            last_used_at=used_at,
        )


@receiver(pre_delete, sender=ApiKey, dispatch_uid="pool_protect_default_key")
def protect_default_key(sender, instance: ApiKey, origin=None, **kwargs) -> None:
    """Reject deleting a default key unless its whole vendor is deleted.

    A signal covers every route (instance, queryset, admin); Django sends it
    inside the delete transaction, so raising here deletes nothing.
    """
    if not instance.is_default:
        return
    if isinstance(origin, Vendor) or (
        isinstance(origin, models.QuerySet) and origin.model is Vendor
    ):
        return
    raise DefaultKeyDeletionError.for_key(instance)
