"""Load demo vendors that point at the vendor simulator, and make sure a
local admin login exists."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from keypool import settings as project_settings
from pool.models import ApiKey, Protocol, Vendor

ADMIN_USERNAME = "admin"
PASSWORD_ENTRY = "ADMIN_PASSWORD"

# (slug, name, protocol, path prefix of the real API, keys). Each key is
# (name, secret, extra fields); the simulator reads its behaviour from the
# secret, e.g. "sim-quota3" succeeds three times and then is out of quota.
DEMO_VENDORS = [
    (
        "openai",
        "OpenAI",
        Protocol.OPENAI,
        "v1",
        [
            ("trial (3 calls)", "sk-sim-quota3-demo-openai-1", {}),
            ("rate limited", "sk-sim-rate30-demo-openai-2", {}),
            (
                "expires soon",
                "sk-sim-ok-demo-openai-3",
                {"expires_in": timedelta(days=3)},
            ),
            ("switched off", "sk-sim-ok-demo-openai-4", {"disabled": True}),
            ("expired", "sk-sim-ok-demo-openai-5", {"expires_in": -timedelta(days=1)}),
        ],
    ),
    (
        "anthropic",
        "Anthropic",
        Protocol.ANTHROPIC,
        "v1",
        [
            ("revoked", "sk-ant-sim-invalid-demo-1", {}),
            ("main", "sk-ant-sim-quota20-demo-2", {}),
        ],
    ),
    (
        "gemini",
        "Google Gemini",
        Protocol.GEMINI,
        "v1beta",
        [
            ("free tier", "AIza-sim-quota5-demo-gemini-1", {}),
            ("paid", "AIza-sim-ok-demo-gemini-2", {}),
        ],
    ),
    (
        "deepseek",
        "DeepSeek",
        Protocol.OPENAI,
        "v1",
        [
            ("overloaded region", "sk-sim-error503-demo-deepseek-1", {}),
            ("main", "sk-sim-quota10-demo-deepseek-2", {}),
            ("empty balance", "sk-sim-quota0-demo-deepseek-3", {"exceeded": True}),
        ],
    ),
]


class Command(BaseCommand):
    help = (
        "On an empty database, create demo vendors whose base URL is the "
        "vendor simulator, with keys that show failover. Also create the "
        "local superuser 'admin' with a password kept in the development "
        "secrets file. Running it again changes nothing."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--simulator-port",
            type=int,
            default=8900,
            help="Port of the vendor simulator on 127.0.0.1 (default 8900).",
        )
        parser.add_argument(
            "--port",
            type=int,
            default=8000,
            help="Port the app is served on, for the printed URL (default 8000).",
        )

    def handle(self, *args, **options) -> None:
        if Vendor.objects.exists():
            self.stdout.write(
                "The database already has vendors, so no demo data was added."
            )
        else:
            self.create_demo(options["simulator_port"])
        self.ensure_admin(f"http://127.0.0.1:{options['port']}/pool/")

    def create_demo(self, port: int) -> None:
        now = timezone.now()
        with transaction.atomic():
            for slug, name, protocol, prefix, keys in DEMO_VENDORS:
                vendor = Vendor.objects.create(
                    slug=slug,
                    name=name,
                    protocol=protocol,
                    base_url=f"http://127.0.0.1:{port}/{prefix}",
                )
                for key_name, secret, extra in keys:
                    create_demo_key(vendor, key_name, secret, extra, now)
        self.stdout.write(
            f"Added {len(DEMO_VENDORS)} demo vendors served by the vendor simulator "
            f"on 127.0.0.1:{port}."
        )

    def ensure_admin(self, pool_url: str) -> None:
        password = admin_password(Path(settings.DEV_SECRETS_FILE))
        users = get_user_model().objects
        user = users.filter(username=ADMIN_USERNAME).first()
        if user is None:
            users.create_superuser(ADMIN_USERNAME, "", password)
            self.stdout.write(f"Created the superuser {ADMIN_USERNAME!r}.")
        elif not user.check_password(password):
            self.stdout.write(
                f"User {ADMIN_USERNAME!r} already exists with another password, "
                "which was left unchanged. Set a new one with: "
                f"python manage.py changepassword {ADMIN_USERNAME}"
            )
            self.stdout.write(f"Open {pool_url}")
            return
        self.stdout.write(
            f"Open {pool_url} and log in as {ADMIN_USERNAME} with password "
            f"{password} (kept in {Path(settings.DEV_SECRETS_FILE).name})."
        )


def create_demo_key(vendor: Vendor, name: str, secret: str, extra: dict, now) -> ApiKey:
    expires_in = extra.get("expires_in")
    key = ApiKey.objects.create(
        vendor=vendor,
        name=name,
        secret=secret,
        expires_at=now + expires_in if expires_in is not None else None,
        is_enabled=not extra.get("disabled", False),
    )
    if extra.get("exceeded"):
        key.mark(ApiKey.Status.EXCEEDED, "Insufficient Balance", observed_at=now)
    return key


def admin_password(path: Path) -> str:
    """Return the admin password from the secrets file at ``path``, adding a
    new random one to the file if it has none."""
    stored = read_secrets(path)
    if PASSWORD_ENTRY not in stored:
        stored[PASSWORD_ENTRY] = secrets.token_urlsafe(18)
        write_secrets(path, stored)
    return stored[PASSWORD_ENTRY]


def read_secrets(path: Path) -> dict[str, str]:
    if path == project_settings.DEV_SECRETS_FILE:
        # Creates the file with the other development secrets if missing.
        return project_settings.load_dev_secrets()
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def write_secrets(path: Path, values: dict[str, str]) -> None:
    """Replace the file in one step, readable by its owner only."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.")
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(values, file, indent=2)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
