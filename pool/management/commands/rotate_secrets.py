"""Re-encrypt every stored secret with the first encryption key."""

from __future__ import annotations

from cryptography.fernet import InvalidToken, MultiFernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import models, transaction
from django.db.models.functions import Cast

from pool.fields import SETTING, get_fernet
from pool.models import ApiKey


class Command(BaseCommand):
    help = (
        f"Re-encrypt every stored secret with the first key in {SETTING}. "
        "Put a new key first, keep the old keys after it, run this command, "
        "then remove the old keys. If any secret cannot be decrypted, nothing "
        "is changed."
    )

    def handle(self, *args, **options) -> None:
        try:
            fernet = get_fernet()
        except ImproperlyConfigured as error:
            raise CommandError(str(error)) from None
        with transaction.atomic():
            rows = self.read_tokens()
            # Rotate every token before writing any, so a key missing from
            # the list stops the command with all rows as they were.
            rotated = [
                (pk, self.rotate(fernet, pk, slug, name, token))
                for pk, slug, name, token in rows
            ]
            for pk, token in rotated:
                # A plain TextField value bypasses the field's encryption:
                # the token is already encrypted.
                ApiKey.objects.filter(pk=pk).update(
                    secret=models.Value(token, output_field=models.TextField())
                )
        self.stdout.write(
            f"Re-encrypted {len(rotated)} secret(s) with the first key in {SETTING}."
        )

    def read_tokens(self) -> list[tuple[int, str, str, str]]:
        """Return (pk, vendor slug, key name, stored token) of every key, locked.

        The cast to plain text reads the stored token without decrypting it.
        """
        keys = ApiKey.objects.select_for_update(of=("self",)).order_by("pk")
        return list(
            keys.values_list(
                "pk", "vendor__slug", "name", Cast("secret", models.TextField())
            )
        )

    def rotate(
        self, fernet: MultiFernet, pk: int, slug: str, name: str, token: str
    ) -> str:
        try:
            return fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise CommandError(
                f"The secret of key {name!r} of vendor {slug!r} (id {pk}) cannot "
                f"be decrypted with any key in {SETTING}. Add the key it was "
                "encrypted with to the list, after the new key, and run the "
                "command again. Nothing was changed."
            ) from None
