"""Send one request through the key pool and show how it was served."""

from __future__ import annotations

import json

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from pool import services
from pool.models import Vendor

BODY_PREVIEW_LENGTH = 500


class Command(BaseCommand):
    help = (
        "Send one request through the pool of a vendor and print the status, "
        "the key that served and each failover on the way."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("vendor", help="Slug of the vendor, e.g. openai.")
        parser.add_argument("method", help="HTTP method, e.g. GET or POST.")
        parser.add_argument(
            "path", help="Path under the key's API URL, e.g. chat/completions."
        )
        parser.add_argument(
            "--json", dest="body", help="Request body as a JSON document."
        )

    def handle(self, *args, **options) -> None:
        body = parse_body(options["body"])
        try:
            response = services.request(
                options["vendor"], options["method"].upper(), options["path"], json=body
            )
        except Vendor.DoesNotExist as error:
            raise CommandError(f"{error} List vendors on the pool page.") from None
        except ValueError as error:
            raise CommandError(str(error)) from None
        except ImproperlyConfigured as error:
            # Includes DecryptionError for a wrong KEYPOOL_ENCRYPTION_KEYS;
            # its message names the setting and the fix.
            raise CommandError(str(error)) from None
        except services.NoUsableKey as error:
            self.print_attempts(error.attempts)
            raise CommandError(str(error)) from None
        self.print_attempts(response.pool_attempts[:-1])
        self.stdout.write(f"Status: {response.status_code}")
        self.stdout.write(f"Served by key: {response.pool_key}")
        self.stdout.write(response.text[:BODY_PREVIEW_LENGTH])

    def print_attempts(self, attempts: list[services.Attempt]) -> None:
        for attempt in attempts:
            self.stdout.write(f"Failover: {attempt}")


def parse_body(text: str | None) -> object:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as error:
        raise CommandError(f"--json is not valid JSON: {error}.") from None
