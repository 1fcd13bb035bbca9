"""Drag-and-drop reorder and Move up / Move down on the pool page."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from pool.models import ApiKey, Vendor
from pool.views import STALE_ORDER_MESSAGE

HTMX = {"HTTP_HX_REQUEST": "true"}


def key_ids(vendor: Vendor) -> list[int]:
    return list(vendor.keys.order_by("order").values_list("pk", flat=True))


@pytest.fixture
def keys(vendor, make_key) -> list[ApiKey]:
    return [make_key(vendor) for _ in range(3)]


@pytest.fixture
def reorder_url(vendor) -> str:
    return reverse("pool:reorder", kwargs={"vendor": vendor.slug})


class TestReorder:
    def test_htmx_returns_table(self, operator_client, vendor, keys, reorder_url):
        new_order = [keys[2].pk, keys[0].pk, keys[1].pk]

        response = operator_client.post(reorder_url, {"order": new_order}, **HTMX)

        assert response.status_code == 200
        assert key_ids(vendor) == new_order
        html = response.content.decode()
        assert html.lstrip().startswith('<div id="pool-table"')
        assert (
            'id="pool-messages" role="status" aria-live="polite" hx-swap-oob="true"'
            in html
        )

    def test_without_htmx_redirects_with_message(
        self, operator_client, vendor, keys, reorder_url
    ):
        new_order = [keys[1].pk, keys[0].pk, keys[2].pk]

        response = operator_client.post(reorder_url, {"order": new_order}, follow=True)

        assert response.redirect_chain[0] == (
            reverse("pool:vendor", args=["openai"]),
            302,
        )
        assert key_ids(vendor) == new_order
        assert "The new order is saved." in response.content.decode()

    def test_keeps_status_written_meanwhile(
        self, operator_client, vendor, keys, reorder_url
    ):
        # The failover service marks a key while the page is open.
        keys[1].mark(ApiKey.Status.INVALID, "rejected", observed_at=timezone.now())

        operator_client.post(reorder_url, {"order": [k.pk for k in reversed(keys)]})

        keys[1].refresh_from_db()
        assert keys[1].is_invalid
        assert keys[1].status_reason == "rejected"

    def test_logs_new_order_on_vendor(self, operator_client, vendor, keys, reorder_url):
        operator_client.post(
            reorder_url, {"order": [keys[1].pk, keys[0].pk, keys[2].pk]}
        )

        entry = LogEntry.objects.get()

        assert entry.object_id == str(vendor.pk)
        assert entry.change_message == "Changed priority order to key2, key1, key3."

    def test_history_of_key_shows_new_order(
        self, operator_client, vendor, keys, reorder_url
    ):
        operator_client.post(
            reorder_url, {"order": [keys[1].pk, keys[0].pk, keys[2].pk]}
        )
        url = reverse(
            "pool:key_history", kwargs={"vendor": vendor.slug, "key_id": keys[2].pk}
        )

        html = operator_client.get(url, **HTMX).content.decode()

        assert "Changed priority order to key2, key1, key3." in html

    def test_query_count_does_not_grow(self, operator_client, vendor, reorder_url):
        def count(size: int) -> int:
            # Unset the default key first, which a queryset delete rejects.
            ApiKey.objects.update(is_default=False)
            ApiKey.objects.all().delete()
            ApiKey.objects.bulk_create(
                ApiKey(vendor=vendor, name=f"key{n}", secret="sk-test-fake-q", order=n)
                for n in range(size)
            )
            ids = list(reversed(key_ids(vendor)))
            with CaptureQueriesContext(connection) as queries:
                response = operator_client.post(reorder_url, {"order": ids}, **HTMX)
            assert response.status_code == 200
            return len(queries)

        count(3)  # Fills the content type cache that the audit log uses.

        assert count(10) == count(200)


class TestStaleReorder:
    @pytest.mark.parametrize(
        "case", ["missing key", "extra key", "repeated key", "other vendor's key"]
    )
    def test_answers_409_and_keeps_order(
        self, operator_client, vendor, keys, make_key, reorder_url, case
    ):
        other = Vendor.objects.create(
            slug="other", name="Other", base_url="http://127.0.0.1:9/other"
        )
        foreign = make_key(other)
        before = key_ids(vendor)
        ids = {
            "missing key": before[:2],
            "extra key": [*before, 999_999],
            "repeated key": [before[0], before[0], before[1], before[2]],
            "other vendor's key": [*before[:2], foreign.pk],
        }[case]

        response = operator_client.post(reorder_url, {"order": ids}, **HTMX)

        assert response.status_code == 409
        assert key_ids(vendor) == before
        assert STALE_ORDER_MESSAGE in response.content.decode()
        assert 'id="pool-table"' in response.content.decode()

    def test_key_added_elsewhere_answers_409(
        self, operator_client, vendor, keys, make_key, reorder_url
    ):
        dragged = key_ids(vendor)
        make_key(vendor)
        before = key_ids(vendor)

        response = operator_client.post(
            reorder_url, {"order": list(reversed(dragged))}, **HTMX
        )

        assert response.status_code == 409
        assert key_ids(vendor) == before
        assert len(response.context["rows"]) == 4

    def test_without_htmx_shows_page_with_409(
        self, operator_client, vendor, keys, reorder_url
    ):
        before = key_ids(vendor)

        response = operator_client.post(reorder_url, {"order": before[:1]})

        assert response.status_code == 409
        assert key_ids(vendor) == before
        assert 'id="header"' in response.content.decode()
        assert STALE_ORDER_MESSAGE in response.content.decode()

    @pytest.mark.parametrize("htmx", [True, False])
    @pytest.mark.parametrize("order", [[], ["1", "x"], ["1.5"], [""]])
    def test_invalid_ids_answer_400(
        self, operator_client, vendor, keys, reorder_url, order, htmx
    ):
        before = key_ids(vendor)
        headers = HTMX if htmx else {}

        response = operator_client.post(reorder_url, {"order": order}, **headers)

        assert response.status_code == 400
        assert key_ids(vendor) == before
        assert "field “order”" in response.content.decode()
        assert not LogEntry.objects.exists()

    def test_unknown_vendor_not_found(self, operator_client, keys):
        url = reverse("pool:reorder", kwargs={"vendor": "missing"})

        response = operator_client.post(url, {"order": [keys[0].pk]}, **HTMX)

        assert response.status_code == 404


class TestMove:
    def move_url(self, key: ApiKey) -> str:
        return reverse(
            "pool:move_key", kwargs={"vendor": key.vendor.slug, "key_id": key.pk}
        )

    @pytest.mark.parametrize("htmx", [True, False])
    def test_up_swaps_with_key_above(self, operator_client, vendor, keys, htmx):
        response = operator_client.post(
            self.move_url(keys[2]), {"direction": "up"}, **(HTMX if htmx else {})
        )

        assert response.status_code == (200 if htmx else 302)
        assert key_ids(vendor) == [keys[0].pk, keys[2].pk, keys[1].pk]

    def test_down_swaps_with_key_below(self, operator_client, vendor, keys):
        operator_client.post(self.move_url(keys[0]), {"direction": "down"}, **HTMX)

        assert key_ids(vendor) == [keys[1].pk, keys[0].pk, keys[2].pk]

    def test_keeps_status_written_meanwhile(self, operator_client, vendor, keys):
        keys[0].mark(ApiKey.Status.EXCEEDED, "quota", observed_at=timezone.now())

        operator_client.post(self.move_url(keys[0]), {"direction": "down"}, **HTMX)

        keys[0].refresh_from_db()
        assert keys[0].is_exceeded

    @pytest.mark.parametrize("htmx", [True, False])
    @pytest.mark.parametrize("data", [{}, {"direction": "left"}, {"direction": ""}])
    def test_invalid_direction_answers_400(
        self, operator_client, vendor, keys, data, htmx
    ):
        before = key_ids(vendor)

        response = operator_client.post(
            self.move_url(keys[1]), data, **(HTMX if htmx else {})
        )

        assert response.status_code == 400
        assert key_ids(vendor) == before
        assert "use “up” or “down”" in response.content.decode()

    @pytest.mark.parametrize(("index", "direction"), [(0, "up"), (2, "down")])
    def test_past_either_end_answers_400(
        self, operator_client, vendor, keys, index, direction
    ):
        before = key_ids(vendor)

        response = operator_client.post(
            self.move_url(keys[index]), {"direction": direction}, **HTMX
        )

        assert response.status_code == 400
        assert key_ids(vendor) == before
        assert "nothing was moved" in response.content.decode()

    def test_key_of_other_vendor_not_found(self, operator_client, vendor, keys):
        other = Vendor.objects.create(
            slug="other", name="Other", base_url="http://127.0.0.1:9"
        )
        url = reverse(
            "pool:move_key", kwargs={"vendor": other.slug, "key_id": keys[1].pk}
        )

        response = operator_client.post(url, {"direction": "up"}, **HTMX)

        assert response.status_code == 404
