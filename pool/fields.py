"""A model field that stores text encrypted with Fernet."""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core import checks
from django.core.exceptions import FieldError, ImproperlyConfigured
from django.db import models

SETTING = "KEYPOOL_ENCRYPTION_KEYS"


class DecryptionError(ImproperlyConfigured):
    """A stored value could not be decrypted with any configured key."""


@lru_cache(maxsize=4)
def _build_fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured(
            f"{SETTING} is empty. Set it to one or more comma-separated Fernet "
            "keys; see docs/settings.md."
        )
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError):
            # The key itself is a secret: name its position, never its value.
            raise ImproperlyConfigured(
                f"{SETTING} item {position} is not a valid Fernet key (32 "
                "url-safe base64-encoded bytes). Generate one with "
                "`python manage.py generate_encryption_key`."
            ) from None
    return MultiFernet(fernets)


def get_fernet() -> MultiFernet:
    """Return the MultiFernet for the keys currently in settings."""
    return _build_fernet(tuple(getattr(settings, SETTING, ()) or ()))


@checks.register(checks.Tags.security)
def check_encryption_keys(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Report an empty or invalid key list at start-up, not at the first save."""
    try:
        get_fernet()
    except ImproperlyConfigured as error:
        return [checks.Error(str(error), id="pool.E001")]
    return []


def encrypt(plaintext: str) -> str:
    """Encrypt ``plaintext`` with the first key in the list."""
    return get_fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    """Decrypt ``token``, or raise ``DecryptionError`` rather than return it."""
    try:
        return get_fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise DecryptionError(
            f"A stored secret cannot be decrypted with any key in {SETTING}. "
            "Add the key it was encrypted with to the list (new keys first), "
            "then run `python manage.py rotate_secrets`."
        ) from None


class EncryptedTextField(models.TextField):
    """Text that is encrypted before it reaches the database.

    The column holds only the Fernet token. Each save produces a new token,
    so the column cannot be filtered or compared on: query other fields.
    """

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None:
            return None
        return encrypt(value)

    def from_db_value(self, value, expression, connection):
        if value is None:
            return None
        return decrypt(value)

    def get_lookup(self, lookup_name):
        if lookup_name == "isnull":
            return super().get_lookup(lookup_name)
        # A lookup would compare plaintext with a random token and silently
        # match nothing, so reject it where the query is built.
        raise FieldError(
            f"The encrypted field {self.name!r} cannot be filtered with "
            f"{lookup_name!r}: each save stores a new random token. Filter on "
            "other fields."
        )
