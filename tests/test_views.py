"""The pool page: index, vendor page, permissions, history and query count."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from pool.models import ApiKey, Vendor
from tests.conftest import fake_secret

HTMX = {"HTTP_HX_REQUEST": "true"}


def page_url(vendor: Vendor) -> str:
    return reverse("pool:vendor", kwargs={"vendor": vendor.slug})


class TestAccess:
    def test_anonymous_redirected_to_admin_login(self, client, vendor):
        response = client.get(page_url(vendor))

        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))

    def test_non_staff_redirected_to_admin_login(
        self, client, vendor, django_user_model
    ):
        user = django_user_model.objects.create_user("plain", password="x")
        client.force_login(user)

        response = client.get(page_url(vendor))

        assert response.status_code == 302

    def test_staff_without_view_permission_forbidden(
        self, client, vendor, django_user_model
    ):
        user = django_user_model.objects.create_user(
            "staff", password="x", is_staff=True
        )
        client.force_login(user)

        response = client.get(page_url(vendor))

        assert response.status_code == 403

    def test_viewer_page_is_read_only(self, viewer_client, vendor, make_key):
        make_key(vendor)
        make_key(vendor)

        html = viewer_client.get(page_url(vendor)).content.decode()

        assert "key2" in html
        assert "Drag to reorder" not in html
        assert 'role="switch"' not in html
        assert "Move key1 down" not in html
        assert "Edit<" not in html
        assert "Delete<" not in html
        assert "Add key" not in html
        assert "Vendor settings" not in html

    @pytest.mark.parametrize(
        ("name", "data"),
        [
            ("reorder", {"order": ["1"]}),
            ("move_key", {"direction": "up"}),
            ("enable_key", {}),
            ("disable_key", {}),
            ("delete_key", {}),
            ("edit_key", {"name": "renamed"}),
            ("add_key", {"name": "key9", "secret": "sk-test-fake-viewer"}),
            ("vendor_settings", {"name": "Renamed"}),
        ],
    )
    def test_viewer_post_forbidden(self, viewer_client, vendor, make_key, name, data):
        make_key(vendor)
        key = make_key(vendor, name="second")
        kwargs = {"vendor": vendor.slug}
        if name.endswith("_key") and name != "add_key":
            kwargs["key_id"] = key.pk

        response = viewer_client.post(reverse(f"pool:{name}", kwargs=kwargs), data)

        assert response.status_code == 403
        key.refresh_from_db()
        assert key.name == "second"
        assert key.is_enabled
        assert ApiKey.objects.count() == 2
        assert Vendor.objects.get().name == "OpenAI"

    def test_viewer_add_vendor_forbidden(self, viewer_client):
        response = viewer_client.post(
            reverse("pool:add_vendor"), {"preset": "openai", "secret": fake_secret()}
        )

        assert response.status_code == 403
        assert not Vendor.objects.exists()

    def test_post_without_csrf_token_rejected(self, operator, vendor, make_key):
        from django.test import Client

        client = Client(enforce_csrf_checks=True)
        client.force_login(operator)
        key = make_key(vendor)
        url = reverse(
            "pool:disable_key", kwargs={"vendor": vendor.slug, "key_id": key.pk}
        )

        response = client.post(url, **HTMX)

        assert response.status_code == 403
        key.refresh_from_db()
        assert key.is_enabled

    def test_get_on_action_not_allowed(self, operator_client, vendor, make_key):
        key = make_key(vendor)
        url = reverse(
            "pool:disable_key", kwargs={"vendor": vendor.slug, "key_id": key.pk}
        )

        response = operator_client.get(url)

        assert response.status_code == 405
        key.refresh_from_db()
        assert key.is_enabled


class TestIndex:
    def test_opens_first_vendor(self, operator_client, vendor, other_vendor, make_key):
        make_key(other_vendor, name="first-of-anthropic")

        response = operator_client.get(reverse("pool:index"))

        assert response.status_code == 200
        assert response.context["vendor"] == other_vendor
        assert "first-of-anthropic" in response.content.decode()

    def test_lists_vendors_with_key_counts(self, operator_client, vendor, make_key):
        make_key(vendor)
        make_key(vendor)

        html = operator_client.get(reverse("pool:index")).content.decode()

        assert "2 keys" in html

    def test_warns_about_vendor_without_usable_key(
        self, operator_client, vendor, other_vendor, make_key
    ):
        make_key(vendor)
        make_key(other_vendor, is_enabled=False)

        response = operator_client.get(reverse("pool:index"))
        vendors = {item.slug: item for item in response.context["vendors"]}

        assert vendors["openai"].usable_key_count == 1
        assert vendors["anthropic"].usable_key_count == 0
        assert response.content.decode().count("No usable key") == 1

    def test_without_vendors_offers_add_vendor(self, operator_client):
        html = operator_client.get(reverse("pool:index")).content.decode()

        assert "There are no vendors yet" in html
        assert reverse("pool:add_vendor") in html

    def test_root_redirects_to_index(self, operator_client):
        response = operator_client.get("/")

        assert response.status_code == 302
        assert response["Location"] == reverse("pool:index")


class TestVendorPage:
    def test_unknown_vendor_not_found(self, operator_client):
        response = operator_client.get("/pool/no-such-vendor/")

        assert response.status_code == 404

    def test_extends_admin_base(self, operator_client, vendor):
        html = operator_client.get(page_url(vendor)).content.decode()

        assert 'id="header"' in html
        assert "admin/css/base.css" in html
        assert "admin/css/dark_mode.css" in html
        assert "vendor/htmx/htmx.min.js" in html
        assert "vendor/sortablejs/Sortable.min.js" in html
        assert 'name="htmx-config"' in html

    def test_rows_in_priority_order(self, operator_client, vendor, make_key):
        first, second, third = (make_key(vendor) for _ in range(3))
        ApiKey.objects.reorder(vendor, [third.pk, first.pk, second.pk])

        rows = operator_client.get(page_url(vendor)).context["rows"]

        assert [row.key.pk for row in rows] == [third.pk, first.pk, second.pk]
        assert [row.priority for row in rows] == [1, 2, 3]

    def test_row_masks_secret(self, operator_client, vendor, make_key):
        secret = fake_secret("page")
        make_key(vendor, secret=secret)

        html = operator_client.get(page_url(vendor)).content.decode()

        assert secret not in html
        assert "sk-t…" in html

    def test_row_controls(self, operator_client, vendor, make_key):
        make_key(vendor)
        make_key(vendor, api_url="http://127.0.0.1:9/own")

        html = operator_client.get(page_url(vendor)).content.decode()

        assert 'aria-label="Drag to reorder key2"' in html
        assert 'aria-label="Move key2 up"' in html
        assert 'role="switch" aria-checked="true"' in html
        assert "vendor default" in html
        assert "http://127.0.0.1:9/own" in html
        assert "Default</span>" in html

    def test_default_key_has_no_delete(self, operator_client, vendor, make_key):
        make_key(vendor)
        make_key(vendor)

        html = operator_client.get(page_url(vendor)).content.decode()

        assert "Delete key2?" in html
        assert "Delete key1?" not in html

    def test_expired_key_has_no_switch(self, operator_client, vendor, make_key):
        key = make_key(vendor)
        ApiKey.objects.filter(pk=key.pk).update(
            expires_at=timezone.now() - timedelta(days=2)
        )

        response = operator_client.get(page_url(vendor))
        html = response.content.decode()

        assert response.context["rows"][0].status == ApiKey.Status.EXPIRED
        assert 'role="switch"' not in html
        assert "Expired" in html
        assert "2 days ago" in html

    def test_badges_per_status(self, operator_client, vendor, make_key):
        now = timezone.now()
        make_key(vendor)
        make_key(vendor, is_enabled=False)
        make_key(vendor, is_invalid=True, status_reason="Incorrect API key provided")
        make_key(vendor, is_exceeded=True, status_reason="Quota exceeded")
        make_key(vendor, cooldown_until=now + timedelta(minutes=5))

        response = operator_client.get(page_url(vendor))
        html = response.content.decode()

        for label in ("Normal", "Disabled", "Invalid", "Exceeded", "Rate limited"):
            assert f">{label}</span>" in html
        assert "Incorrect API key provided" in html
        assert "until " in html

    def test_expiring_key_highlighted(self, operator_client, vendor, make_key):
        make_key(vendor, expires_at=timezone.now() + timedelta(days=3, hours=1))
        make_key(vendor, expires_at=timezone.now() + timedelta(days=30))

        response = operator_client.get(page_url(vendor))
        rows = response.context["rows"]

        assert rows[0].expires_soon
        assert rows[0].expiry_relative == "in 3 days"
        assert not rows[1].expires_soon
        assert response.content.decode().count("pool-expiring") == 1

    def test_key_without_expiry_shows_never(self, operator_client, vendor, make_key):
        make_key(vendor)

        rows = operator_client.get(page_url(vendor)).context["rows"]

        assert rows[0].expiry == "Never"


class TestQueryCount:
    def count_page_queries(self, client, vendor) -> int:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(page_url(vendor))
        assert response.status_code == 200
        return len(queries)

    def test_same_for_10_and_200_keys(self, operator_client, vendor):
        ApiKey.objects.bulk_create(
            ApiKey(vendor=vendor, name=f"key{n}", secret=fake_secret(), order=n)
            for n in range(10)
        )
        with_10 = self.count_page_queries(operator_client, vendor)
        ApiKey.objects.bulk_create(
            ApiKey(vendor=vendor, name=f"key{n}", secret=fake_secret(), order=n)
            for n in range(10, 200)
        )

        with_200 = self.count_page_queries(operator_client, vendor)

        assert with_200 == with_10

    def test_fragment_same_for_10_and_200_keys(self, operator_client, vendor):
        ApiKey.objects.bulk_create(
            ApiKey(vendor=vendor, name=f"key{n}", secret=fake_secret(), order=n)
            for n in range(10)
        )
        url = reverse("pool:move_key", kwargs={"vendor": vendor.slug, "key_id": 0})

        def count() -> int:
            last = ApiKey.objects.filter(vendor=vendor).order_by("-order").first()
            with CaptureQueriesContext(connection) as queries:
                response = operator_client.post(
                    url.replace("/0/", f"/{last.pk}/"), {"direction": "up"}, **HTMX
                )
            assert response.status_code == 200
            return len(queries)

        count()  # Fills the content type cache that the audit log uses.
        with_10 = count()
        ApiKey.objects.bulk_create(
            ApiKey(vendor=vendor, name=f"key{n}", secret=fake_secret(), order=n)
            for n in range(10, 200)
        )

        assert count() == with_10


class TestHistory:
    def test_lists_changes_without_secret(
        self, operator_client, operator, vendor, make_key
    ):
        make_key(vendor)
        key = make_key(vendor)
        base = {"vendor": vendor.slug, "key_id": key.pk}
        operator_client.post(reverse("pool:disable_key", kwargs=base))
        secret = fake_secret("rotated")
        operator_client.post(
            reverse("pool:edit_key", kwargs=base),
            {"name": key.name, "secret": secret, "api_url": "", "expires_at": ""},
        )

        response = operator_client.get(reverse("pool:key_history", kwargs=base), **HTMX)
        html = response.content.decode()

        assert response.status_code == 200
        assert "Disabled." in html
        assert "Changed API key." in html
        assert "operator" in html
        assert secret not in html
        assert not LogEntry.objects.filter(change_message__contains=secret).exists()

    def test_full_page_without_htmx(self, operator_client, vendor, make_key):
        key = make_key(vendor)
        url = reverse(
            "pool:key_history", kwargs={"vendor": vendor.slug, "key_id": key.pk}
        )

        html = operator_client.get(url).content.decode()

        assert 'id="header"' in html
        assert "No changes of key1 are recorded." in html

    def test_key_of_other_vendor_not_found(
        self, operator_client, vendor, other_vendor, make_key
    ):
        key = make_key(other_vendor)
        url = reverse(
            "pool:key_history", kwargs={"vendor": vendor.slug, "key_id": key.pk}
        )

        response = operator_client.get(url)

        assert response.status_code == 404
