"""Measure what the pool adds to a request, against the vendor simulator.

Run from the project root:

    .venv/bin/python scripts/benchmark.py [--calls 2000]

It uses a fresh SQLite database in a temporary directory, or the database
in DATABASE_URL when --use-database-url is given. The simulator listens on
an ephemeral 127.0.0.1 port. The output is a Markdown table for
docs/benchmarks.md, with the hardware it ran on.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--calls", type=int, default=2000, help="Calls per measurement."
    )
    parser.add_argument(
        "--use-database-url",
        action="store_true",
        help="Use DATABASE_URL instead of a temporary SQLite file. Its tables "
        "are migrated and a vendor 'bench-*' is added and removed.",
    )
    options = parser.parse_args()
    workdir = tempfile.TemporaryDirectory(prefix="keypool-bench-")
    if not options.use_database_url:
        os.environ["DATABASE_URL"] = f"sqlite:///{workdir.name}/bench.sqlite3"
    setup_django()
    try:
        run(options.calls)
    finally:
        workdir.cleanup()


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "keypool.settings")
    os.environ.setdefault("POOL_LOG_LEVEL", "ERROR")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def run(calls: int) -> None:
    import requests
    from django.db import connection

    from pool import services
    from pool.models import ApiKey, Vendor
    from pool.simulator import VendorSimulator

    simulator = VendorSimulator().start()
    vendor = Vendor.objects.create(
        slug=f"bench-{os.getpid()}", name="Benchmark", base_url=simulator.url("v1")
    )
    try:
        ok = ApiKey.objects.create(vendor=vendor, name="ok", secret="sk-sim-ok-bench-1")
        session = requests.Session()
        headers = {"Authorization": f"Bearer {ok.secret}"}
        url = simulator.url("v1/chat/completions")

        raw = http.client.HTTPConnection("127.0.0.1", simulator.port)
        raw_headers = headers | {"Content-Type": "application/json"}

        def raw_call() -> None:
            raw.request("POST", "/v1/chat/completions", body=b"{}", headers=raw_headers)
            raw.getresponse().read()

        rows = [
            (
                "simulator alone (http.client, kept-alive connection)",
                measure(calls, raw_call),
            ),
            (
                "direct to the simulator (requests.Session)",
                measure(calls, lambda: session.post(url, json={}, headers=headers)),
            ),
            (
                "request() through the pool, first key serves",
                measure(
                    calls,
                    lambda: services.request(
                        vendor, "POST", "chat/completions", json={}
                    ),
                ),
            ),
            (
                "ApiKey.objects.usable(vendor) query alone",
                measure(calls, lambda: list(ApiKey.objects.usable(vendor))),
            ),
        ]
        # A transient key first: every call tries it, fails over and is served
        # by the second key, without marking anything.
        failing = ApiKey.objects.create(
            vendor=vendor, name="down", secret="sk-sim-error503-bench"
        )
        ApiKey.objects.reorder(vendor, [failing.pk, ok.pk])
        rows.append(
            (
                "request() with one failover (503 first, then success)",
                measure(
                    calls,
                    lambda: services.request(
                        vendor, "POST", "chat/completions", json={}
                    ),
                ),
            )
        )
        services.flush_usage()
        print_report(calls, rows, connection.vendor)
    finally:
        vendor.delete()
        simulator.stop()


def measure(calls: int, action: Callable[[], object]) -> list[float]:
    for _ in range(min(50, calls)):
        action()
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return timings


def print_report(
    calls: int, rows: list[tuple[str, list[float]]], database: str
) -> None:
    print(
        f"Hardware: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, database {database}"
    )
    print(f"Command: .venv/bin/python scripts/benchmark.py --calls {calls}\n")
    print("| measurement | median µs | p95 µs |")
    print("|---|---:|---:|")
    for label, timings in rows:
        timings = sorted(timings)
        median = statistics.median(timings) * 1e6
        p95 = timings[int(len(timings) * 0.95)] * 1e6
        print(f"| {label} | {median:.0f} | {p95:.0f} |")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
