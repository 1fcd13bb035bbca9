"""Tests of key rotation: rotate_secrets and generate_encryption_key."""

from __future__ import annotations

from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import connection

from pool.models import ApiKey
from tests.conftest import fake_secret


def raw_secrets() -> dict[int, str]:
    """Return the stored secret column of every key by id, read without the ORM."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, secret FROM {ApiKey._meta.db_table}")
        return dict(cursor.fetchall())


def new_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def keys(vendor, make_key) -> list[ApiKey]:
    return [make_key(vendor, secret=fake_secret("rotate")) for _ in range(3)]


def rotate() -> str:
    output = StringIO()
    call_command("rotate_secrets", stdout=output)
    return output.getvalue()


class TestRotateSecrets:
    def test_rotation_reencrypts_with_first_key(self, keys, settings):
        old_key = settings.KEYPOOL_ENCRYPTION_KEYS[0]
        first_key = new_key()
        before = raw_secrets()
        settings.KEYPOOL_ENCRYPTION_KEYS = [first_key, old_key]

        output = rotate()

        assert "Re-encrypted 3 secret(s)" in output
        after = raw_secrets()
        for key in keys:
            assert after[key.pk] != before[key.pk]
            token = after[key.pk].encode()
            assert Fernet(first_key).decrypt(token).decode() == key.secret

    def test_new_key_alone_decrypts_after_rotation(self, keys, settings):
        old_key = settings.KEYPOOL_ENCRYPTION_KEYS[0]
        first_key = new_key()
        settings.KEYPOOL_ENCRYPTION_KEYS = [first_key, old_key]
        rotate()

        settings.KEYPOOL_ENCRYPTION_KEYS = [first_key]

        stored = {key.pk: key.secret for key in ApiKey.objects.all()}
        assert stored == {key.pk: key.secret for key in keys}

    def test_rotation_keeps_other_fields(self, keys, settings):
        keys[1].disable()
        before = list(ApiKey.objects.values("pk", "name", "order", "is_enabled"))
        old_key = settings.KEYPOOL_ENCRYPTION_KEYS[0]
        settings.KEYPOOL_ENCRYPTION_KEYS = [new_key(), old_key]

        rotate()

        after = list(ApiKey.objects.values("pk", "name", "order", "is_enabled"))
        assert after == before

    def test_wrong_key_list_changes_nothing(self, keys, settings):
        before = raw_secrets()
        settings.KEYPOOL_ENCRYPTION_KEYS = [new_key()]

        with pytest.raises(CommandError) as error:
            rotate()

        message = str(error.value)
        assert "KEYPOOL_ENCRYPTION_KEYS" in message
        assert "'key1' of vendor 'openai'" in message
        assert "Nothing was changed" in message
        assert keys[0].secret not in message
        assert raw_secrets() == before

    def test_one_undecryptable_row_changes_nothing(self, keys, settings):
        old_key = settings.KEYPOOL_ENCRYPTION_KEYS[0]
        other_key = new_key()
        settings.KEYPOOL_ENCRYPTION_KEYS = [other_key, old_key]
        keys[2].save(update_fields=["secret"])
        before = raw_secrets()
        # The list lacks the key that keys[2] is encrypted with.
        settings.KEYPOOL_ENCRYPTION_KEYS = [new_key(), old_key]

        with pytest.raises(CommandError, match="'key3'"):
            rotate()

        assert raw_secrets() == before

    def test_invalid_key_format_names_position(self, keys, settings):
        before = raw_secrets()
        bad_key = "not-a-fernet-key-but-secret-looking-value"
        old_key = settings.KEYPOOL_ENCRYPTION_KEYS[0]
        settings.KEYPOOL_ENCRYPTION_KEYS = [old_key, bad_key]

        with pytest.raises(CommandError) as error:
            rotate()

        message = str(error.value)
        assert "KEYPOOL_ENCRYPTION_KEYS item 2 is not a valid" in message
        assert bad_key not in message
        assert raw_secrets() == before

    def test_no_keys_reports_zero(self, db):
        assert "Re-encrypted 0 secret(s)" in rotate()


class TestGenerateEncryptionKey:
    def test_prints_valid_fernet_key(self):
        output = StringIO()

        call_command("generate_encryption_key", stdout=output)

        printed = output.getvalue().strip()
        assert Fernet(printed).decrypt(Fernet(printed).encrypt(b"x")) == b"x"

    def test_each_call_new_key(self):
        outputs = []
        for _ in range(2):
            output = StringIO()
            call_command("generate_encryption_key", stdout=output)
            outputs.append(output.getvalue())

        assert outputs[0] != outputs[1]
