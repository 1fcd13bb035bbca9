"""Tests of keypool.settings, each in a fresh process on a copy of the project.

A copy in ``tmp_path`` has no ``.dev-secrets.json`` and no database, like a
fresh clone, so the real development secrets are never read or reused.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings

PROJECT_DIR = Path(settings.BASE_DIR)
COPIED = ["manage.py", "keypool", "pool", "templates", "static"]


@pytest.fixture
def project(tmp_path) -> Path:
    """Return a copy of the project's code, without secrets or databases."""
    copy = tmp_path / "project"
    copy.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        source = PROJECT_DIR / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=ignore)
        else:
            shutil.copy2(source, copy / name)
    return copy


def run_python(
    project: Path, code: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``code`` in the project copy with only PATH and ``env`` set."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=project,
        env={"PATH": os.environ["PATH"], **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_manage(
    project: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env={"PATH": os.environ["PATH"], **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def production_env() -> dict[str, str]:
    return {
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "keypool.example.com",
        "KEYPOOL_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    }


PRINT_SETTINGS = """
    import json
    import keypool.settings as s
    print(json.dumps({
        "DEBUG": s.DEBUG,
        "SECRET_KEY": s.SECRET_KEY,
        "KEYPOOL_ENCRYPTION_KEYS": s.KEYPOOL_ENCRYPTION_KEYS,
        "DATABASE": {
            "ENGINE": s.DATABASES["default"]["ENGINE"],
            "NAME": str(s.DATABASES["default"]["NAME"]),
            "OPTIONS": s.DATABASES["default"].get("OPTIONS", {}),
        },
    }))
"""


class TestEmptyEnvironment:
    def test_settings_import_with_empty_environment(self, project):
        result = run_python(project, PRINT_SETTINGS)

        assert result.returncode == 0, result.stderr
        values = json.loads(result.stdout)
        assert values["DEBUG"] is True
        assert len(values["SECRET_KEY"]) >= 50
        assert len(values["KEYPOOL_ENCRYPTION_KEYS"]) == 1

    def test_dev_secrets_generated_private(self, project):
        run_python(project, PRINT_SETTINGS)

        secrets_file = project / ".dev-secrets.json"
        assert secrets_file.exists()
        assert secrets_file.stat().st_mode & 0o777 == 0o600
        stored = json.loads(secrets_file.read_text())
        Fernet(stored["KEYPOOL_ENCRYPTION_KEYS"])

    def test_dev_secrets_reused(self, project):
        first = json.loads(run_python(project, PRINT_SETTINGS).stdout)
        second = json.loads(run_python(project, PRINT_SETTINGS).stdout)

        assert second["SECRET_KEY"] == first["SECRET_KEY"]
        assert second["KEYPOOL_ENCRYPTION_KEYS"] == first["KEYPOOL_ENCRYPTION_KEYS"]

    def test_dev_secrets_not_the_real_ones(self, project):
        values = json.loads(run_python(project, PRINT_SETTINGS).stdout)

        assert values["SECRET_KEY"] != settings.SECRET_KEY

    def test_default_database_sqlite_in_project(self, project):
        values = json.loads(run_python(project, PRINT_SETTINGS).stdout)

        database = values["DATABASE"]
        assert database["ENGINE"] == "django.db.backends.sqlite3"
        assert database["NAME"] == str(project / "db.sqlite3")

    def test_sqlite_waits_for_writers(self, project):
        values = json.loads(run_python(project, PRINT_SETTINGS).stdout)

        options = values["DATABASE"]["OPTIONS"]
        assert options["transaction_mode"] == "IMMEDIATE"
        assert options["timeout"] >= 5

    def test_manage_check_with_empty_environment(self, project):
        result = run_manage(project, "check")

        assert result.returncode == 0, result.stderr
        assert "no issues" in result.stdout


class TestProduction:
    @pytest.mark.parametrize("name", ["SECRET_KEY", "KEYPOOL_ENCRYPTION_KEYS"])
    def test_missing_secret_stops_start(self, project, name):
        env = production_env()
        del env[name]

        result = run_python(project, PRINT_SETTINGS, env)

        assert result.returncode != 0
        assert f"The {name} environment variable is missing" in result.stderr
        assert not (project / ".dev-secrets.json").exists()

    def test_blank_secret_stops_start(self, project):
        env = {**production_env(), "SECRET_KEY": "  "}

        result = run_python(project, PRINT_SETTINGS, env)

        assert "The SECRET_KEY environment variable is missing" in result.stderr

    def test_empty_key_list_stops_start(self, project):
        env = {**production_env(), "KEYPOOL_ENCRYPTION_KEYS": " , "}

        result = run_python(project, PRINT_SETTINGS, env)

        assert result.returncode != 0
        assert "KEYPOOL_ENCRYPTION_KEYS environment variable lists no key" in (
            result.stderr
        )

    @pytest.mark.parametrize("name", ["CONN_MAX_AGE", "SECURE_HSTS_SECONDS"])
    def test_invalid_number_named(self, project, name):
        env = {**production_env(), name: "abc"}

        result = run_python(project, PRINT_SETTINGS, env)

        assert result.returncode != 0
        assert f"{name}='abc' is invalid: use a whole number" in result.stderr

    def test_invalid_debug_value_named(self, project):
        result = run_python(project, PRINT_SETTINGS, {"DEBUG": "maybe"})

        assert result.returncode != 0
        assert "DEBUG='maybe' is not a boolean" in result.stderr

    def test_environment_values_used(self, project):
        env = production_env()

        values = json.loads(run_python(project, PRINT_SETTINGS, env).stdout)

        assert values["DEBUG"] is False
        assert values["SECRET_KEY"] == env["SECRET_KEY"]
        assert values["KEYPOOL_ENCRYPTION_KEYS"] == [env["KEYPOOL_ENCRYPTION_KEYS"]]

    def test_encryption_key_list_split(self, project):
        keys = [Fernet.generate_key().decode() for _ in range(2)]
        env = production_env()
        env["KEYPOOL_ENCRYPTION_KEYS"] = f" {keys[0]} ,{keys[1]},"

        values = json.loads(run_python(project, PRINT_SETTINGS, env).stdout)

        assert values["KEYPOOL_ENCRYPTION_KEYS"] == keys

    def test_check_deploy_clean(self, project):
        env = production_env()

        result = run_manage(
            project, "check", "--deploy", "--fail-level", "WARNING", env=env
        )

        assert result.returncode == 0, result.stderr
        assert "System check identified no issues" in result.stdout
        assert result.stderr == ""

    def test_invalid_encryption_key_fails_check(self, project):
        bad_key = "not-a-fernet-key-but-secret-looking-value"
        env = {**production_env(), "KEYPOOL_ENCRYPTION_KEYS": bad_key}

        result = run_manage(project, "check", env=env)

        assert result.returncode != 0
        assert "KEYPOOL_ENCRYPTION_KEYS item 1 is not a valid" in result.stderr
        assert bad_key not in result.stderr

    def test_database_url_selects_database(self, project, tmp_path):
        env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'other.sqlite3'}"}

        values = json.loads(run_python(project, PRINT_SETTINGS, env).stdout)

        assert values["DATABASE"]["NAME"] == str(tmp_path / "other.sqlite3")


# Two threads add keys to one vendor at the same time, each in transactions
# that read before they write. With SQLite's default deferred transactions
# the second writer fails at once with "database is locked". With IMMEDIATE
# and a busy timeout it waits for the lock.
CONCURRENT_WRITERS = """
    import json
    import threading

    import django

    django.setup()

    from django.core.management import call_command
    from django.db import connections, transaction

    call_command("migrate", verbosity=0)

    from pool.models import ApiKey, Vendor

    vendor = Vendor.objects.create(
        slug="openai", name="OpenAI", base_url="http://127.0.0.1:9/v1"
    )
    connections.close_all()
    errors = []
    start = threading.Barrier(2)

    def add_keys(label):
        try:
            start.wait()
            for number in range(30):
                with transaction.atomic():
                    ApiKey.objects.filter(vendor=vendor).count()
                    ApiKey.objects.create(
                        vendor=vendor,
                        name=f"{label}{number}",
                        secret=f"sk-test-fake-{label}-{number:06d}",
                    )
        except Exception as error:
            errors.append(f"{type(error).__name__}: {error}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=add_keys, args=(label,)) for label in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    orders = sorted(ApiKey.objects.values_list("order", flat=True))
    defaults = ApiKey.objects.filter(is_default=True).count()
    print(json.dumps({"errors": errors, "orders": orders, "defaults": defaults}))
"""


class TestSqliteConcurrency:
    def test_concurrent_writers_not_locked(self, project, tmp_path):
        env = {
            "DJANGO_SETTINGS_MODULE": "keypool.settings",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'writers.sqlite3'}",
        }

        result = run_python(project, CONCURRENT_WRITERS, env)

        assert result.returncode == 0, result.stderr
        outcome = json.loads(result.stdout)
        assert outcome["errors"] == []
        assert outcome["orders"] == list(range(60))
        assert outcome["defaults"] == 1
