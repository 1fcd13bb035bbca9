"""The Test button: one request with the key to the vendor simulator."""

from __future__ import annotations

import pytest
from django.urls import reverse

from pool.models import ApiKey
from tests.conftest import fake_secret

HTMX = {"HTTP_HX_REQUEST": "true"}


def probe_url(key: ApiKey) -> str:
    return reverse(
        "pool:test_key", kwargs={"vendor": key.vendor.slug, "key_id": key.pk}
    )


@pytest.fixture
def openai(sim_vendor):
    return sim_vendor()


class TestProbe:
    def test_accepted_key_shows_success_in_row(self, operator_client, openai, make_key):
        key = make_key(openai)

        response = operator_client.post(probe_url(key), **HTMX)
        html = response.content.decode()

        assert response.status_code == 200
        assert "Test: the vendor accepted the key (HTTP 200)" in html
        assert "Test of key1: the vendor accepted the key." in html
        key.refresh_from_db()
        assert key.success_count == 1
        assert key.status == ApiKey.Status.NORMAL

    def test_rejected_key_marked_invalid(
        self, operator_client, openai, make_key, simulator
    ):
        make_key(openai)
        secret = fake_secret("sim-invalid")
        key = make_key(openai, secret=secret)

        response = operator_client.post(probe_url(key), **HTMX)
        html = response.content.decode()

        assert response.status_code == 200
        assert "Test: the vendor rejected the key (HTTP 401)" in html
        assert secret not in html
        key.refresh_from_db()
        assert key.status == ApiKey.Status.INVALID
        assert key.failure_count == 1
        assert simulator.count(secret) == 1

    def test_without_htmx_redirects_with_message(
        self, operator_client, openai, make_key
    ):
        key = make_key(openai, secret=fake_secret("sim-quota0"))

        response = operator_client.post(probe_url(key), follow=True)

        assert response.redirect_chain[-1][1] == 302
        assert "Test of key1: the key is out of quota." in response.content.decode()
        key.refresh_from_db()
        assert key.status == ApiKey.Status.EXCEEDED

    def test_viewer_forbidden(self, viewer_client, openai, make_key, simulator):
        secret = fake_secret()
        key = make_key(openai, secret=secret)

        response = viewer_client.post(probe_url(key), **HTMX)

        assert response.status_code == 403
        assert simulator.count(secret) == 0

    def test_get_not_allowed(self, operator_client, openai, make_key):
        key = make_key(openai)

        response = operator_client.get(probe_url(key))

        assert response.status_code == 405
