"""Tests of the Django admin for vendors and keys."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.db.models.signals import pre_save
from django.urls import reverse
from django.utils import timezone

from pool.models import ApiKey, Vendor
from tests.conftest import fake_secret

CHANGELIST = reverse("admin:pool_apikey_changelist")


def change_url(key: ApiKey) -> str:
    return reverse("admin:pool_apikey_change", args=[key.pk])


def delete_url(key: ApiKey) -> str:
    return reverse("admin:pool_apikey_delete", args=[key.pk])


def message_texts(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def priorities(vendor: Vendor) -> list[tuple[str, int]]:
    keys = ApiKey.objects.filter(vendor=vendor).order_by("order")
    return list(keys.values_list("name", "order"))


def change_form_data(key: ApiKey, **changes) -> dict:
    """Return the change form's POST data for ``key`` as a browser sends it."""
    data = {
        "name": key.name,
        "secret": "",
        "api_url": key.api_url,
        "config": "{}",
        "expires_at_0": "",
        "expires_at_1": "",
    }
    data.update(changes)
    return data


@pytest.fixture
def staff_client(client, db):
    """Return a client of a staff user with every pool permission, not superuser."""
    user = User.objects.create_user("staff", password="staff-password", is_staff=True)
    permissions = Permission.objects.filter(content_type__app_label="pool")
    user.user_permissions.set(permissions)
    client.force_login(user)
    return client


@pytest.fixture
def keys(vendor, make_key) -> list[ApiKey]:
    return [make_key(vendor) for _ in range(3)]


class TestAccess:
    def test_superuser_sees_models(self, admin_client, vendor):
        response = admin_client.get(reverse("admin:index"))

        assert response.status_code == 200
        assert reverse("admin:pool_vendor_changelist") in response.text
        assert CHANGELIST in response.text

    def test_staff_index_hides_models(self, staff_client, vendor):
        response = staff_client.get(reverse("admin:index"))

        assert response.status_code == 200
        assert CHANGELIST not in response.text
        assert reverse("admin:pool_vendor_changelist") not in response.text

    @pytest.mark.parametrize(
        "url_name", ["admin:pool_apikey_changelist", "admin:pool_vendor_changelist"]
    )
    def test_staff_changelist_forbidden(self, staff_client, vendor, url_name):
        response = staff_client.get(reverse(url_name))

        assert response.status_code == 403

    def test_staff_change_forbidden(self, staff_client, keys):
        response = staff_client.post(change_url(keys[0]), change_form_data(keys[0]))

        assert response.status_code == 403

    def test_staff_add_forbidden(self, staff_client, vendor):
        response = staff_client.get(reverse("admin:pool_apikey_add"))

        assert response.status_code == 403


class TestSecretWriteOnly:
    def test_change_page_never_shows_secret(self, admin_client, keys):
        response = admin_client.get(change_url(keys[0]))

        assert response.status_code == 200
        assert keys[0].secret not in response.text
        assert keys[0].masked in response.text
        assert 'type="password"' in response.text

    def test_changelist_shows_masked(self, admin_client, keys):
        response = admin_client.get(CHANGELIST)

        assert response.status_code == 200
        for key in keys:
            assert key.secret not in response.text
            assert key.masked in response.text

    def test_add_page_has_password_input(self, admin_client, vendor):
        response = admin_client.get(reverse("admin:pool_apikey_add"))

        assert response.status_code == 200
        assert 'type="password" name="secret"' in response.text

    def test_add_key_stores_secret(self, admin_client, vendor):
        secret = fake_secret("admin-add")
        data = {
            "vendor": vendor.pk,
            "name": "key1",
            "secret": secret,
            "api_url": "",
            "config": "{}",
            "expires_at_0": "",
            "expires_at_1": "",
        }

        response = admin_client.post(reverse("admin:pool_apikey_add"), data)

        assert response.status_code == 302
        key = ApiKey.objects.get(vendor=vendor, name="key1")
        assert key.secret == secret
        assert key.is_default

    def test_add_without_secret_rejected(self, admin_client, vendor):
        data = {"vendor": vendor.pk, "name": "key1", "secret": "", "config": "{}"}

        response = admin_client.post(reverse("admin:pool_apikey_add"), data)

        assert response.status_code == 200
        assert "This field is required" in response.text
        assert not ApiKey.objects.exists()

    def test_invalid_form_not_echo_secret(self, admin_client, vendor):
        secret = fake_secret("echo")
        data = {"vendor": vendor.pk, "name": "", "secret": secret, "config": "{}"}

        response = admin_client.post(reverse("admin:pool_apikey_add"), data)

        assert response.status_code == 200
        assert secret not in response.text

    def test_blank_secret_keeps_old(self, admin_client, keys):
        old_secret = keys[0].secret

        response = admin_client.post(
            change_url(keys[0]), change_form_data(keys[0], name="renamed")
        )

        assert response.status_code == 302
        stored = ApiKey.objects.get(pk=keys[0].pk)
        assert stored.name == "renamed"
        assert stored.secret == old_secret

    def test_new_secret_replaces_old(self, admin_client, keys):
        new_secret = fake_secret("replaced")

        data = change_form_data(keys[0], secret=new_secret)

        admin_client.post(change_url(keys[0]), data)

        assert ApiKey.objects.get(pk=keys[0].pk).secret == new_secret


