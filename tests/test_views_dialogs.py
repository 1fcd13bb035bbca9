"""The add-key, edit, vendor settings and add-vendor dialogs."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.db.models.signals import pre_save
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from pool.forms import AddVendorForm
from pool.models import ApiKey, Vendor
from pool.presets import PRESETS_BY_SLUG, VENDOR_PRESETS
from tests.conftest import fake_secret

HTMX = {"HTTP_HX_REQUEST": "true"}


def future(days: int = 30) -> str:
    return (timezone.now() + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M")


def past(days: int = 1) -> str:
    return (timezone.now() - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M")


def snapshot() -> list[tuple]:
    """Return every stored key and vendor field that a dialog may change."""
    keys = ApiKey.objects.order_by("pk").values_list(
        "pk", "name", "api_url", "config", "expires_at", "order", "is_enabled"
    )
    vendors = Vendor.objects.order_by("pk").values_list(
        "pk", "slug", "name", "base_url", "protocol"
    )
    secrets = [key.secret for key in ApiKey.objects.order_by("pk")]
    return [*keys, *vendors, *secrets]


class TestAddKeyForm:
    def test_htmx_returns_dialog_fragment(
        self, operator_client, vendor, make_key, add_url
    ):
        make_key(vendor)
        make_key(vendor)

        response = operator_client.get(add_url, **HTMX)
        html = response.content.decode()

        assert response.status_code == 200
        assert html.startswith('<h2 id="pool-dialog-title">')
        assert 'name="name" value="key3"' in html
        assert 'type="password" name="secret"' in html
        assert 'placeholder="http://127.0.0.1:9/v1"' in html
        assert 'type="datetime-local" name="expires_at"' in html
        assert 'name="organization"' in html
        assert 'name="project"' in html
        assert 'name="headers"' in html
        assert 'name="api_version"' not in html

    def test_azure_vendor_asks_api_version(self, operator_client, azure):
        url = reverse("pool:add_key", kwargs={"vendor": azure.slug})

        html = operator_client.get(url, **HTMX).content.decode()

        assert 'name="api_version"' in html
        assert 'name="organization"' not in html

    def test_without_htmx_returns_page(self, operator_client, vendor, add_url):
        html = operator_client.get(add_url).content.decode()

        assert 'id="header"' in html
        assert 'name="secret"' in html


class TestAddKey:
    def test_htmx_saves_and_closes_dialog(
        self, operator_client, vendor, make_key, add_url
    ):
        make_key(vendor)
        secret = fake_secret("added")

        response = operator_client.post(
            add_url,
            {
                "name": "backup",
                "secret": secret,
                "api_url": "http://127.0.0.1:9/backup",
                "organization": "org-test",
                "project": "",
                "headers": "X-Team: search\n\nX-Trace: on",
                "expires_at": future(),
            },
            **HTMX,
        )

        assert response.status_code == 200
        assert response["HX-Retarget"] == "#pool-table"
        assert response["HX-Reswap"] == "outerHTML"
        assert "pool:close-dialog" in response["HX-Trigger"]
        key = ApiKey.objects.get(name="backup")
        assert key.secret == secret
        assert key.order == 1
        assert not key.is_default
        assert key.config == {
            "organization": "org-test",
            "headers": {"X-Team": "search", "X-Trace": "on"},
        }
        assert key.expires_at is not None
        assert secret not in response.content.decode()

    def test_without_htmx_redirects(self, operator_client, vendor, add_url):
        response = operator_client.post(
            add_url, {"name": "key1", "secret": fake_secret(), "expires_at": ""}
        )

        assert response.status_code == 302
        assert response["Location"] == reverse("pool:vendor", args=[vendor.slug])
        assert ApiKey.objects.get().expires_at is None

    def test_recorded_without_secret(self, operator_client, operator, vendor, add_url):
        secret = fake_secret("audit")

        operator_client.post(add_url, {"name": "key1", "secret": secret}, **HTMX)

        entry = LogEntry.objects.get()
        assert entry.user == operator
        assert entry.object_repr == "key1"
        assert secret not in entry.change_message

    def test_azure_api_version_stored(self, operator_client, azure):
        url = reverse("pool:add_key", kwargs={"vendor": azure.slug})

        operator_client.post(
            url,
            {"name": "key1", "secret": fake_secret(), "api_version": "2024-10-21"},
            **HTMX,
        )

        assert ApiKey.objects.get().config == {"api_version": "2024-10-21"}

    @pytest.mark.parametrize("htmx", [True, False])
    @pytest.mark.parametrize(
        ("field", "data", "message"),
        [
            ("secret", {"secret": ""}, "This field is required."),
            ("name", {"name": ""}, "This field is required."),
            ("name", {"name": "key1"}, "already has a key named “key1”"),
            ("api_url", {"api_url": "not a url"}, "Enter a valid URL."),
            ("expires_at", {"expires_at": past()}, "The expiry date is in the past."),
            ("expires_at", {"expires_at": "tomorrow"}, "Enter a valid date/time."),
            ("headers", {"headers": "X-Good: 1\nno colon"}, "Line 2 is not a header"),
            ("headers", {"headers": "Bad Name: 1"}, "Line 1 is not a header"),
        ],
    )
    def test_invalid_answers_422(
        self, operator_client, vendor, make_key, add_url, field, data, message, htmx
    ):
        make_key(vendor)
        secret = fake_secret("rejected")
        before = snapshot()

        response = operator_client.post(
            add_url,
            {"name": "new", "secret": secret, "api_url": "", **data},
            **(HTMX if htmx else {}),
        )
        html = response.content.decode()

        assert response.status_code == 422
        assert snapshot() == before
        assert message in html
        assert f'id="id_{field}_error"' in html
        assert secret not in html
        assert not LogEntry.objects.exists()

    def test_unknown_vendor_not_found(self, operator_client):
        url = reverse("pool:add_key", kwargs={"vendor": "missing"})

        response = operator_client.post(url, {"name": "k", "secret": fake_secret()})

        assert response.status_code == 404


class TestEditKey:
    @pytest.fixture
    def key(self, vendor, make_key) -> ApiKey:
        make_key(vendor)
        return make_key(
            vendor, config={"organization": "org-1", "headers": {"X-Team": "a"}}
        )

    @pytest.fixture
    def edit_url(self, key) -> str:
        return reverse(
            "pool:edit_key", kwargs={"vendor": key.vendor.slug, "key_id": key.pk}
        )

    def form_data(self, key: ApiKey, **changes) -> dict:
        data = {
            "name": key.name,
            "secret": "",
            "api_url": key.api_url,
            "organization": key.config.get("organization", ""),
            "project": "",
            "headers": "X-Team: a",
            "expires_at": "",
        }
        return {**data, **changes}

    def test_form_never_shows_secret(self, operator_client, key, edit_url):
        html = operator_client.get(edit_url, **HTMX).content.decode()

        assert key.secret not in html
        assert 'name="secret"' in html
        assert 'value="org-1"' in html
        assert "X-Team: a" in html
        assert "Leave empty to keep the current key." in html

    def test_without_htmx_returns_page(self, operator_client, key, edit_url):
        response = operator_client.get(edit_url)
        html = response.content.decode()

        assert response.status_code == 200
        assert 'id="header"' in html
        assert f'name="name" value="{key.name}"' in html
        assert key.secret not in html

    def test_without_htmx_redirects_with_message(self, operator_client, key, edit_url):
        response = operator_client.post(edit_url, self.form_data(key, name="renamed"))

        assert response.status_code == 302
        assert response["Location"] == reverse("pool:vendor", args=[key.vendor.slug])
        key.refresh_from_db()
        assert key.name == "renamed"
        page = operator_client.get(response["Location"]).content.decode()
        assert "renamed is saved." in page

    def test_empty_secret_keeps_old(self, operator_client, key, edit_url):
        old_secret = key.secret

        response = operator_client.post(
            edit_url, self.form_data(key, name="renamed"), **HTMX
        )

        assert response.status_code == 200
        key.refresh_from_db()
        assert key.name == "renamed"
        assert key.secret == old_secret

    def test_new_secret_replaces_old(self, operator_client, key, edit_url):
        secret = fake_secret("new")

        operator_client.post(edit_url, self.form_data(key, secret=secret), **HTMX)

        key.refresh_from_db()
        assert key.secret == secret
        assert LogEntry.objects.get().change_message == "Changed API key."

    def test_keeps_status(self, operator_client, key, edit_url):
        key.disable()
        key.mark(ApiKey.Status.INVALID, "rejected", observed_at=timezone.now())

        operator_client.post(
            edit_url, self.form_data(key, api_url="http://127.0.0.1:9/x")
        )

        key.refresh_from_db()
        assert key.api_url == "http://127.0.0.1:9/x"
        assert not key.is_enabled
        assert key.is_invalid

    def test_status_written_during_save_survives(self, operator_client, key, edit_url):
        def mark_meanwhile(sender, instance, **kwargs):
            # The failover service writes the status between the form's
            # read of the key and its save.
            ApiKey.objects.filter(pk=instance.pk).update(
                is_exceeded=True, status_reason="quota"
            )

        pre_save.connect(mark_meanwhile, sender=ApiKey, dispatch_uid="test-meanwhile")
        try:
            operator_client.post(edit_url, self.form_data(key, name="renamed"), **HTMX)
        finally:
            pre_save.disconnect(sender=ApiKey, dispatch_uid="test-meanwhile")

        key.refresh_from_db()
        assert key.name == "renamed"
        assert key.is_exceeded
        assert key.status_reason == "quota"

    def test_unchanged_form_saves_nothing(self, operator_client, key, edit_url):
        response = operator_client.post(edit_url, self.form_data(key), **HTMX)

        assert response.status_code == 200
        assert not LogEntry.objects.exists()
        assert "had no changes to save" in response.content.decode()

    def test_expired_key_keeps_its_expiry(self, operator_client, key, edit_url):
        expired = (timezone.now() - timedelta(days=2)).replace(microsecond=0)
        ApiKey.objects.filter(pk=key.pk).update(expires_at=expired)
        key.refresh_from_db()

        response = operator_client.post(
            edit_url,
            self.form_data(
                key,
                name="renamed",
                expires_at=timezone.localtime(expired).strftime("%Y-%m-%dT%H:%M"),
            ),
            **HTMX,
        )

        assert response.status_code == 200
        key.refresh_from_db()
        assert key.name == "renamed"
        assert key.expires_at == expired

    @pytest.mark.parametrize("htmx", [True, False])
    @pytest.mark.parametrize(
        ("field", "changes", "message"),
        [
            ("name", {"name": "key1"}, "already has a key named “key1”"),
            ("expires_at", {"expires_at": past()}, "The expiry date is in the past."),
            ("api_url", {"api_url": "ftp://"}, "Enter a valid URL."),
            ("headers", {"headers": ": empty name"}, "Line 1 is not a header"),
        ],
    )
    def test_invalid_answers_422(
        self, operator_client, key, edit_url, field, changes, message, htmx
    ):
        secret = fake_secret("not-saved")
        before = snapshot()

        response = operator_client.post(
            edit_url,
            self.form_data(key, secret=secret, **changes),
            **(HTMX if htmx else {}),
        )
        html = response.content.decode()

        assert response.status_code == 422
        assert snapshot() == before
        assert message in html
        assert f'id="id_{field}_error"' in html
        assert secret not in html

    def test_key_of_other_vendor_not_found(self, operator_client, key, azure):
        url = reverse("pool:edit_key", kwargs={"vendor": azure.slug, "key_id": key.pk})

        response = operator_client.get(url, **HTMX)

        assert response.status_code == 404


class TestVendorSettings:
    @pytest.fixture
    def default_key(self, vendor, make_key) -> ApiKey:
        return make_key(vendor)

    @pytest.fixture
    def settings_url(self, vendor) -> str:
        return reverse("pool:vendor_settings", kwargs={"vendor": vendor.slug})

    def form_data(self, **changes) -> dict:
        data = {
            "name": "OpenAI",
            "base_url": "http://127.0.0.1:9/v1",
            "protocol": "openai",
            "secret": "",
            "api_url": "",
            "expires_at": "",
            "api_version": "",
            "organization": "",
            "project": "",
            "headers": "",
        }
        return {**data, **changes}

    def test_form_shows_vendor_and_default_key(
        self, operator_client, default_key, settings_url
    ):
        html = operator_client.get(settings_url, **HTMX).content.decode()

        assert 'value="OpenAI"' in html
        assert 'value="http://127.0.0.1:9/v1"' in html
        assert 'name="protocol"' in html
        assert "Default key: key1" in html
        assert 'type="password" name="secret"' in html
        assert default_key.secret not in html

    def test_other_protocol_fields_rendered_hidden(
        self, operator_client, default_key, settings_url
    ):
        html = operator_client.get(settings_url, **HTMX).content.decode()
        rows = {
            name: html[: html.index(f'name="{name}"')].rsplit(
                '<div class="form-row', 1
            )[1]
            for name in ("api_version", "organization")
        }

        assert "hidden" in rows["api_version"]
        assert "hidden" not in rows["organization"]

    def test_without_htmx_returns_page(
        self, operator_client, default_key, settings_url
    ):
        response = operator_client.get(settings_url)
        html = response.content.decode()

        assert response.status_code == 200
        assert 'id="header"' in html
        assert 'value="OpenAI"' in html
        assert "Default key: key1" in html
        assert default_key.secret not in html

    def test_saves_vendor_and_key(
        self, operator_client, vendor, default_key, settings_url
    ):
        secret = fake_secret("default")

        response = operator_client.post(
            settings_url,
            self.form_data(
                name="Azure",
                base_url="http://127.0.0.1:9/azure",
                protocol="azure",
                secret=secret,
                api_version="2024-10-21",
                organization="ignored-for-azure",
                expires_at=future(),
            ),
            **HTMX,
        )

        assert response.status_code == 200
        assert response["HX-Redirect"] == reverse("pool:vendor", args=[vendor.slug])
        vendor.refresh_from_db()
        default_key.refresh_from_db()
        assert vendor.name == "Azure"
        assert vendor.protocol == "azure"
        assert default_key.secret == secret
        assert default_key.config == {"api_version": "2024-10-21"}
        assert default_key.expires_at is not None
        assert not LogEntry.objects.filter(change_message__contains=secret).exists()

    def test_without_htmx_redirects(
        self, operator_client, vendor, default_key, settings_url
    ):
        response = operator_client.post(settings_url, self.form_data(name="Renamed"))

        assert response.status_code == 302
        vendor.refresh_from_db()
        assert vendor.name == "Renamed"

    @pytest.mark.parametrize("htmx", [True, False])
    @pytest.mark.parametrize(
        ("field", "changes", "message"),
        [
            ("base_url", {"base_url": "nowhere"}, "Enter a valid URL."),
            ("protocol", {"protocol": "smtp"}, "Select a valid choice."),
            ("expires_at", {"expires_at": past()}, "The expiry date is in the past."),
            ("name", {"name": ""}, "This field is required."),
        ],
    )
    def test_invalid_saves_nothing(
        self, operator_client, default_key, settings_url, field, changes, message, htmx
    ):
        before = snapshot()
        secret = fake_secret("unsaved")
        # Valid changes next to the invalid one must not be saved either.
        data = self.form_data(
            name="Renamed", secret=secret, api_url="http://127.0.0.1:9/n"
        )

        response = operator_client.post(
            settings_url, {**data, **changes}, **(HTMX if htmx else {})
        )
        html = response.content.decode()

        assert response.status_code == 422
        assert snapshot() == before
        assert message in html
        assert f'id="id_{field}_error"' in html
        assert secret not in html

    def test_vendor_without_keys_gets_default_key(
        self, operator_client, vendor, settings_url
    ):
        secret = fake_secret("first")

        response = operator_client.post(settings_url, self.form_data(secret=secret))

        assert response.status_code == 302
        key = ApiKey.objects.get()
        assert key.is_default
        assert key.secret == secret

    def test_key_saved_becomes_missing_default(
        self, operator_client, vendor, settings_url
    ):
        # Keys without a default key, as a raw UPDATE could leave them.
        ApiKey.objects.bulk_create(
            ApiKey(vendor=vendor, name=f"key{n}", secret=fake_secret(), order=n)
            for n in (1, 2)
        )
        ApiKey.objects.update(is_default=False)

        response = operator_client.post(
            settings_url, self.form_data(secret=fake_secret())
        )

        assert response.status_code == 302
        assert ApiKey.objects.filter(is_default=True).count() == 1
        assert vendor.default_key.name == "key3"

    def test_without_vendor_permission_forbidden(
        self, client, default_key, settings_url
    ):
        from tests.fixtures.browser import make_staff_user

        user = make_staff_user("editor", ("view_apikey", "change_apikey"))
        client.force_login(user)

        response = client.post(settings_url, self.form_data(name="Renamed"))

        assert response.status_code == 403
        assert Vendor.objects.get().name == "OpenAI"

    def test_adding_default_key_needs_add_permission(
        self, client, vendor, settings_url
    ):
        from tests.fixtures.browser import make_staff_user

        user = make_staff_user(
            "editor", ("view_apikey", "change_vendor", "change_apikey")
        )
        client.force_login(user)
        before = snapshot()

        response = client.post(
            settings_url, self.form_data(name="Renamed", secret=fake_secret())
        )

        assert response.status_code == 403
        assert snapshot() == before
        assert not ApiKey.objects.exists()
        assert not LogEntry.objects.exists()

    def test_adding_default_key_with_add_permission(self, client, vendor, settings_url):
        from tests.fixtures.browser import make_staff_user

        user = make_staff_user(
            "adder", ("view_apikey", "change_vendor", "change_apikey", "add_apikey")
        )
        client.force_login(user)

        response = client.post(settings_url, self.form_data(secret=fake_secret()))

        assert response.status_code == 302
        assert vendor.default_key is not None


class TestAddVendor:
    @pytest.fixture
    def add_vendor_url(self) -> str:
        return reverse("pool:add_vendor")

    def test_form_lists_presets(self, operator_client, add_vendor_url):
        html = operator_client.get(add_vendor_url, **HTMX).content.decode()

        assert '<option value="openai">OpenAI</option>' in html
        assert '<option value="custom">' in html
        assert 'type="password" name="secret"' in html

    def test_form_lists_every_preset(self, operator_client, add_vendor_url):
        html = operator_client.get(add_vendor_url, **HTMX).content.decode()
        form = AddVendorForm()
        protocols = json.loads(
            form.fields["preset"].widget.attrs["data-preset-protocols"]
        )

        assert len(VENDOR_PRESETS) == 12
        for preset in VENDOR_PRESETS:
            assert (
                f'<option value="{preset.slug}">{escape(preset.name)}</option>' in html
            )
            assert protocols[preset.slug] == preset.protocol
        assert escape(json.dumps(protocols)) in html

    @pytest.mark.parametrize(
        "preset",
        [preset for preset in VENDOR_PRESETS if "YOUR-RESOURCE" not in preset.base_url],
        ids=lambda preset: preset.slug,
    )
    def test_preset_sets_protocol_and_base_url(
        self, operator_client, add_vendor_url, preset
    ):
        response = operator_client.post(
            add_vendor_url, {"preset": preset.slug, "secret": fake_secret()}
        )

        assert response.status_code == 302
        vendor = Vendor.objects.get()
        assert vendor.slug == preset.slug
        assert vendor.name == preset.name
        assert vendor.protocol == preset.protocol
        assert vendor.base_url == preset.base_url

    def test_azure_preset_base_url_needs_resource(
        self, operator_client, add_vendor_url
    ):
        preset = PRESETS_BY_SLUG["azure-openai"]
        data = {"preset": preset.slug, "secret": fake_secret(), "api_version": "v1"}

        rejected = operator_client.post(add_vendor_url, data)
        base_url = preset.base_url.replace("YOUR-RESOURCE", "example")
        accepted = operator_client.post(add_vendor_url, {**data, "base_url": base_url})

        assert rejected.status_code == 422
        assert "Replace YOUR-RESOURCE" in rejected.content.decode()
        assert accepted.status_code == 302
        vendor = Vendor.objects.get()
        assert vendor.protocol == preset.protocol
        assert vendor.base_url == base_url

    def test_without_htmx_returns_page(self, operator_client, add_vendor_url):
        response = operator_client.get(add_vendor_url)
        html = response.content.decode()

        assert response.status_code == 200
        assert 'id="header"' in html
        assert 'name="preset"' in html
        assert 'type="password" name="secret"' in html

    def test_without_htmx_redirects_with_message(self, operator_client, add_vendor_url):
        response = operator_client.post(
            add_vendor_url, {"preset": "deepseek", "secret": fake_secret()}
        )

        assert response.status_code == 302
        assert response["Location"] == reverse("pool:vendor", args=["deepseek"])
        page = operator_client.get(response["Location"]).content.decode()
        assert "DeepSeek is added with its default key key1." in page

    def test_preset_creates_vendor_with_default_key(
        self, operator_client, add_vendor_url
    ):
        secret = fake_secret("preset")

        response = operator_client.post(
            add_vendor_url, {"preset": "deepseek", "secret": secret}, **HTMX
        )

        assert response.status_code == 200
        assert response["HX-Redirect"] == reverse("pool:vendor", args=["deepseek"])
        vendor = Vendor.objects.get()
        assert vendor.name == "DeepSeek"
        assert vendor.base_url == "https://api.deepseek.com/v1"
        key = vendor.keys.get()
        assert key.is_default
        assert key.name == "key1"
        assert key.secret == secret
        assert LogEntry.objects.count() == 2

    def test_custom_vendor(self, operator_client, add_vendor_url):
        response = operator_client.post(
            add_vendor_url,
            {
                "preset": "custom",
                "name": "Local",
                "slug": "local",
                "protocol": "openai",
                "base_url": "http://127.0.0.1:9/local",
                "secret": fake_secret(),
            },
        )

        assert response.status_code == 302
        assert Vendor.objects.get().slug == "local"

    @pytest.mark.parametrize("htmx", [True, False])
    @pytest.mark.parametrize(
        ("field", "data", "message"),
        [
            ("secret", {"preset": "openai", "secret": ""}, "This field is required."),
            ("preset", {"preset": "nope"}, "Select a valid choice."),
            ("name", {"preset": "custom"}, "Enter this for a custom vendor."),
            ("base_url", {"preset": "azure-openai"}, "Replace YOUR-RESOURCE"),
            ("slug", {"preset": "openai", "slug": "taken"}, "Pick another slug."),
            (
                "slug",
                {"preset": "openai", "slug": "not a slug"},
                "Enter a valid “slug”",
            ),
        ],
    )
    def test_invalid_answers_422(
        self, operator_client, add_vendor_url, field, data, message, htmx
    ):
        Vendor.objects.create(slug="taken", name="Taken", base_url="http://127.0.0.1:9")
        before = snapshot()
        secret = fake_secret("vendor")

        response = operator_client.post(
            add_vendor_url, {"secret": secret, **data}, **(HTMX if htmx else {})
        )
        html = response.content.decode()

        assert response.status_code == 422
        assert snapshot() == before
        assert message in html
        assert f'id="id_{field}_error"' in html
        assert secret not in html


class TestSettingsReachVendor:
    def test_openai_organization_and_headers_sent(
        self, operator_client, sim_vendor, simulator
    ):
        vendor = sim_vendor()
        secret = fake_secret("sent")
        operator_client.post(
            reverse("pool:add_key", kwargs={"vendor": vendor.slug}),
            {
                "name": "key1",
                "secret": secret,
                "organization": "org-test",
                "project": "proj-test",
                "headers": "X-Team: search",
            },
        )
        key = ApiKey.objects.get()

        operator_client.post(
            reverse("pool:test_key", kwargs={"vendor": vendor.slug, "key_id": key.pk})
        )
        seen = simulator.requests[-1].headers

        # The simulator records header names in lower case.
        assert seen["openai-organization"] == "org-test"
        assert seen["openai-project"] == "proj-test"
        assert seen["x-team"] == "search"
