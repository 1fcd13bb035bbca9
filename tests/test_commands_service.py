"""The management commands pool_call, load_demo and simulate_vendor."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from pool.models import ApiKey, Vendor
from pool.services import request

MANAGE_PY = Path(__file__).resolve().parent.parent / "manage.py"


def run(*args: str) -> str:
    output = StringIO()
    call_command(*args, stdout=output)
    return output.getvalue()


# pool_call --------------------------------------------------------------------


def test_pool_call_prints_status_key_and_failovers(sim_vendor, make_key):
    vendor = sim_vendor("openai")
    make_key(vendor, name="empty", secret="sk-sim-quota0-cmd1")
    make_key(vendor, name="spare", secret="sk-sim-ok-cmd2")

    output = run(
        "pool_call", vendor.slug, "post", "chat/completions", "--json", '{"a": 1}'
    )

    assert "Failover: empty: exceeded (429)" in output
    assert "Status: 200" in output
    assert "Served by key: spare" in output
    assert "sk-sim-quota0-cmd1" not in output


def test_pool_call_invalid_json_rejected(sim_vendor):
    sim_vendor("openai")

    with pytest.raises(CommandError, match="--json is not valid JSON"):
        run("pool_call", "sim-openai", "POST", "chat/completions", "--json", "{oops")


def test_pool_call_unknown_vendor_rejected(db):
    with pytest.raises(CommandError, match="No vendor has the slug 'nope'"):
        run("pool_call", "nope", "GET", "models")


def test_pool_call_no_usable_key_lists_attempts(sim_vendor, make_key):
    vendor = sim_vendor("openai")
    make_key(vendor, name="only", secret="sk-sim-invalid-cmd3")

    with pytest.raises(CommandError, match="No usable key for vendor") as raised:
        run("pool_call", vendor.slug, "GET", "models")

    assert "only: invalid (401)" in str(raised.value)
    assert "sk-sim-invalid-cmd3" not in str(raised.value)


def test_pool_call_wrong_encryption_keys_rejected(sim_vendor, make_key, settings):
    vendor = sim_vendor("openai")
    make_key(vendor, secret="sk-sim-ok-cmd4")
    settings.KEYPOOL_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    with pytest.raises(CommandError, match="KEYPOOL_ENCRYPTION_KEYS") as raised:
        run("pool_call", vendor.slug, "GET", "models")

    assert "cannot be decrypted" in str(raised.value)


def test_pool_call_empty_encryption_keys_rejected(sim_vendor, make_key, settings):
    vendor = sim_vendor("openai")
    make_key(vendor, secret="sk-sim-ok-cmd5")
    settings.KEYPOOL_ENCRYPTION_KEYS = []

    with pytest.raises(CommandError, match="KEYPOOL_ENCRYPTION_KEYS is empty"):
        run("pool_call", vendor.slug, "GET", "models")


def test_pool_call_absolute_url_rejected(sim_vendor):
    sim_vendor("openai")

    with pytest.raises(CommandError, match="is an absolute URL"):
        run("pool_call", "sim-openai", "GET", "http://127.0.0.1:9/models")


# load_demo --------------------------------------------------------------------


@pytest.fixture
def secrets_file(tmp_path, settings) -> Path:
    path = tmp_path / "dev-secrets.json"
    path.write_text(json.dumps({"SECRET_KEY": "unchanged"}))
    settings.DEV_SECRETS_FILE = path
    return path


def test_load_demo_creates_vendors_and_admin(db, secrets_file):
    output = run("load_demo", "--simulator-port", "8901")

    stored = json.loads(secrets_file.read_text())
    admin = get_user_model().objects.get(username="admin")
    assert Vendor.objects.count() == 4
    assert ApiKey.objects.count() == 12
    assert Vendor.objects.get(slug="openai").base_url == "http://127.0.0.1:8901/v1"
    assert stored["SECRET_KEY"] == "unchanged"
    assert admin.is_superuser
    assert admin.check_password(stored["ADMIN_PASSWORD"])
    assert "http://127.0.0.1:8000/pool/" in output
    assert stored["ADMIN_PASSWORD"] in output


def test_load_demo_keys_show_each_status(db, secrets_file):
    run("load_demo")

    statuses = {key.status for key in ApiKey.objects.all()}
    assert statuses == {
        ApiKey.Status.NORMAL,
        ApiKey.Status.DISABLED,
        ApiKey.Status.EXPIRED,
        ApiKey.Status.EXCEEDED,
    }


def test_load_demo_twice_adds_nothing(db, secrets_file):
    run("load_demo")
    password = json.loads(secrets_file.read_text())["ADMIN_PASSWORD"]

    output = run("load_demo")

    assert "already has vendors" in output
    assert Vendor.objects.count() == 4
    assert ApiKey.objects.count() == 12
    assert get_user_model().objects.count() == 1
    assert json.loads(secrets_file.read_text())["ADMIN_PASSWORD"] == password


def test_load_demo_keeps_existing_admin_password(db, secrets_file):
    get_user_model().objects.create_superuser("admin", "", "chosen-by-owner-1")

    output = run("load_demo")

    assert "already exists with another password" in output
    assert (
        get_user_model()
        .objects.get(username="admin")
        .check_password("chosen-by-owner-1")
    )


def test_load_demo_fails_over_against_simulator(db, secrets_file, simulator):
    run("load_demo", "--simulator-port", str(simulator.port))

    served = [
        request("openai", "POST", "chat/completions", json={}).pool_key
        for _ in range(4)
    ]

    assert served == ["trial (3 calls)"] * 3 + ["expires soon"]
    assert ApiKey.objects.get(name="trial (3 calls)").status == ApiKey.Status.EXCEEDED
    assert ApiKey.objects.get(name="rate limited").status == ApiKey.Status.RATE_LIMITED


# simulate_vendor --------------------------------------------------------------


def test_simulate_vendor_serves_until_terminated():
    process = subprocess.Popen(
        [sys.executable, str(MANAGE_PY), "simulate_vendor", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = process.stdout.readline()
        url = first_line.split(" on ")[1].strip()
        response = requests.get(
            f"{url}v1/models",
            headers={"Authorization": "Bearer sk-sim-ok-cmd4"},
            timeout=5,
        )
        process.send_signal(signal.SIGTERM)
        remaining_output, errors = process.communicate(timeout=10)
    finally:
        process.kill()

    assert first_line.startswith("Vendor simulator listening on http://127.0.0.1:")
    assert response.json()["data"][0]["id"] == "sim-model"
    assert process.returncode == 0
    assert "Vendor simulator stopped." in remaining_output


def test_simulate_vendor_busy_port_rejected(simulator):
    result = subprocess.run(
        [
            sys.executable,
            str(MANAGE_PY),
            "simulate_vendor",
            "--port",
            str(simulator.port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 1
    assert f"Cannot listen on 127.0.0.1:{simulator.port}" in result.stderr
