"""Fixtures shared by the whole suite.

Fixtures that belong to one area live in ``tests/fixtures/`` and are loaded
here as plugins, so each area can grow its own without editing this file.
"""

from __future__ import annotations

import itertools

import pytest
from django.urls import reverse

from pool.models import ApiKey, Vendor

pytest_plugins = [
    "tests.fixtures.simulator",
    "tests.fixtures.browser",
]

_fake_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix, tmp_path_factory
) -> None:
    """Keep the SQLite test database in a file of this session.

    Threads that share an in-memory database lock whole tables, and such a
    lock fails at once instead of waiting for the busy timeout, so tests of
    concurrent callers need a file. PostgreSQL is left as configured.
    """
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        path = tmp_path_factory.mktemp("database") / "test.sqlite3"
        database.setdefault("TEST", {})["NAME"] = str(path)


def fake_secret(label: str = "ok") -> str:
    """Return an obviously fake secret, unique within the test run."""
    return f"sk-test-fake-{label}-{next(_fake_numbers):06d}"


@pytest.fixture
def vendor(db) -> Vendor:
    return Vendor.objects.create(
        slug="openai",
        name="OpenAI",
        protocol=Vendor.Protocol.OPENAI,
        base_url="http://127.0.0.1:9/v1",
    )


@pytest.fixture
def other_vendor(db) -> Vendor:
    return Vendor.objects.create(
        slug="anthropic",
        name="Anthropic",
        protocol=Vendor.Protocol.ANTHROPIC,
        base_url="http://127.0.0.1:9/anthropic/v1",
    )


@pytest.fixture
def azure(db) -> Vendor:
    return Vendor.objects.create(
        slug="azure",
        name="Azure OpenAI",
        protocol=Vendor.Protocol.AZURE,
        base_url="http://127.0.0.1:9/azure",
    )


@pytest.fixture
def add_url(vendor) -> str:
    return reverse("pool:add_key", kwargs={"vendor": vendor.slug})


@pytest.fixture
def make_key(db):
    """Create a key for a vendor; the name defaults to the suggested ``keyN``."""

    def make(vendor: Vendor, **fields) -> ApiKey:
        fields.setdefault("name", ApiKey.objects.suggest_name(vendor))
        fields.setdefault("secret", fake_secret())
        return ApiKey.objects.create(vendor=vendor, **fields)

    return make
