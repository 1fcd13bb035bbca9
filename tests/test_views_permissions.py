"""Which pool permission each action route of the pool page needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from pool.models import ApiKey, Vendor
from tests.conftest import fake_secret
from tests.fixtures.browser import ALL_POOL_PERMISSIONS, make_staff_user


@dataclass(frozen=True)
class Route:
    label: str
    method: str
    url_name: str
    # What the URL names: "key" is the vendor's second key, "vendor" the
    # vendor with two keys, "bare_vendor" a vendor without keys, and "" none.
    target: str
    needs: tuple[str, ...]
    data: Callable[[list[ApiKey]], dict] = lambda keys: {}


def settings_data(name: str, protocol: str, base_url: str) -> dict:
    return {
        "name": name,
        "base_url": base_url,
        "protocol": protocol,
        "secret": fake_secret("settings"),
        "api_url": "",
        "expires_at": "",
        "api_version": "",
        "organization": "",
        "project": "",
        "headers": "",
    }


EDIT_DATA = {
    "name": "renamed",
    "secret": "",
    "api_url": "",
    "organization": "",
    "project": "",
    "headers": "",
    "expires_at": "",
}

ROUTES = [
    Route("add-key-get", "get", "add_key", "vendor", ("add_apikey",)),
    Route(
        "add-key-post",
        "post",
        "add_key",
        "vendor",
        ("add_apikey",),
        lambda keys: {"name": "added", "secret": fake_secret("added")},
    ),
    Route("edit-get", "get", "edit_key", "key", ("change_apikey",)),
    Route(
        "edit-post",
        "post",
        "edit_key",
        "key",
        ("change_apikey",),
        lambda keys: EDIT_DATA,
    ),
    Route("enable", "post", "enable_key", "key", ("change_apikey",)),
    Route("disable", "post", "disable_key", "key", ("change_apikey",)),
    Route(
        "move",
        "post",
        "move_key",
        "key",
        ("change_apikey",),
        lambda keys: {"direction": "up"},
    ),
    Route(
        "reorder",
        "post",
        "reorder",
        "vendor",
        ("change_apikey",),
        lambda keys: {"order": [key.pk for key in reversed(keys)]},
    ),
    Route("delete", "post", "delete_key", "key", ("delete_apikey",)),
    Route("test", "post", "test_key", "key", ("change_apikey",)),
    Route(
        "settings-get",
        "get",
        "vendor_settings",
        "vendor",
        ("change_vendor", "change_apikey"),
    ),
    Route(
        "settings-post",
        "post",
        "vendor_settings",
        "vendor",
        ("change_vendor", "change_apikey"),
        lambda keys: settings_data("Renamed", "openai", "http://127.0.0.1:9/v1"),
    ),
    # Saving the settings of a vendor without keys adds its default key.
    Route(
        "settings-post-adding-default-key",
        "post",
        "vendor_settings",
        "bare_vendor",
        ("change_vendor", "change_apikey", "add_apikey"),
        lambda keys: settings_data(
            "Renamed", "anthropic", "http://127.0.0.1:9/anthropic/v1"
        ),
    ),
    Route("add-vendor-get", "get", "add_vendor", "", ("add_vendor", "add_apikey")),
    Route(
        "add-vendor-post",
        "post",
        "add_vendor",
        "",
        ("add_vendor", "add_apikey"),
        lambda keys: {"preset": "deepseek", "secret": fake_secret("vendor")},
    ),
]

# One case per permission a route needs: the user has every other one.
DENIED = [
    pytest.param(route, missing, id=f"{route.label}-without-{missing}")
    for route in ROUTES
    for missing in route.needs
]


@pytest.fixture
def keys(vendor, make_key) -> list[ApiKey]:
    return [make_key(vendor), make_key(vendor)]


def route_url(route: Route, keys: list[ApiKey], bare_vendor: Vendor) -> str:
    vendor = keys[0].vendor
    if route.target == "key":
        kwargs = {"vendor": vendor.slug, "key_id": keys[1].pk}
    elif route.target == "vendor":
        kwargs = {"vendor": vendor.slug}
    elif route.target == "bare_vendor":
        kwargs = {"vendor": bare_vendor.slug}
    else:
        kwargs = {}
    return reverse(f"pool:{route.url_name}", kwargs=kwargs)


def request_route(client, route: Route, keys: list[ApiKey], bare_vendor: Vendor):
    url = route_url(route, keys, bare_vendor)
    return getattr(client, route.method)(url, route.data(keys))


def snapshot() -> list:
    """Return every stored row that an action route may change."""
    return [
        *ApiKey.objects.order_by("pk").values(),
        *Vendor.objects.order_by("pk").values(),
        LogEntry.objects.count(),
    ]


class TestPermissionMatrix:
    @pytest.mark.parametrize("route", ROUTES, ids=[route.label for route in ROUTES])
    def test_needed_permission_allowed(self, client, keys, other_vendor, route):
        user = make_staff_user("allowed", ("view_apikey", *route.needs))
        client.force_login(user)

        response = request_route(client, route, keys, other_vendor)

        assert 200 <= response.status_code < 400

    @pytest.mark.parametrize(("route", "missing"), DENIED)
    def test_missing_permission_forbidden(
        self, client, keys, other_vendor, route, missing
    ):
        permissions = tuple(set(ALL_POOL_PERMISSIONS) - {missing})
        client.force_login(make_staff_user("denied", permissions))
        before = snapshot()

        response = request_route(client, route, keys, other_vendor)

        assert response.status_code == 403
        assert snapshot() == before
