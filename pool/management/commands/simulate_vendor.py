"""Run the vendor simulator on 127.0.0.1 until stopped."""

from __future__ import annotations

import signal

from django.core.management.base import BaseCommand, CommandError

from pool.simulator import VendorSimulator

DEFAULT_PORT = 8900


class Command(BaseCommand):
    help = (
        "Serve fake OpenAI, Anthropic, Azure and Gemini APIs on 127.0.0.1 for "
        "the demo and for trying failover. The behaviour of each key is "
        "encoded in its secret, e.g. sk-sim-quota3-... succeeds three times; "
        "see pool/simulator.py."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--port",
            type=int,
            default=DEFAULT_PORT,
            help=f"TCP port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one).",
        )

    def handle(self, *args, **options) -> None:
        try:
            server = VendorSimulator(options["port"])
        except OSError as error:
            raise CommandError(
                f"Cannot listen on 127.0.0.1:{options['port']}: {error.strerror}. "
                "Stop the other process or pass another --port."
            ) from None
        # SIGTERM (as sent by `make run` on exit) stops the server like Ctrl+C.
        signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
        self.stdout.write(f"Vendor simulator listening on {server.url()}/", ending="\n")
        self.stdout.flush()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        self.stdout.write("Vendor simulator stopped.")


def raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