@pytest.fixture
def write_during_save():
    """Run a write while the admin saves a key, between its load and its UPDATE.

    This is the window in which the failover service may mark the key.
    """
    writes = []

    def run_write(sender, instance, **kwargs):
        while writes:
            writes.pop()()

    pre_save.connect(run_write, sender=ApiKey, dispatch_uid="test_write_during_save")
    yield writes.append
    pre_save.disconnect(sender=ApiKey, dispatch_uid="test_write_during_save")


class TestEditKeepsStatus:
    def test_edit_keeps_mark_written_meanwhile(
        self, admin_client, keys, write_during_save
    ):
        key = keys[1]
        write_during_save(
            lambda: ApiKey.objects.get(pk=key.pk).mark(
                ApiKey.Status.EXCEEDED, "quota", observed_at=timezone.now()
            )
        )

        admin_client.post(change_url(key), change_form_data(key, name="renamed"))

        stored = ApiKey.objects.get(pk=key.pk)
        assert stored.name == "renamed"
        assert stored.status == ApiKey.Status.EXCEEDED
        assert stored.status_reason == "quota"

    def test_edit_keeps_usage_written_meanwhile(
        self, admin_client, keys, write_during_save
    ):
        key = keys[1]
        write_during_save(lambda: key.record_usage(successes=5, used_at=timezone.now()))

        admin_client.post(change_url(key), change_form_data(key, name="renamed"))

        assert ApiKey.objects.get(pk=key.pk).success_count == 5

    def test_edit_keeps_reorder_made_meanwhile(
        self, admin_client, vendor, keys, write_during_save
    ):
        ids = [key.pk for key in reversed(keys)]
        write_during_save(lambda: ApiKey.objects.reorder(vendor, ids))

        data = change_form_data(keys[0], name="renamed")

        admin_client.post(change_url(keys[0]), data)

        assert priorities(vendor) == [("key3", 0), ("key2", 1), ("renamed", 2)]


class TestDelete:
    def test_delete_view_default_key_get(self, admin_client, keys):
        response = admin_client.get(delete_url(keys[0]))

        assert response.status_code == 302
        assert response.url == change_url(keys[0])
        assert "is the default key of OpenAI" in message_texts(response)[0]

    def test_delete_view_default_key_post(self, admin_client, vendor, keys):
        response = admin_client.post(delete_url(keys[0]), {"post": "yes"})

        assert response.status_code == 302
        assert "cannot be deleted" in message_texts(response)[0]
        assert ApiKey.objects.filter(pk=keys[0].pk).exists()
        assert priorities(vendor) == [("key1", 0), ("key2", 1), ("key3", 2)]

    def test_delete_view_other_key(self, admin_client, vendor, keys):
        response = admin_client.post(delete_url(keys[1]), {"post": "yes"})

        assert response.status_code == 302
        assert priorities(vendor) == [("key1", 0), ("key3", 1)]

    def test_bulk_delete_with_default_rejected(self, admin_client, vendor, keys):
        data = {
            "action": "delete_selected_keys",
            "_selected_action": [key.pk for key in keys],
        }

        response = admin_client.post(CHANGELIST, data)

        assert response.status_code == 302
        assert "Nothing was deleted" in message_texts(response)[0]
        assert ApiKey.objects.count() == 3

    def test_bulk_delete_confirmed_with_default_rejected(self, admin_client, keys):
        data = {
            "action": "delete_selected_keys",
            "_selected_action": [keys[0].pk, keys[2].pk],
            "post": "yes",
        }

        response = admin_client.post(CHANGELIST, data)

        assert response.status_code == 302
        assert "default keys (key1 (OpenAI))" in message_texts(response)[0]
        assert ApiKey.objects.count() == 3

    def test_bulk_delete_other_keys(self, admin_client, vendor, keys, make_key):
        make_key(vendor)
        selected = [keys[1].pk, keys[2].pk]
        data = {"action": "delete_selected_keys", "_selected_action": selected}
        confirmation = admin_client.post(CHANGELIST, data)

        response = admin_client.post(CHANGELIST, {**data, "post": "yes"})

        assert confirmation.status_code == 200
        assert "Are you sure" in confirmation.text
        assert response.status_code == 302
        assert priorities(vendor) == [("key1", 0), ("key4", 1)]

    def test_builtin_delete_selected_absent(self, admin_client, keys):
        data = {"action": "delete_selected", "_selected_action": [keys[0].pk]}

        response = admin_client.post(CHANGELIST, data, follow=True)

        assert response.status_code == 200
        assert ApiKey.objects.count() == 3

    def test_vendor_delete_deletes_keys(self, admin_client, vendor, keys):
        url = reverse("admin:pool_vendor_delete", args=[vendor.pk])

        response = admin_client.post(url, {"post": "yes"})

        assert response.status_code == 302
        assert not Vendor.objects.exists()
        assert not ApiKey.objects.exists()

    def test_vendor_bulk_delete_deletes_keys(self, admin_client, vendor, keys):
        data = {
            "action": "delete_selected",
            "_selected_action": [vendor.pk],
            "post": "yes",
        }

        response = admin_client.post(reverse("admin:pool_vendor_changelist"), data)

        assert response.status_code == 302
        assert not Vendor.objects.exists()
        assert not ApiKey.objects.exists()


