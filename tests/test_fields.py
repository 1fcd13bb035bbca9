"""Tests of the encrypted secret field and its key settings."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.core.exceptions import FieldError, ImproperlyConfigured
from django.db import connection

from pool.fields import DecryptionError, check_encryption_keys, decrypt, encrypt
from pool.models import ApiKey
from tests.conftest import fake_secret


def raw_secret(key: ApiKey) -> str:
    """Return the stored column value of the key's secret, read without the ORM."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT secret FROM {ApiKey._meta.db_table} WHERE id = %s", [key.pk]
        )
        return cursor.fetchone()[0]


@pytest.fixture
def stored_key(vendor, make_key) -> ApiKey:
    return make_key(vendor, secret=fake_secret("stored"))


class TestEncryption:
    def test_column_holds_fernet_token(self, stored_key):
        fernet = Fernet(settings.KEYPOOL_ENCRYPTION_KEYS[0])

        token = raw_secret(stored_key)

        assert fernet.decrypt(token.encode()).decode() == stored_key.secret

    def test_each_save_new_token(self, stored_key):
        first = raw_secret(stored_key)

        stored_key.save(update_fields=["secret"])

        assert raw_secret(stored_key) != first

    def test_round_trip(self, stored_key):
        assert decrypt(encrypt(stored_key.secret)) == stored_key.secret

    def test_values_list_decrypts(self, stored_key):
        secrets = list(ApiKey.objects.values_list("secret", flat=True))

        assert secrets == [stored_key.secret]

    def test_lookup_on_secret_rejected(self, stored_key):
        with pytest.raises(FieldError, match="'secret' cannot be filtered"):
            ApiKey.objects.filter(secret=stored_key.secret).count()

    def test_isnull_lookup_allowed(self, stored_key):
        assert ApiKey.objects.filter(secret__isnull=False).count() == 1


class TestKeyList:
    def test_old_key_still_decrypts(self, stored_key, settings):
        old_key = settings.KEYPOOL_ENCRYPTION_KEYS[0]
        new_key = Fernet.generate_key().decode()
        settings.KEYPOOL_ENCRYPTION_KEYS = [new_key, old_key]

        assert ApiKey.objects.get(pk=stored_key.pk).secret == stored_key.secret

    def test_first_key_encrypts(self, stored_key, settings):
        old_key = settings.KEYPOOL_ENCRYPTION_KEYS[0]
        new_key = Fernet.generate_key().decode()
        settings.KEYPOOL_ENCRYPTION_KEYS = [new_key, old_key]

        stored_key.save(update_fields=["secret"])

        token = raw_secret(stored_key).encode()
        assert Fernet(new_key).decrypt(token).decode() == stored_key.secret

    def test_wrong_key_raises_naming_setting(self, stored_key, settings):
        token = raw_secret(stored_key)
        settings.KEYPOOL_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

        with pytest.raises(DecryptionError) as error:
            ApiKey.objects.get(pk=stored_key.pk)

        message = str(error.value)
        assert "KEYPOOL_ENCRYPTION_KEYS" in message
        assert "rotate_secrets" in message
        assert stored_key.secret not in message
        assert token not in message

    def test_wrong_key_never_returns_ciphertext(self, stored_key, settings):
        settings.KEYPOOL_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

        with pytest.raises(DecryptionError):
            list(ApiKey.objects.values_list("secret", flat=True))

    def test_plaintext_in_column_rejected(self, stored_key):
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {ApiKey._meta.db_table} SET secret = %s WHERE id = %s",
                ["sk-test-fake-plaintext-000001", stored_key.pk],
            )

        with pytest.raises(DecryptionError, match="KEYPOOL_ENCRYPTION_KEYS"):
            ApiKey.objects.get(pk=stored_key.pk)

    def test_empty_key_list_rejected(self, settings):
        settings.KEYPOOL_ENCRYPTION_KEYS = []

        with pytest.raises(ImproperlyConfigured) as error:
            encrypt("sk-test-fake-empty-000001")

        assert "KEYPOOL_ENCRYPTION_KEYS is empty" in str(error.value)

    @pytest.mark.parametrize("position", [1, 2])
    def test_invalid_key_names_position(self, settings, position):
        bad_key = "not-a-fernet-key-but-secret-looking-value"
        keys = [Fernet.generate_key().decode()]
        keys.insert(position - 1, bad_key)
        settings.KEYPOOL_ENCRYPTION_KEYS = keys

        with pytest.raises(ImproperlyConfigured) as error:
            encrypt("sk-test-fake-invalid-000001")

        message = str(error.value)
        assert f"KEYPOOL_ENCRYPTION_KEYS item {position} is not a valid" in message
        assert "generate_encryption_key" in message
        assert bad_key not in message
        assert error.value.__cause__ is None


class TestEncryptionKeysCheck:
    def test_valid_keys_pass(self):
        assert check_encryption_keys() == []

    def test_invalid_key_reported(self, settings):
        bad_key = "not-a-fernet-key-but-secret-looking-value"
        settings.KEYPOOL_ENCRYPTION_KEYS = [bad_key]

        errors = check_encryption_keys()

        assert [error.id for error in errors] == ["pool.E001"]
        assert "KEYPOOL_ENCRYPTION_KEYS item 1" in errors[0].msg
        assert bad_key not in errors[0].msg

    def test_empty_list_reported(self, settings):
        settings.KEYPOOL_ENCRYPTION_KEYS = []

        errors = check_encryption_keys()

        assert "KEYPOOL_ENCRYPTION_KEYS is empty" in errors[0].msg
