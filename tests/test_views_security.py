"""Secrets in error reports, stale CSRF tokens, the view permission on row
actions and the size limit of a reorder."""

from __future__ import annotations

import sys

import pytest
from django.core.signals import got_request_exception
from django.test import Client
from django.urls import reverse
from django.views.debug import ExceptionReporter

from pool.models import ApiKey
from tests.conftest import fake_secret
from tests.fixtures.browser import make_staff_user

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def key(vendor, make_key) -> ApiKey:
    make_key(vendor)
    return make_key(vendor)


@pytest.fixture
def error_reports(settings):
    """Collect the technical 500 page of every exception a view raises.

    The page is built as Django builds it with DEBUG on, from the request
    and the exception being handled.
    """
    settings.DEBUG = True
    reports: list[str] = []

    def report(sender, request, **kwargs) -> None:
        reporter = ExceptionReporter(request, *sys.exc_info())
        reports.append(reporter.get_traceback_html())

    got_request_exception.connect(report)
    yield reports
    got_request_exception.disconnect(report)


@pytest.fixture
def failing_encryption(settings) -> None:
    # An invalid Fernet key makes the save fail after the form is valid,
    # deep inside the view, as a broken deployment would.
    settings.KEYPOOL_ENCRYPTION_KEYS = ["not-a-fernet-key"]


class TestErrorReportHidesSecret:
    @pytest.mark.parametrize(
        ("route", "data"),
        [
            ("add_key", {"name": "new", "headers": "X-Token: sk-test-fake-hdr"}),
            ("vendor_settings", {"name": "OpenAI", "base_url": "http://127.0.0.1:9"}),
        ],
    )
    def test_technical_500_page_cleansed(
        self, operator, vendor, key, error_reports, failing_encryption, route, data
    ):
        client = Client(raise_request_exception=False)
        client.force_login(operator)
        secret = fake_secret("crash")
        url = reverse(f"pool:{route}", kwargs={"vendor": vendor.slug})

        response = client.post(url, {**data, "secret": secret, "protocol": "openai"})

        assert response.status_code == 500
        assert len(error_reports) == 1
        report = error_reports[0]
        assert "ImproperlyConfigured" in report
        assert secret not in report
        assert "sk-test-fake-hdr" not in report
        assert "********************" in report

    def test_add_vendor_page_cleansed(
        self, operator, error_reports, failing_encryption
    ):
        client = Client(raise_request_exception=False)
        client.force_login(operator)
        secret = fake_secret("crash")

        response = client.post(
            reverse("pool:add_vendor"), {"preset": "openai", "secret": secret}
        )

        assert response.status_code == 500
        assert secret not in error_reports[0]

    def test_edit_page_cleansed(self, operator, key, error_reports, failing_encryption):
        client = Client(raise_request_exception=False)
        client.force_login(operator)
        secret = fake_secret("crash")
        url = reverse("pool:edit_key", kwargs={"vendor": "openai", "key_id": key.pk})

        response = client.post(url, {"name": key.name, "secret": secret})

        assert response.status_code == 500
        assert secret not in error_reports[0]


class TestCsrfFailure:
    @pytest.fixture
    def csrf_client(self, operator) -> Client:
        client = Client(enforce_csrf_checks=True)
        client.force_login(operator)
        return client

    @pytest.mark.parametrize("htmx", [True, False])
    def test_stale_token_answers_403_with_reload_hint(self, csrf_client, key, htmx):
        url = reverse("pool:disable_key", kwargs={"vendor": "openai", "key_id": key.pk})
        csrf_client.get(reverse("pool:vendor", args=["openai"]))

        response = csrf_client.post(
            url,
            HTTP_X_CSRFTOKEN="stale-token-from-another-session-0000000000000000",
            **(HTMX if htmx else {}),
        )

        assert response.status_code == 403
        assert response["X-Keypool-Error"] == "csrf"
        assert response["Content-Type"].startswith("text/plain")
        assert response.content.decode() == (
            "Your session changed or the page is out of date. Reload the page "
            "and try again."
        )
        key.refresh_from_db()
        assert key.is_enabled

    def test_missing_token_answers_same(self, csrf_client, vendor):
        response = csrf_client.post(
            reverse("pool:add_key", kwargs={"vendor": vendor.slug}),
            {"name": "new", "secret": fake_secret()},
        )

        assert response.status_code == 403
        assert response["X-Keypool-Error"] == "csrf"
        assert not ApiKey.objects.exists()

    def test_page_script_reads_header(self):
        from django.contrib.staticfiles import finders

        script = open(finders.find("pool/pool.js")).read()

        assert '"X-Keypool-Error"' in script