class TestActions:
    def test_enable_action_expired_key(self, admin_client, keys):
        ApiKey.objects.filter(pk=keys[1].pk).update(
            is_enabled=False, expires_at=timezone.now() - timedelta(days=1)
        )
        data = {"action": "enable_keys", "_selected_action": [keys[1].pk]}

        response = admin_client.post(CHANGELIST, data)

        assert response.status_code == 302
        assert "Extend its expiry date" in message_texts(response)[0]
        assert ApiKey.objects.get(pk=keys[1].pk).is_enabled is False

    def test_enable_action_clears_status(self, admin_client, keys):
        keys[1].mark(ApiKey.Status.INVALID, observed_at=timezone.now())
        data = {"action": "enable_keys", "_selected_action": [keys[1].pk]}

        admin_client.post(CHANGELIST, data)

        assert ApiKey.objects.get(pk=keys[1].pk).status == ApiKey.Status.NORMAL

    def test_disable_action(self, admin_client, keys):
        data = {"action": "disable_keys", "_selected_action": [keys[0].pk]}

        admin_client.post(CHANGELIST, data)

        assert ApiKey.objects.get(pk=keys[0].pk).status == ApiKey.Status.DISABLED


class TestNoOrderChangeOnGet:
    def test_get_requests_keep_order(self, admin_client, vendor, keys):
        before = priorities(vendor)
        urls = [
            CHANGELIST,
            f"{CHANGELIST}?o=3",
            change_url(keys[1]),
            delete_url(keys[1]),
            reverse("admin:pool_apikey_history", args=[keys[1].pk]),
            f"{change_url(keys[1]).removesuffix('change/')}move-up/",
            f"{change_url(keys[1]).removesuffix('change/')}move-top/",
        ]

        statuses = [admin_client.get(url).status_code for url in urls]

        assert all(status in (200, 302) for status in statuses)
        assert priorities(vendor) == before

    def test_change_form_has_no_order_field(self, admin_client, keys):
        response = admin_client.get(change_url(keys[1]))

        assert 'name="order"' not in response.text


class TestModelValidatorsInAdmin:
    def test_add_key_rejects_unsendable_input(self, admin_client, vendor):
        data = {
            "vendor": vendor.pk,
            "name": "key1",
            "secret": "sk-test-fake-zero\u200bwidth",
            "api_url": "ftp://127.0.0.1/v1",
            "config": '{"headers": {"Host": "127.0.0.1"}}',
            "expires_at_0": "",
            "expires_at_1": "",
        }

        response = admin_client.post(reverse("admin:pool_apikey_add"), data)

        assert response.status_code == 200
        assert "only printable ASCII characters without spaces" in response.text
        assert "It must start with http:// or https://." in response.text
        assert "The header Host cannot be set here" in response.text
        assert "sk-test-fake-zero" not in response.text
        assert not ApiKey.objects.exists()

    def test_add_vendor_rejects_name_in_other_case(self, admin_client, vendor):
        data = {
            "slug": "openai-2",
            "name": "OPENAI",
            "protocol": "openai",
            "base_url": "http://127.0.0.1:9/v1",
        }

        response = admin_client.post(reverse("admin:pool_vendor_add"), data)

        assert response.status_code == 200
        assert "A vendor with this name already exists." in response.text
        assert Vendor.objects.count() == 1
