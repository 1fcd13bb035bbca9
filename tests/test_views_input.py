"""Input checks shared by the dialogs: secrets, extra headers, protocol
settings, URL schemes, vendor names and the Azure API version."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from pool.models import ApiKey, Vendor
from tests.conftest import fake_secret
from tests.test_views_dialogs import snapshot

HTMX = {"HTTP_HX_REQUEST": "true"}
SECRET_MESSAGE = (
    "The API key may contain only printable ASCII characters without spaces; "
    "check for a space or invisible character left by copy and paste."
)

# Secrets that cannot go into an HTTP header. Each is built around a fake
# secret, so a test can check that no part of it is echoed.
BAD_SECRETS = [
    pytest.param("sk-test-fake-zero\u200bwidth-0001", id="zero-width-space"),
    pytest.param("sk-test-fake-\u043a\u0438\u0440-0002", id="cyrillic"),
    pytest.param("sk-test-fake-crlf\r\nX-Evil: 1", id="cr-lf"),
    pytest.param("sk-test-fake-inner space-0004", id="inner-space"),
    pytest.param("sk-test-fake-bell\x07-0005", id="control-character"),
    pytest.param("sk-test-fake-" + "x" * 1100, id="too-long"),
]


@pytest.fixture
def key(vendor, make_key) -> ApiKey:
    make_key(vendor)
    return make_key(vendor)


@pytest.fixture
def edit_url(key) -> str:
    kwargs = {"vendor": key.vendor.slug, "key_id": key.pk}
    return reverse("pool:edit_key", kwargs=kwargs)


@pytest.fixture
def settings_url(vendor) -> str:
    return reverse("pool:vendor_settings", kwargs={"vendor": vendor.slug})


def settings_data(**changes) -> dict:
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


def assert_rejected(response, field: str, message: str, before: list) -> str:
    html = response.content.decode()
    assert response.status_code == 422
    assert snapshot() == before
    assert f'id="id_{field}_error"' in html
    assert message in html
    assert not LogEntry.objects.exists()
    return html


class TestSecretCharacters:
    @pytest.mark.parametrize("secret", BAD_SECRETS)
    def test_add_key_rejects(self, operator_client, vendor, add_url, secret):
        before = snapshot()

        response = operator_client.post(
            add_url, {"name": "new", "secret": secret}, **HTMX
        )

        expected = "longer than 1024" if len(secret) > 1024 else SECRET_MESSAGE
        html = assert_rejected(response, "secret", expected, before)
        assert "sk-test-fake" not in html

    @pytest.mark.parametrize("secret", BAD_SECRETS)
    def test_edit_key_rejects(self, operator_client, key, edit_url, secret):
        old_secret = key.secret
        before = snapshot()

        response = operator_client.post(
            edit_url, {"name": key.name, "secret": secret}, **HTMX
        )

        html = assert_rejected(response, "secret", "The API key", before)
        assert "sk-test-fake" not in html
        key.refresh_from_db()
        assert key.secret == old_secret

    @pytest.mark.parametrize("secret", BAD_SECRETS)
    def test_vendor_settings_reject(self, operator_client, key, settings_url, secret):
        before = snapshot()

        response = operator_client.post(
            settings_url, settings_data(secret=secret), **HTMX
        )

        html = assert_rejected(response, "secret", "The API key", before)
        assert "sk-test-fake" not in html

    @pytest.mark.parametrize("secret", BAD_SECRETS)
    def test_add_vendor_rejects(self, operator_client, secret):
        before = snapshot()

        response = operator_client.post(
            reverse("pool:add_vendor"), {"preset": "openai", "secret": secret}, **HTMX
        )

        html = assert_rejected(response, "secret", "The API key", before)
        assert "sk-test-fake" not in html

    def test_surrounding_whitespace_stripped(self, operator_client, vendor, add_url):
        secret = fake_secret("padded")

        response = operator_client.post(
            add_url, {"name": "new", "secret": f"  {secret}\n"}, **HTMX
        )

        assert response.status_code == 200
        assert ApiKey.objects.get(name="new").secret == secret

    def test_longest_secret_accepted(self, operator_client, vendor, add_url):
        secret = "sk-test-fake-" + "x" * (1024 - len("sk-test-fake-"))

        response = operator_client.post(
            add_url, {"name": "new", "secret": secret}, **HTMX
        )

        assert response.status_code == 200
        assert ApiKey.objects.get(name="new").secret == secret


class TestExtraHeaders:
    @pytest.mark.parametrize(
        ("headers", "message"),
        [
            ("X-Bell: a\x07b", "The value of the header X-Bell may contain only"),
            ("X-Tab: a\tb", "The value of the header X-Tab may contain only"),
            ("X-Accent: caf\u00e9", "The value of the header X-Accent may contain"),
            ("Host: 127.0.0.1", "The header Host cannot be set here"),
            ("Content-Length: 1", "The header Content-Length cannot be set here"),
            ("transfer-encoding: chunked", "The header transfer-encoding cannot"),
            ("Connection: close", "The header Connection cannot be set here"),
            ("Authorization: Bearer x", "The header Authorization cannot be set"),
            ("X-Api-Key: x", "The header X-Api-Key cannot be set here"),
            ("api-key: x", "The header api-key cannot be set here"),
            ("x-goog-api-key: x", "The header x-goog-api-key cannot be set here"),
            ("X-Big: " + "v" * 8193, "The value of the header X-Big is longer than"),
            ("X-Team: a\nx-team: b", "The header x-team is listed twice."),
            (
                "\n".join(f"X-H{number}: 1" for number in range(51)),
                "At most 50 are allowed",
            ),
        ],
    )
    def test_add_key_rejects(self, operator_client, vendor, add_url, headers, message):
        before = snapshot()

        response = operator_client.post(
            add_url,
            {"name": "new", "secret": fake_secret(), "headers": headers},
            **HTMX,
        )

        assert_rejected(response, "headers", message, before)

    def test_value_never_echoed(self, operator_client, vendor, add_url):
        before = snapshot()
        value = "sk-test-fake-header-token\x07"

        response = operator_client.post(
            add_url,
            {"name": "new", "secret": fake_secret(), "headers": f"X-Token: {value}"},
            **HTMX,
        )

        html = assert_rejected(response, "headers", "X-Token", before)
        error_list = html.split('id="id_headers_error"')[1].split("</ul>")[0]
        assert "The value of the header X-Token" in error_list
        assert "sk-test-fake-header-token" not in error_list

    def test_edit_key_rejects_reserved(self, operator_client, key, edit_url):
        before = snapshot()

        response = operator_client.post(
            edit_url, {"name": key.name, "headers": "Authorization: Bearer x"}, **HTMX
        )

        assert_rejected(response, "headers", "Authorization cannot be set", before)

    def test_vendor_settings_reject_reserved(self, operator_client, key, settings_url):
        before = snapshot()

        response = operator_client.post(
            settings_url, settings_data(headers="Host: 127.0.0.1"), **HTMX
        )

        assert_rejected(response, "headers", "Host cannot be set", before)

    def test_add_vendor_rejects_reserved(self, operator_client):
        before = snapshot()

        response = operator_client.post(
            reverse("pool:add_vendor"),
            {"preset": "openai", "secret": fake_secret(), "headers": "api-key: x"},
            **HTMX,
        )

        assert_rejected(response, "headers", "api-key cannot be set", before)

    def test_fifty_headers_accepted(self, operator_client, vendor, add_url):
        headers = "\n".join(f"X-H{number}: {number}" for number in range(50))

        response = operator_client.post(
            add_url,
            {"name": "new", "secret": fake_secret(), "headers": headers},
            **HTMX,
        )

        assert response.status_code == 200
        assert len(ApiKey.objects.get(name="new").config["headers"]) == 50


class TestProtocolSettings:
    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("organization", "org 1"),
            ("organization", "org-\u200b1"),
            ("organization", "o" * 101),
            ("project", "proj\r\nX: 1"),
            ("project", "p" * 101),
        ],
    )
    def test_openai_settings_rejected(
        self, operator_client, vendor, add_url, field, value
    ):
        before = snapshot()

        response = operator_client.post(
            add_url, {"name": "new", "secret": fake_secret(), field: value}, **HTMX
        )

        assert_rejected(response, field, "may contain only letters, digits", before)

    @pytest.mark.parametrize("value", ["2024-10-21 ", "2024/10/21?x=1", "v" * 51])
    def test_api_version_rejected(self, operator_client, azure, value):
        url = reverse("pool:add_key", kwargs={"vendor": azure.slug})
        before = snapshot()

        response = operator_client.post(
            url, {"name": "new", "secret": fake_secret(), "api_version": value}, **HTMX
        )

        # The form strips surrounding spaces, so "2024-10-21 " is accepted.
        if value.strip() == "2024-10-21":
            assert response.status_code == 200
        else:
            assert_rejected(response, "api_version", "The API version may", before)

    def test_openai_settings_accepted(self, operator_client, vendor, add_url):
        operator_client.post(
            add_url,
            {
                "name": "new",
                "secret": fake_secret(),
                "organization": "org-Ab12_cd.3",
                "project": "proj_Ab12",
            },
            **HTMX,
        )

        config = ApiKey.objects.get(name="new").config
        assert config == {"organization": "org-Ab12_cd.3", "project": "proj_Ab12"}


class TestUrlScheme:
    @pytest.mark.parametrize("url", ["ftp://127.0.0.1/v1", "file:///etc/passwd"])
    def test_add_key_rejects_api_url(self, operator_client, vendor, add_url, url):
        before = snapshot()

        response = operator_client.post(
            add_url, {"name": "new", "secret": fake_secret(), "api_url": url}, **HTMX
        )

        assert_rejected(response, "api_url", "Enter a valid URL", before)

    def test_edit_key_rejects_ftp(self, operator_client, key, edit_url):
        before = snapshot()

        response = operator_client.post(
            edit_url, {"name": key.name, "api_url": "ftp://127.0.0.1/v1"}, **HTMX
        )

        assert_rejected(response, "api_url", "http:// or https://", before)

    def test_vendor_settings_reject_ftp(self, operator_client, key, settings_url):
        before = snapshot()

        response = operator_client.post(
            settings_url, settings_data(base_url="ftp://127.0.0.1/v1"), **HTMX
        )

        assert_rejected(response, "base_url", "http:// or https://", before)

    def test_add_vendor_rejects_ftp(self, operator_client):
        before = snapshot()

        response = operator_client.post(
            reverse("pool:add_vendor"),
            {
                "preset": "custom",
                "name": "Local",
                "slug": "local",
                "protocol": "openai",
                "base_url": "ftp://127.0.0.1/v1",
                "secret": fake_secret(),
            },
            **HTMX,
        )

        assert_rejected(response, "base_url", "http:// or https://", before)


class TestVendorName:
    def test_add_vendor_rejects_name_in_other_case(self, operator_client, vendor):
        before = snapshot()

        response = operator_client.post(
            reverse("pool:add_vendor"),
            {
                "preset": "custom",
                "name": "openai",
                "slug": "openai-2",
                "protocol": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "secret": fake_secret(),
            },
            **HTMX,
        )

        assert_rejected(response, "name", "A vendor with this name already", before)

    def test_add_vendor_rejects_preset_name_taken(self, operator_client, vendor):
        before = snapshot()

        response = operator_client.post(
            reverse("pool:add_vendor"),
            {"preset": "openai", "slug": "openai-2", "secret": fake_secret()},
            **HTMX,
        )

        assert_rejected(response, "name", "A vendor with this name already", before)

    def test_vendor_settings_reject_name_taken(
        self, operator_client, vendor, other_vendor, key, settings_url
    ):
        before = snapshot()

        response = operator_client.post(
            settings_url, settings_data(name="ANTHROPIC"), **HTMX
        )

        assert_rejected(response, "name", "A vendor with this name already", before)

    def test_vendor_settings_keep_own_name(self, operator_client, key, settings_url):
        response = operator_client.post(
            settings_url, settings_data(name="OPENAI"), **HTMX
        )

        assert response.status_code == 200
        assert Vendor.objects.get().name == "OPENAI"


class TestAzureApiVersion:
    def test_add_key_requires_it(self, operator_client, azure):
        url = reverse("pool:add_key", kwargs={"vendor": azure.slug})
        before = snapshot()

        response = operator_client.post(
            url, {"name": "new", "secret": fake_secret(), "api_version": ""}, **HTMX
        )

        assert_rejected(response, "api_version", "for example 2024-10-21", before)

    def test_edit_key_requires_it(self, operator_client, azure, make_key):
        key = make_key(azure)
        url = reverse("pool:edit_key", kwargs={"vendor": azure.slug, "key_id": key.pk})
        before = snapshot()

        response = operator_client.post(
            url, {"name": key.name, "api_version": ""}, **HTMX
        )

        assert_rejected(response, "api_version", "for example 2024-10-21", before)

    def test_vendor_settings_require_it_on_switch(
        self, operator_client, key, settings_url
    ):
        before = snapshot()

        response = operator_client.post(
            settings_url, settings_data(protocol="azure"), **HTMX
        )

        assert_rejected(response, "api_version", "for example 2024-10-21", before)

    def test_add_vendor_preset_requires_it(self, operator_client):
        before = snapshot()

        response = operator_client.post(
            reverse("pool:add_vendor"),
            {
                "preset": "azure-openai",
                "base_url": "http://127.0.0.1:9/azure",
                "secret": fake_secret(),
            },
            **HTMX,
        )

        assert_rejected(response, "api_version", "for example 2024-10-21", before)

    def test_add_vendor_stores_it(self, operator_client):
        response = operator_client.post(
            reverse("pool:add_vendor"),
            {
                "preset": "azure-openai",
                "base_url": "http://127.0.0.1:9/azure",
                "secret": fake_secret(),
                "api_version": "2024-10-21",
                "organization": "ignored-for-azure",
                "headers": "X-Team: search",
            },
            **HTMX,
        )

        assert response.status_code == 200
        key = ApiKey.objects.get()
        assert key.vendor.protocol == "azure"
        assert key.config == {
            "api_version": "2024-10-21",
            "headers": {"X-Team": "search"},
        }

    def test_add_vendor_form_shows_protocol_settings(self, operator_client):
        html = operator_client.get(reverse("pool:add_vendor"), **HTMX).content.decode()

        assert 'name="api_version"' in html
        assert 'data-protocols="azure"' in html
        assert 'name="organization"' in html
        assert 'name="headers"' in html
        assert "data-preset-protocols=" in html
        assert "&quot;azure-openai&quot;: &quot;azure&quot;" in html
