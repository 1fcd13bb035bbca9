"""Print a new Fernet key for KEYPOOL_ENCRYPTION_KEYS."""

from __future__ import annotations

from cryptography.fernet import Fernet
from django.core.management.base import BaseCommand

from pool.fields import SETTING


class Command(BaseCommand):
    help = (
        f"Print a new random Fernet key. Put it first in {SETTING} to encrypt "
        "new secrets with it, then run rotate_secrets."
    )

    def handle(self, *args, **options) -> None:
        self.stdout.write(Fernet.generate_key().decode())