class TestRowActionsNeedViewPermission:
    @pytest.fixture
    def changer_client(self, client, db):
        client.force_login(
            make_staff_user("changer", ("change_apikey", "delete_apikey"))
        )
        return client

    @pytest.mark.parametrize(
        ("name", "data"),
        [
            ("reorder", None),
            ("move_key", {"direction": "down"}),
            ("enable_key", {}),
            ("disable_key", {}),
            ("delete_key", {}),
            ("test_key", {}),
        ],
    )
    @pytest.mark.parametrize("htmx", [True, False])
    def test_forbidden_without_view_permission(
        self, changer_client, vendor, make_key, name, data, htmx
    ):
        first = make_key(vendor)
        second = make_key(vendor)
        kwargs = {"vendor": vendor.slug}
        if name != "reorder":
            kwargs["key_id"] = second.pk
        if data is None:
            data = {"order": [second.pk, first.pk]}

        response = changer_client.post(
            reverse(f"pool:{name}", kwargs=kwargs), data, **(HTMX if htmx else {})
        )

        assert response.status_code == 403
        assert "pool-table" not in response.content.decode()
        order = list(vendor.keys.order_by("order").values_list("pk", flat=True))
        assert order == [first.pk, second.pk]
        second.refresh_from_db()
        assert second.is_enabled
        assert second.status_changed_at is None


class TestReorderLimit:
    def test_setting_allows_10000_fields(self):
        from keypool import settings as project_settings

        assert project_settings.DATA_UPLOAD_MAX_NUMBER_FIELDS == 10000

    def test_reorder_of_1500_keys_saved(self, operator_client, vendor):
        ApiKey.objects.bulk_create(
            ApiKey(vendor=vendor, name=f"key{n}", secret=fake_secret(), order=n)
            for n in range(1500)
        )
        ids = list(vendor.keys.order_by("order").values_list("pk", flat=True))

        response = operator_client.post(
            reverse("pool:reorder", args=[vendor.slug]),
            {"order": ids[::-1]},
            **HTMX,
        )

        assert response.status_code == 200
        first = vendor.keys.order_by("order").first()
        assert first.pk == ids[-1]

    def test_table_tells_script_the_limit(self, operator_client, vendor, make_key):
        make_key(vendor)

        html = operator_client.get(reverse("pool:vendor", args=[vendor.slug]))

        assert 'data-max-order-length="10000"' in html.content.decode()


class TestProbeUnsendableKey:
    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"secret": "sk-test-fake-line\nbreak-0001"}, "only printable ASCII"),
            ({"config": {"headers": {"Host": "127.0.0.1"}}}, "header Host cannot"),
        ],
    )
    @pytest.mark.parametrize("htmx", [True, False])
    def test_answers_409_without_request(
        self, operator_client, vendor, make_key, fields, message, htmx
    ):
        # objects.create() skips the model validators, as old rows did.
        key = make_key(vendor, **fields)
        url = reverse("pool:test_key", kwargs={"vendor": vendor.slug, "key_id": key.pk})

        response = operator_client.post(url, **(HTMX if htmx else {}))

        html = response.content.decode()
        assert response.status_code == 409
        assert f"{key.name} was not tested" in html
        assert message in html
        assert "sk-test-fake-line" not in html
        key.refresh_from_db()
        assert key.status_changed_at is None
        assert key.failure_count == 0
