"""Enable, disable and delete on the pool page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.urls import reverse
from django.utils import timezone

from pool.models import ApiKey

HTMX = {"HTTP_HX_REQUEST": "true"}


def action_url(action: str, key: ApiKey) -> str:
    return reverse(
        f"pool:{action}_key", kwargs={"vendor": key.vendor.slug, "key_id": key.pk}
    )


@pytest.fixture
def default_key(vendor, make_key) -> ApiKey:
    return make_key(vendor)


@pytest.fixture
def key(vendor, default_key, make_key) -> ApiKey:
    return make_key(vendor)


class TestDisable:
    def test_htmx_returns_table_with_disabled_badge(self, operator_client, key):
        response = operator_client.post(action_url("disable", key), **HTMX)

        assert response.status_code == 200
        key.refresh_from_db()
        assert not key.is_enabled
        html = response.content.decode()
        assert ">Disabled</span>" in html
        assert 'aria-checked="false"' in html
        assert "key2 is disabled." in html

    def test_without_htmx_redirects_with_message(self, operator_client, key):
        response = operator_client.post(action_url("disable", key), follow=True)

        assert response.redirect_chain[-1][1] == 302
        assert "key2 is disabled." in response.content.decode()

    def test_recorded_in_audit_log(self, operator_client, operator, key):
        operator_client.post(action_url("disable", key), **HTMX)

        entry = LogEntry.objects.get()

        assert entry.user == operator
        assert entry.object_id == str(key.pk)
        assert entry.change_message == "Disabled."

    def test_unknown_key_not_found(self, operator_client, vendor):
        url = reverse("pool:disable_key", kwargs={"vendor": vendor.slug, "key_id": 999})

        response = operator_client.post(url, **HTMX)

        assert response.status_code == 404


class TestEnable:
    def test_clears_automatic_status(self, operator_client, key):
        key.mark(ApiKey.Status.INVALID, "rejected", observed_at=timezone.now())
        key.disable()

        response = operator_client.post(action_url("enable", key), **HTMX)

        assert response.status_code == 200
        key.refresh_from_db()
        assert key.is_enabled
        assert not key.is_invalid
        assert key.status == ApiKey.Status.NORMAL

    def test_without_htmx_redirects_with_message(self, operator_client, key):
        key.disable()

        response = operator_client.post(action_url("enable", key))

        assert response.status_code == 302
        assert response["Location"] == reverse("pool:vendor", args=[key.vendor.slug])
        key.refresh_from_db()
        assert key.is_enabled
        page = operator_client.get(response["Location"]).content.decode()
        assert "key2 is enabled." in page

    @pytest.mark.parametrize("htmx", [True, False])
    def test_expired_key_answers_409(self, operator_client, key, htmx):
        ApiKey.objects.filter(pk=key.pk).update(
            is_enabled=False, expires_at=timezone.now() - timedelta(hours=1)
        )

        response = operator_client.post(
            action_url("enable", key), **(HTMX if htmx else {})
        )

        assert response.status_code == 409
        key.refresh_from_db()
        assert not key.is_enabled
        assert "has expired" in response.content.decode()
        assert not LogEntry.objects.exists()


class TestDelete:
    @pytest.mark.parametrize("htmx", [True, False])
    def test_deletes_and_renumbers(self, operator_client, vendor, key, make_key, htmx):
        last = make_key(vendor)

        response = operator_client.post(
            action_url("delete", key), **(HTMX if htmx else {})
        )

        assert response.status_code == (200 if htmx else 302)
        assert not ApiKey.objects.filter(pk=key.pk).exists()
        last.refresh_from_db()
        assert last.order == 1

    def test_recorded_in_audit_log(self, operator_client, key):
        operator_client.post(action_url("delete", key), **HTMX)

        entry = LogEntry.objects.get()

        assert entry.action_flag == DELETION
        assert entry.object_id == str(key.pk)
        assert entry.object_repr == "key2"

    @pytest.mark.parametrize("htmx", [True, False])
    def test_default_key_answers_409(self, operator_client, default_key, key, htmx):
        response = operator_client.post(
            action_url("delete", default_key), **(HTMX if htmx else {})
        )

        assert response.status_code == 409
        assert ApiKey.objects.filter(pk=default_key.pk).exists()
        assert "is the default key" in response.content.decode()
        assert not LogEntry.objects.exists()

    def test_without_delete_permission_forbidden(self, client, key, django_user_model):
        from tests.fixtures.browser import make_staff_user

        user = make_staff_user("editor", ("view_apikey", "change_apikey"))
        client.force_login(user)

        response = client.post(action_url("delete", key), **HTMX)

        assert response.status_code == 403
        assert ApiKey.objects.filter(pk=key.pk).exists()
