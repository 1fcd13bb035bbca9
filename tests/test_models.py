"""Tests of the vendor and key models: storage, status, priority, defaults."""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from pool.models import (
    STATUS_REASON_MAX_LENGTH,
    ApiKey,
    DefaultKeyDeletionError,
    StaleOrderError,
    Vendor,
)
from tests.conftest import fake_secret

Status = ApiKey.Status


def priorities(vendor: Vendor) -> list[int]:
    """Return the stored ``order`` values of the vendor's keys, sorted."""
    return sorted(ApiKey.objects.filter(vendor=vendor).values_list("order", flat=True))


def names_by_priority(vendor: Vendor) -> list[str]:
    keys = ApiKey.objects.filter(vendor=vendor).order_by("order")
    return list(keys.values_list("name", flat=True))


def raw_rows() -> list[tuple]:
    """Return every column of every row of the key table, read without the ORM."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {ApiKey._meta.db_table}")
        return cursor.fetchall()


@pytest.fixture
def five_keys(vendor, make_key) -> list[ApiKey]:
    return [make_key(vendor) for _ in range(5)]


class TestSecretStorage:
    def test_secret_in_no_raw_column(self, vendor, make_key):
        secret = fake_secret("raw")
        key = make_key(vendor, secret=secret)
        key.name = "renamed"
        key.save(update_fields=["name"])
        key.mark(Status.INVALID, f"bad key {secret}", observed_at=timezone.now())

        rows = raw_rows()

        assert len(rows) == 1
        for value in rows[0]:
            assert secret not in str(value)

    def test_secret_reads_back_as_plaintext(self, vendor, make_key):
        secret = fake_secret("plain")
        key = make_key(vendor, secret=secret)

        assert ApiKey.objects.get(pk=key.pk).secret == secret

    def test_secret_change_stored_encrypted(self, vendor, make_key):
        key = make_key(vendor)
        new_secret = fake_secret("new")
        key.secret = new_secret
        key.save(update_fields=["secret"])

        assert ApiKey.objects.get(pk=key.pk).secret == new_secret
        for value in raw_rows()[0]:
            assert new_secret not in str(value)

    def test_masked_shows_prefix_and_last_four(self, vendor, make_key):
        key = make_key(vendor, secret="sk-test-fake-masked-123456")

        assert key.masked == "sk-t…3456"

    def test_masked_short_secret_hides_most(self, vendor, make_key):
        key = make_key(vendor, secret="sk-test1")

        assert key.masked == "sk…t1"


# The inputs of the status, in precedence order, with the status each one
# gives when it is the highest-ranked input that is set.
STATUS_INPUTS = ["expired", "disabled", "invalid", "exceeded", "cooldown"]
STATUS_BY_INPUT = {
    "expired": Status.EXPIRED,
    "disabled": Status.DISABLED,
    "invalid": Status.INVALID,
    "exceeded": Status.EXCEEDED,
    "cooldown": Status.RATE_LIMITED,
}
ALL_COMBINATIONS = [
    dict(zip(STATUS_INPUTS, values))
    for values in itertools.product([False, True], repeat=len(STATUS_INPUTS))
]


def expected_status(inputs: dict[str, bool]) -> ApiKey.Status:
    for name in STATUS_INPUTS:
        if inputs[name]:
            return STATUS_BY_INPUT[name]
    return Status.NORMAL


def key_fields(inputs: dict[str, bool], now) -> dict:
    return {
        "expires_at": now - timedelta(hours=1) if inputs["expired"] else None,
        "is_enabled": not inputs["disabled"],
        "is_invalid": inputs["invalid"],
        "is_exceeded": inputs["exceeded"],
        "cooldown_until": now + timedelta(minutes=5) if inputs["cooldown"] else None,
    }


def combination_id(inputs: dict[str, bool]) -> str:
    return "+".join(name for name in STATUS_INPUTS if inputs[name]) or "none"


class TestStatus:
    def test_combinations_cover_every_input(self):
        assert len(ALL_COMBINATIONS) == 32

    @pytest.mark.parametrize("inputs", ALL_COMBINATIONS, ids=combination_id)
    def test_status_precedence(self, inputs):
        now = timezone.now()
        key = ApiKey(name="key1", **key_fields(inputs, now))

        assert key.status_at(now) == expected_status(inputs)

    def test_usable_matches_status_for_every_combination(self, vendor, make_key):
        now = timezone.now()
        expected_usable = []
        for inputs in ALL_COMBINATIONS:
            key = make_key(vendor, name=combination_id(inputs))
            ApiKey.objects.filter(pk=key.pk).update(**key_fields(inputs, now))
            if expected_status(inputs) == Status.NORMAL:
                expected_usable.append(key.name)

        usable = [key.name for key in ApiKey.objects.usable(vendor)]

        assert usable == expected_usable == ["none"]
        for key in ApiKey.objects.filter(vendor=vendor):
            assert key.is_usable == (key.name == "none")

    def test_expiry_passes_without_job(self):
        now = timezone.now()
        key = ApiKey(name="key1", expires_at=now + timedelta(hours=1))

        assert key.status_at(now) == Status.NORMAL
        assert key.status_at(now + timedelta(hours=2)) == Status.EXPIRED

    def test_expiry_boundary_is_expired(self):
        now = timezone.now()
        key = ApiKey(name="key1", expires_at=now)

        assert key.status_at(now) == Status.EXPIRED

    def test_cooldown_passes_without_job(self):
        now = timezone.now()
        key = ApiKey(name="key1", cooldown_until=now + timedelta(minutes=1))

        assert key.status_at(now) == Status.RATE_LIMITED
        assert key.status_at(now + timedelta(minutes=2)) == Status.NORMAL

    def test_usable_after_cooldown_passed(self, vendor, make_key):
        key = make_key(vendor)
        past = timezone.now() - timedelta(seconds=1)
        ApiKey.objects.filter(pk=key.pk).update(cooldown_until=past)

        assert list(ApiKey.objects.usable(vendor)) == [key]

    def test_usable_excludes_expired_without_job(self, vendor, make_key):
        key = make_key(vendor)
        past = timezone.now() - timedelta(seconds=1)
        ApiKey.objects.filter(pk=key.pk).update(expires_at=past)

        assert list(ApiKey.objects.usable(vendor)) == []


class TestUsable:
    def test_usable_one_query_by_vendor(
        self, vendor, five_keys, django_assert_num_queries
    ):
        with django_assert_num_queries(1):
            keys = list(ApiKey.objects.usable(vendor))
            vendor_names = {key.vendor.name for key in keys}

        assert len(keys) == 5
        assert vendor_names == {"OpenAI"}

    def test_usable_one_query_by_slug(
        self, vendor, five_keys, django_assert_num_queries
    ):
        with django_assert_num_queries(1):
            keys = list(ApiKey.objects.usable("openai"))
            urls = {key.effective_url for key in keys}

        assert len(keys) == 5
        assert urls == {vendor.base_url}

    def test_usable_in_priority_order(self, vendor, five_keys):
        ids = [key.pk for key in reversed(five_keys)]
        ApiKey.objects.reorder(vendor, ids)

        assert [key.pk for key in ApiKey.objects.usable(vendor)] == ids

    def test_usable_only_that_vendor(self, vendor, other_vendor, make_key):
        mine = make_key(vendor)
        make_key(other_vendor)

        assert list(ApiKey.objects.usable(vendor)) == [mine]
        assert list(ApiKey.objects.usable("openai")) == [mine]

    def test_usable_unknown_slug_empty(self, vendor, make_key):
        make_key(vendor)

        assert list(ApiKey.objects.usable("no-such-vendor")) == []

    @pytest.mark.parametrize(
        "fields",
        [
            {"is_enabled": False},
            {"is_invalid": True},
            {"is_exceeded": True},
        ],
        ids=["disabled", "invalid", "exceeded"],
    )
    def test_usable_excludes_status(self, vendor, five_keys, fields):
        excluded = five_keys[2]
        ApiKey.objects.filter(pk=excluded.pk).update(**fields)

        usable = list(ApiKey.objects.usable(vendor))

        assert excluded not in usable
        assert len(usable) == 4

    def test_usable_excludes_active_cooldown(self, vendor, five_keys):
        excluded = five_keys[0]
        excluded.mark(
            Status.RATE_LIMITED,
            observed_at=timezone.now(),
            cooldown_until=timezone.now() + timedelta(minutes=1),
        )

        assert excluded not in list(ApiKey.objects.usable(vendor))


class TestPriorities:
    def test_new_keys_go_to_bottom(self, vendor, five_keys):
        assert [key.order for key in five_keys] == [0, 1, 2, 3, 4]
        assert priorities(vendor) == [0, 1, 2, 3, 4]

    def test_orders_per_vendor(self, vendor, other_vendor, make_key):
        make_key(vendor)
        make_key(vendor)
        make_key(other_vendor)

        assert priorities(vendor) == [0, 1]
        assert priorities(other_vendor) == [0]

    def test_instance_delete_renumbers(self, vendor, five_keys):
        five_keys[2].delete()

        assert priorities(vendor) == [0, 1, 2, 3]
        assert names_by_priority(vendor) == ["key1", "key2", "key4", "key5"]

    def test_instance_delete_with_stale_order(self, vendor, five_keys):
        stale = ApiKey.objects.get(pk=five_keys[1].pk)
        ApiKey.objects.reorder(vendor, [key.pk for key in reversed(five_keys)])

        stale.delete()

        assert priorities(vendor) == [0, 1, 2, 3]
        assert names_by_priority(vendor) == ["key5", "key4", "key3", "key1"]

    def test_queryset_delete_one_renumbers(self, vendor, five_keys):
        ApiKey.objects.filter(pk=five_keys[1].pk).delete()

        assert priorities(vendor) == [0, 1, 2, 3]

    def test_queryset_delete_several_renumbers(self, vendor, five_keys):
        ids = [five_keys[1].pk, five_keys[3].pk, five_keys[4].pk]

        ApiKey.objects.filter(pk__in=ids).delete()

        assert priorities(vendor) == [0, 1]
        assert names_by_priority(vendor) == ["key1", "key3"]

    def test_queryset_delete_across_vendors(
        self, vendor, other_vendor, five_keys, make_key
    ):
        other_keys = [make_key(other_vendor) for _ in range(3)]
        ids = [five_keys[2].pk, other_keys[1].pk]

        ApiKey.objects.filter(pk__in=ids).delete()

        assert priorities(vendor) == [0, 1, 2, 3]
        assert priorities(other_vendor) == [0, 1]

    def test_related_manager_delete_renumbers(self, vendor, five_keys):
        vendor.keys.filter(is_default=False, name__in=["key2", "key3"]).delete()

        assert priorities(vendor) == [0, 1, 2]

    def test_create_after_delete_goes_to_bottom(self, vendor, five_keys, make_key):
        ApiKey.objects.filter(pk=five_keys[1].pk).delete()

        new = make_key(vendor)

        assert new.order == 4
        assert priorities(vendor) == [0, 1, 2, 3, 4]

    def test_move_up_swaps(self, vendor, five_keys):
        assert five_keys[2].move("up") is True

        assert names_by_priority(vendor) == ["key1", "key3", "key2", "key4", "key5"]
        assert priorities(vendor) == [0, 1, 2, 3, 4]

    def test_move_down_swaps(self, vendor, five_keys):
        assert five_keys[0].move("down") is True

        assert names_by_priority(vendor) == ["key2", "key1", "key3", "key4", "key5"]

    def test_move_past_either_end(self, vendor, five_keys):
        assert five_keys[0].move("up") is False
        assert five_keys[4].move("down") is False
        assert names_by_priority(vendor) == ["key1", "key2", "key3", "key4", "key5"]

    def test_move_bad_direction_rejected(self, vendor, five_keys):
        with pytest.raises(ValueError, match="'up' or 'down'"):
            five_keys[0].move("top")

    def test_to_moves_and_shifts(self, vendor, five_keys):
        five_keys[4].to(1)

        assert names_by_priority(vendor) == ["key1", "key5", "key2", "key3", "key4"]
        assert priorities(vendor) == [0, 1, 2, 3, 4]
        assert five_keys[4].order == 1

    def test_top_and_bottom(self, vendor, five_keys):
        five_keys[3].top()
        five_keys[0].bottom()

        assert names_by_priority(vendor) == ["key4", "key2", "key3", "key5", "key1"]
        assert priorities(vendor) == [0, 1, 2, 3, 4]

    def test_up_down_swap(self, vendor, five_keys):
        five_keys[1].up()
        five_keys[3].down()
        five_keys[2].swap(five_keys[4])

        assert names_by_priority(vendor) == ["key2", "key1", "key5", "key3", "key4"]
        assert priorities(vendor) == [0, 1, 2, 3, 4]

    def test_swap_other_vendor_rejected(
        self, vendor, other_vendor, five_keys, make_key
    ):
        foreign = make_key(other_vendor)

        with pytest.raises(ValueError):
            five_keys[0].swap(foreign)

        assert names_by_priority(vendor) == ["key1", "key2", "key3", "key4", "key5"]

    def test_reorder_writes_new_order(self, vendor, five_keys):
        ids = [five_keys[i].pk for i in (3, 0, 4, 1, 2)]

        ApiKey.objects.reorder(vendor, ids)

        assert names_by_priority(vendor) == ["key4", "key1", "key5", "key2", "key3"]
        assert priorities(vendor) == [0, 1, 2, 3, 4]

    @pytest.mark.parametrize("case", ["missing", "foreign", "repeated", "unknown"])
    def test_reorder_stale_list_changes_nothing(
        self, vendor, other_vendor, five_keys, make_key, case
    ):
        foreign = make_key(other_vendor)
        ids = [key.pk for key in reversed(five_keys)]
        stale = {
            "missing": ids[:-1],
            "foreign": ids[:-1] + [foreign.pk],
            "repeated": ids + [ids[0]],
            "unknown": ids[:-1] + [max(ids + [foreign.pk]) + 1000],
        }[case]

        with pytest.raises(StaleOrderError):
            ApiKey.objects.reorder(vendor, stale)

        assert names_by_priority(vendor) == ["key1", "key2", "key3", "key4", "key5"]

    def test_reorder_queries_constant(self, vendor, other_vendor, make_key):
        few = [make_key(vendor).pk for _ in range(3)]
        many = [make_key(other_vendor).pk for _ in range(60)]
        with CaptureQueriesContext(connection) as few_queries:
            ApiKey.objects.reorder(vendor, few[::-1])
        with CaptureQueriesContext(connection) as many_queries:
            ApiKey.objects.reorder(other_vendor, many[::-1])

        assert len(many_queries) == len(few_queries)

        assert priorities(other_vendor) == list(range(60))
        assert ApiKey.objects.get(pk=many[-1]).order == 0

    def test_write_order_one_query(self, vendor, five_keys, django_assert_num_queries):
        ids = [key.pk for key in reversed(five_keys)]

        with django_assert_num_queries(1):
            ApiKey.objects.write_order(ids)

        assert names_by_priority(vendor) == ["key5", "key4", "key3", "key2", "key1"]

    def test_renumber_closes_gaps(self, vendor, five_keys):
        ApiKey.objects.filter(pk=five_keys[1].pk).update(order=10)
        ApiKey.objects.filter(pk=five_keys[3].pk).update(order=20)

        ApiKey.objects.renumber(vendor)

        assert priorities(vendor) == [0, 1, 2, 3, 4]
        assert names_by_priority(vendor) == ["key1", "key3", "key5", "key2", "key4"]


class TestDefaultKey:
    def test_first_key_is_default(self, vendor, make_key):
        first = make_key(vendor)
        second = make_key(vendor)

        assert first.is_default
        assert not second.is_default
        assert vendor.default_key == first

    def test_new_key_can_take_default(self, vendor, make_key):
        first = make_key(vendor)
        second = make_key(vendor, is_default=True)

        first.refresh_from_db()
        assert second.is_default
        assert not first.is_default
        assert vendor.keys.filter(is_default=True).count() == 1

    def test_set_default_moves_default(self, vendor, five_keys):
        five_keys[3].set_default()

        assert vendor.default_key == five_keys[3]
        assert vendor.keys.filter(is_default=True).count() == 1

    def test_instance_delete_rejected(self, vendor, five_keys):
        default = five_keys[0]

        with pytest.raises(DefaultKeyDeletionError, match="default key of OpenAI"):
            default.delete()

        assert ApiKey.objects.filter(pk=default.pk).exists()
        assert priorities(vendor) == [0, 1, 2, 3, 4]

    def test_delete_error_names_fix(self, vendor, five_keys):
        with pytest.raises(DefaultKeyDeletionError) as error:
            five_keys[0].delete()

        assert "Make another key the default first" in error.value.messages[0]
        assert error.value.code == "default_key"

    def test_queryset_delete_rejected_deletes_nothing(self, vendor, five_keys):
        with pytest.raises(DefaultKeyDeletionError):
            ApiKey.objects.filter(vendor=vendor).delete()

        assert ApiKey.objects.filter(vendor=vendor).count() == 5
        assert priorities(vendor) == [0, 1, 2, 3, 4]

    def test_several_with_default_deletes_nothing(self, vendor, five_keys):
        ids = [five_keys[0].pk, five_keys[3].pk]

        with pytest.raises(DefaultKeyDeletionError):
            ApiKey.objects.filter(pk__in=ids).delete()

        assert ApiKey.objects.filter(pk__in=ids).count() == 2

    def test_related_manager_delete_rejected(self, vendor, five_keys):
        with pytest.raises(DefaultKeyDeletionError):
            vendor.keys.all().delete()

        assert vendor.keys.count() == 5

    def test_delete_after_default_moved(self, vendor, five_keys):
        five_keys[1].set_default()
        old_default = ApiKey.objects.get(pk=five_keys[0].pk)

        old_default.delete()

        assert not ApiKey.objects.filter(pk=five_keys[0].pk).exists()
        assert priorities(vendor) == [0, 1, 2, 3]

    def test_vendor_delete_deletes_all_keys(self, vendor, other_vendor, five_keys):
        vendor.delete()

        assert not ApiKey.objects.filter(pk__in=[key.pk for key in five_keys]).exists()

    def test_vendor_queryset_delete_deletes_all_keys(
        self, vendor, other_vendor, five_keys, make_key
    ):
        other_key = make_key(other_vendor)

        Vendor.objects.filter(slug="openai").delete()

        assert list(ApiKey.objects.all()) == [other_key]


class TestEnableDisable:
    def test_enable_expired_key_rejected(self, vendor, make_key):
        key = make_key(vendor)
        key.disable()
        ApiKey.objects.filter(pk=key.pk).update(
            expires_at=timezone.now() - timedelta(days=1)
        )
        key.refresh_from_db()

        with pytest.raises(ValidationError) as error:
            key.enable()

        message = error.value.messages[0]
        assert "Extend its expiry date" in message
        assert "delete the key" in message
        assert ApiKey.objects.get(pk=key.pk).is_enabled is False

    @pytest.mark.parametrize(
        "fields",
        [
            {"is_exceeded": True},
            {"is_invalid": True},
            {"cooldown_until": "future"},
            {"is_enabled": False},
            {"is_enabled": False, "is_invalid": True, "is_exceeded": True},
        ],
        ids=["exceeded", "invalid", "cooldown", "disabled", "all"],
    )
    def test_enable_clears_to_normal(self, vendor, make_key, fields):
        key = make_key(vendor)
        if fields.get("cooldown_until") == "future":
            fields = {"cooldown_until": timezone.now() + timedelta(hours=1)}
        ApiKey.objects.filter(pk=key.pk).update(status_reason="quota", **fields)
        key.refresh_from_db()

        key.enable()

        stored = ApiKey.objects.get(pk=key.pk)
        assert key.status == Status.NORMAL
        assert stored.status == Status.NORMAL
        assert stored.cooldown_until is None
        assert stored.status_reason == ""
        assert list(ApiKey.objects.usable(vendor)) == [stored]

    def test_disable_sets_disabled(self, vendor, make_key):
        key = make_key(vendor)

        key.disable()

        assert ApiKey.objects.get(pk=key.pk).status == Status.DISABLED
        assert key.status == Status.DISABLED


class TestMark:
    @pytest.mark.parametrize("status", [Status.EXCEEDED, Status.INVALID])
    def test_mark_sets_status(self, vendor, make_key, status):
        key = make_key(vendor)

        assert key.mark(status, "vendor said no", observed_at=timezone.now())

        stored = ApiKey.objects.get(pk=key.pk)
        assert stored.status == status
        assert stored.status_reason == "vendor said no"
        assert stored.status_changed_at is not None

    def test_mark_rate_limited_sets_cooldown(self, vendor, make_key):
        key = make_key(vendor)
        until = timezone.now() + timedelta(seconds=30)

        key.mark(Status.RATE_LIMITED, observed_at=timezone.now(), cooldown_until=until)

        stored = ApiKey.objects.get(pk=key.pk)
        assert stored.status == Status.RATE_LIMITED
        assert stored.cooldown_until == until

    def test_mark_rate_limited_needs_deadline(self, vendor, make_key):
        key = make_key(vendor)

        with pytest.raises(ValueError, match="cooldown_until"):
            key.mark(Status.RATE_LIMITED, observed_at=timezone.now())

    @pytest.mark.parametrize("status", [Status.NORMAL, Status.DISABLED, Status.EXPIRED])
    def test_mark_other_status_rejected(self, vendor, make_key, status):
        key = make_key(vendor)

        with pytest.raises(ValueError, match="EXCEEDED, INVALID or RATE_LIMITED"):
            key.mark(status, observed_at=timezone.now())

    def test_mark_skipped_after_enable(self, vendor, make_key):
        key = make_key(vendor)
        observed_at = timezone.now()
        ApiKey.objects.get(pk=key.pk).enable()

        marked = key.mark(Status.EXCEEDED, "quota", observed_at=observed_at)

        assert marked is False
        assert ApiKey.objects.get(pk=key.pk).status == Status.NORMAL
        assert key.is_exceeded is False

    def test_mark_skipped_after_disable(self, vendor, make_key):
        key = make_key(vendor)
        observed_at = timezone.now()
        ApiKey.objects.get(pk=key.pk).disable()

        assert key.mark(Status.INVALID, observed_at=observed_at) is False
        assert ApiKey.objects.get(pk=key.pk).is_invalid is False

    def test_mark_applies_after_older_change(self, vendor, make_key):
        key = make_key(vendor)
        key.enable()

        assert key.mark(Status.EXCEEDED, observed_at=timezone.now()) is True
        assert ApiKey.objects.get(pk=key.pk).status == Status.EXCEEDED

    def test_mark_redacts_secret_in_reason(self, vendor, make_key):
        secret = fake_secret("echoed")
        key = make_key(vendor, secret=secret)

        message = f"Incorrect API key: {secret}"

        key.mark(Status.INVALID, message, observed_at=timezone.now())

        reason = ApiKey.objects.get(pk=key.pk).status_reason
        assert secret not in reason
        assert reason == "Incorrect API key: [redacted]"

    def test_mark_truncates_reason(self, vendor, make_key):
        key = make_key(vendor)

        key.mark(Status.EXCEEDED, "x" * 2000, observed_at=timezone.now())

        reason = ApiKey.objects.get(pk=key.pk).status_reason
        assert len(reason) == STATUS_REASON_MAX_LENGTH


class TestConcurrentWrites:
    """A status written by the failover service survives edits and reorders
    made through another in-memory instance of the same key."""

    def test_edit_keeps_concurrent_mark(self, vendor, make_key):
        key = make_key(vendor)
        edited = ApiKey.objects.get(pk=key.pk)
        service_copy = ApiKey.objects.get(pk=key.pk)

        service_copy.mark(Status.EXCEEDED, "quota", observed_at=timezone.now())
        edited.name = "renamed"
        edited.api_url = "http://127.0.0.1:9/v2"
        edited.save(update_fields=["name", "api_url"])

        stored = ApiKey.objects.get(pk=key.pk)
        assert stored.name == "renamed"
        assert stored.api_url == "http://127.0.0.1:9/v2"
        assert stored.status == Status.EXCEEDED
        assert stored.status_reason == "quota"

    def test_edit_keeps_concurrent_cooldown(self, vendor, make_key):
        key = make_key(vendor)
        edited = ApiKey.objects.get(pk=key.pk)
        until = timezone.now() + timedelta(minutes=1)

        key.mark(Status.RATE_LIMITED, observed_at=timezone.now(), cooldown_until=until)
        edited.secret = fake_secret("edited")
        edited.save(update_fields=["secret"])

        assert ApiKey.objects.get(pk=key.pk).cooldown_until == until

    def test_edit_keeps_concurrent_usage(self, vendor, make_key):
        key = make_key(vendor)
        edited = ApiKey.objects.get(pk=key.pk)

        key.record_usage(successes=3, failures=1, used_at=timezone.now())
        edited.name = "renamed"
        edited.save(update_fields=["name"])

        stored = ApiKey.objects.get(pk=key.pk)
        assert stored.success_count == 3
        assert stored.failure_count == 1
        assert stored.last_used_at is not None

    def test_edit_keeps_concurrent_reorder(self, vendor, five_keys):
        edited = ApiKey.objects.get(pk=five_keys[0].pk)
        ApiKey.objects.reorder(vendor, [key.pk for key in reversed(five_keys)])

        edited.name = "first"
        edited.save(update_fields=["name"])

        assert names_by_priority(vendor) == ["key5", "key4", "key3", "key2", "first"]

    def test_reorder_keeps_concurrent_mark(self, vendor, five_keys):
        five_keys[2].mark(Status.INVALID, "revoked", observed_at=timezone.now())

        ApiKey.objects.reorder(vendor, [key.pk for key in reversed(five_keys)])

        assert ApiKey.objects.get(pk=five_keys[2].pk).status == Status.INVALID

    def test_move_keeps_concurrent_mark(self, vendor, five_keys):
        mover = ApiKey.objects.get(pk=five_keys[1].pk)
        five_keys[1].mark(Status.EXCEEDED, observed_at=timezone.now())

        mover.move("up")

        stored = ApiKey.objects.get(pk=mover.pk)
        assert stored.order == 0
        assert stored.status == Status.EXCEEDED

    @pytest.mark.parametrize(
        "move",
        [
            lambda key, others: key.up(),
            lambda key, others: key.to(0),
            lambda key, others: key.top(),
            lambda key, others: key.bottom(),
            lambda key, others: key.swap(others[0]),
        ],
        ids=["up", "to", "top", "bottom", "swap"],
    )
    def test_ordered_model_moves_keep_mark(self, vendor, five_keys, move):
        mover = ApiKey.objects.get(pk=five_keys[1].pk)
        five_keys[1].mark(Status.EXCEEDED, "quota", observed_at=timezone.now())

        move(mover, five_keys)

        stored = ApiKey.objects.get(pk=mover.pk)
        assert stored.status == Status.EXCEEDED
        assert stored.status_reason == "quota"
        assert priorities(vendor) == [0, 1, 2, 3, 4]


class TestUsage:
    def test_record_usage_adds_counts(self, vendor, make_key):
        key = make_key(vendor)
        used_at = timezone.now()

        key.record_usage(successes=2, used_at=used_at)
        key.record_usage(failures=1, used_at=used_at)

        stored = ApiKey.objects.get(pk=key.pk)
        assert stored.success_count == 2
        assert stored.failure_count == 1
        assert stored.last_used_at == used_at


class TestNames:
    def test_suggest_name_first(self, vendor):
        assert ApiKey.objects.suggest_name(vendor) == "key1"

    def test_suggest_name_after_highest(self, vendor, make_key):
        make_key(vendor, name="key1")
        make_key(vendor, name="key7")
        make_key(vendor, name="key3")

        assert ApiKey.objects.suggest_name(vendor) == "key8"

    def test_suggest_name_ignores_other_names(self, vendor, make_key):
        make_key(vendor, name="primary")
        make_key(vendor, name="key2-old")
        make_key(vendor, name="keyring")

        assert ApiKey.objects.suggest_name(vendor) == "key1"

    def test_suggest_name_per_vendor(self, vendor, other_vendor, make_key):
        make_key(other_vendor, name="key9")

        assert ApiKey.objects.suggest_name(vendor) == "key1"

    def test_name_unique_per_vendor(self, vendor, make_key):
        make_key(vendor, name="key1")
        duplicate = ApiKey(vendor=vendor, name="key1", secret=fake_secret())

        with pytest.raises(ValidationError, match="already has a key with this name"):
            duplicate.full_clean()


class TestVendor:
    def test_resolve_slug(self, vendor):
        assert Vendor.objects.resolve("openai") == vendor

    def test_resolve_instance(self, vendor):
        assert Vendor.objects.resolve(vendor) is vendor

    def test_resolve_unknown_slug(self, db):
        with pytest.raises(Vendor.DoesNotExist):
            Vendor.objects.resolve("no-such-vendor")

    def test_with_key_counts(self, vendor, other_vendor, five_keys):
        five_keys[1].disable()
        five_keys[2].mark(Status.EXCEEDED, observed_at=timezone.now())

        counts = {
            vendor.slug: (vendor.key_count, vendor.usable_key_count)
            for vendor in Vendor.objects.with_key_counts()
        }

        assert counts == {"openai": (5, 3), "anthropic": (0, 0)}

    def test_effective_url_prefers_key(self, vendor, make_key):
        key = make_key(vendor, api_url="http://127.0.0.1:9/custom")

        assert key.effective_url == "http://127.0.0.1:9/custom"


class TestValidators:
    @pytest.mark.parametrize(
        "secret",
        [
            "sk-test-fake-zero\u200bwidth",
            "sk-test-fake-\u043a\u0438\u0440",
            "sk-test-fake-line\nbreak",
            "sk-test-fake inner",
            "sk-test-fake-bell\x07",
            "sk-test-fake-" + "x" * 1100,
        ],
    )
    def test_full_clean_rejects_bad_secret(self, vendor, secret):
        key = ApiKey(vendor=vendor, name="key1", secret=secret)

        with pytest.raises(ValidationError) as raised:
            key.full_clean()

        assert list(raised.value.message_dict) == ["secret"]
        message = raised.value.message_dict["secret"][0]
        assert message.startswith("The API key ")
        assert "sk-test-fake" not in message

    def test_full_clean_accepts_fake_secret(self, vendor):
        ApiKey(vendor=vendor, name="key1", secret=fake_secret()).full_clean()

    @pytest.mark.parametrize("url", ["ftp://127.0.0.1/v1", "file:///tmp/v1"])
    def test_full_clean_rejects_non_http_urls(self, vendor, url):
        key = ApiKey(vendor=vendor, name="key1", secret=fake_secret(), api_url=url)
        custom = Vendor(slug="custom", name="Custom", base_url=url)

        with pytest.raises(ValidationError) as key_error:
            key.full_clean()
        with pytest.raises(ValidationError) as vendor_error:
            custom.full_clean()

        key_messages = " ".join(key_error.value.message_dict["api_url"])
        vendor_messages = " ".join(vendor_error.value.message_dict["base_url"])
        assert "http:// or https://" in key_messages
        assert "http:// or https://" in vendor_messages

    @pytest.mark.parametrize(
        ("config", "message"),
        [
            ({"headers": {"Authorization": "x"}}, "Authorization cannot be set"),
            ({"headers": {"X-A": "a\x07"}}, "header X-A may contain only"),
            ({"headers": {"X-A": "v" * 8193}}, "X-A is longer than 8192"),
            ({"headers": {f"X-{n}": "1" for n in range(51)}}, "At most 50"),
            ({"headers": {"X-A": "1", "x-a": "2"}}, "x-a is listed twice"),
            ({"headers": ["X-A: 1"]}, "must be an object"),
            ({"api_version": "2024 10"}, "The API version may contain only"),
            ({"organization": "o" * 101}, "The organization may contain only"),
            ({"project": 5}, "The project must be a string."),
        ],
    )
    def test_full_clean_rejects_bad_config(self, vendor, config, message):
        key = ApiKey(vendor=vendor, name="key1", secret=fake_secret(), config=config)

        with pytest.raises(ValidationError) as raised:
            key.full_clean()

        assert message in raised.value.message_dict["config"][0]

    def test_vendor_name_unique_in_any_case(self, vendor):
        other = Vendor(slug="openai-2", name="OPENAI", base_url="http://127.0.0.1:9")

        with pytest.raises(ValidationError) as raised:
            other.full_clean()

        assert raised.value.messages == [
            "A vendor with this name already exists. Pick another name."
        ]

    def test_database_rejects_vendor_name_in_other_case(self, vendor):
        with pytest.raises(IntegrityError), transaction.atomic():
            Vendor.objects.create(
                slug="openai-2", name="openAI", base_url="http://127.0.0.1:9"
            )


class TestMarkAfterConcurrentMark:
    """A mark from a request that started before another automatic mark."""

    def test_exceeded_applies_over_concurrent_cooldown(self, vendor, make_key):
        key = make_key(vendor)
        observed_at = timezone.now()
        until = timezone.now() + timedelta(seconds=60)
        ApiKey.objects.get(pk=key.pk).mark(
            Status.RATE_LIMITED, observed_at=timezone.now(), cooldown_until=until
        )

        marked = key.mark(Status.EXCEEDED, "quota", observed_at=observed_at)

        assert marked is True
        assert ApiKey.objects.get(pk=key.pk).status == Status.EXCEEDED

    def test_invalid_applies_over_concurrent_exceeded(self, vendor, make_key):
        key = make_key(vendor)
        observed_at = timezone.now()
        ApiKey.objects.get(pk=key.pk).mark(Status.EXCEEDED, observed_at=timezone.now())

        assert key.mark(Status.INVALID, observed_at=observed_at) is True
        assert ApiKey.objects.get(pk=key.pk).is_invalid is True

    def test_skipped_after_cooldown_then_enable(self, vendor, make_key):
        key = make_key(vendor)
        observed_at = timezone.now()
        other = ApiKey.objects.get(pk=key.pk)
        until = timezone.now() + timedelta(seconds=60)
        other.mark(
            Status.RATE_LIMITED, observed_at=timezone.now(), cooldown_until=until
        )
        other.enable()

        marked = key.mark(Status.EXCEEDED, "quota", observed_at=observed_at)

        assert marked is False
        assert ApiKey.objects.get(pk=key.pk).status == Status.NORMAL

    def test_older_cooldown_keeps_later_end(self, vendor, make_key):
        key = make_key(vendor)
        observed_at = timezone.now()
        later = timezone.now() + timedelta(hours=2)
        ApiKey.objects.get(pk=key.pk).mark(
            Status.RATE_LIMITED, observed_at=timezone.now(), cooldown_until=later
        )
        sooner = timezone.now() + timedelta(seconds=60)

        key.mark(Status.RATE_LIMITED, observed_at=observed_at, cooldown_until=sooner)

        assert ApiKey.objects.get(pk=key.pk).cooldown_until == later
        assert key.cooldown_until == later


class TestPlainSave:
    """``save()`` of an existing key without ``update_fields`` writes only
    the editable fields, so a stale instance loses no status or count."""

    def test_stale_save_keeps_exceeded(self, vendor, make_key):
        key = make_key(vendor)
        stale = ApiKey.objects.get(pk=key.pk)
        key.mark(Status.EXCEEDED, "quota", observed_at=timezone.now())

        stale.name = "renamed"
        stale.save()

        stored = ApiKey.objects.get(pk=key.pk)
        assert stored.name == "renamed"
        assert stored.status == Status.EXCEEDED
        assert stored.status_reason == "quota"

    def test_stale_save_keeps_usage_counts(self, vendor, make_key):
        key = make_key(vendor)
        stale = ApiKey.objects.get(pk=key.pk)
        key.record_usage(successes=3, failures=2, used_at=timezone.now())

        stale.save()

        stored = ApiKey.objects.get(pk=key.pk)
        assert stored.success_count == 3
        assert stored.failure_count == 2
        assert stored.last_used_at is not None

    def test_stale_save_keeps_priority_and_default(self, vendor, five_keys):
        stale = ApiKey.objects.get(pk=five_keys[0].pk)
        five_keys[4].set_default()
        five_keys[4].to(0)

        stale.save()

        stored = ApiKey.objects.get(pk=stale.pk)
        assert stored.order == 1
        assert stored.is_default is False
        assert priorities(vendor) == [0, 1, 2, 3, 4]

    def test_status_fields_not_written_without_update_fields(self, vendor, make_key):
        key = make_key(vendor)

        key.is_enabled = False
        key.is_exceeded = True
        key.success_count = 99
        key.save()

        stored = ApiKey.objects.get(pk=key.pk)
        assert stored.is_enabled is True
        assert stored.is_exceeded is False
        assert stored.success_count == 0

    def test_editable_fields_written(self, vendor, make_key):
        key = make_key(vendor)
        secret = fake_secret("edited")
        expires_at = timezone.now() + timedelta(days=3)

        key.secret = secret
        key.api_url = "http://127.0.0.1:9/other"
        key.config = {"api_version": "2024-10-21"}
        key.expires_at = expires_at
        key.save()

        stored = ApiKey.objects.get(pk=key.pk)
        assert stored.secret == secret
        assert stored.api_url == "http://127.0.0.1:9/other"
        assert stored.config == {"api_version": "2024-10-21"}
        assert stored.expires_at == expires_at

    def test_explicit_update_fields_written(self, vendor, make_key):
        key = make_key(vendor)

        key.is_enabled = False
        key.save(update_fields=["is_enabled"])

        assert ApiKey.objects.get(pk=key.pk).is_enabled is False

    def test_vendor_change_rejected(self, vendor, other_vendor, make_key):
        key = make_key(vendor)

        key.vendor = other_vendor
        with pytest.raises(ValidationError, match="cannot move to another vendor"):
            key.save()

        stored = ApiKey.objects.get(pk=key.pk)
        assert stored.vendor_id == vendor.pk
        assert vendor.default_key == stored


class TestBulkCreate:
    def test_first_key_of_new_vendor_is_default(self, vendor):
        ApiKey.objects.bulk_create(
            ApiKey(vendor=vendor, name=f"key{n}", secret=fake_secret())
            for n in (1, 2, 3)
        )

        defaults = ApiKey.objects.filter(vendor=vendor, is_default=True)
        assert list(defaults.values_list("name", flat=True)) == ["key1"]
        assert priorities(vendor) == [0, 1, 2]

    def test_default_per_vendor(self, vendor, other_vendor):
        ApiKey.objects.bulk_create(
            ApiKey(vendor=owner, name=f"key{n}", secret=fake_secret())
            for owner in (vendor, other_vendor)
            for n in (1, 2)
        )

        assert vendor.default_key.name == "key1"
        assert other_vendor.default_key.name == "key1"

    def test_existing_default_kept(self, vendor, make_key):
        first = make_key(vendor)

        ApiKey.objects.bulk_create(
            [ApiKey(vendor=vendor, name="key9", secret=fake_secret())]
        )

        assert vendor.default_key == first
        assert ApiKey.objects.filter(vendor=vendor, is_default=True).count() == 1


@pytest.mark.django_db(transaction=True)
class TestConcurrentPriorityChanges:
    """Threads that add, delete and move one vendor's keys at once leave
    the priorities 0..n-1, because each change locks the vendor first."""

    THREADS = 6
    ROUNDS = 8

    def run_threads(self, work) -> list[BaseException]:
        errors: list[BaseException] = []
        barrier = threading.Barrier(self.THREADS)

        def run(number: int) -> None:
            try:
                barrier.wait()
                for round_number in range(self.ROUNDS):
                    work(number, round_number)
            except BaseException as error:  # noqa: BLE001 (reported below)
                errors.append(error)
            finally:
                connection.close()

        threads = [
            threading.Thread(target=run, args=(number,))
            for number in range(self.THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return errors

    def test_creates_and_deletes_keep_priorities(self, vendor, make_key):
        make_key(vendor, name="base")

        def work(number: int, round_number: int) -> None:
            ApiKey.objects.create(
                vendor=vendor, name=f"t{number}-{round_number}", secret=fake_secret()
            )
            if round_number % 2:
                ApiKey.objects.get(
                    vendor=vendor, name=f"t{number}-{round_number - 1}"
                ).delete()

        errors = self.run_threads(work)

        assert errors == []
        count = ApiKey.objects.filter(vendor=vendor).count()
        assert count == 1 + self.THREADS * self.ROUNDS // 2
        assert priorities(vendor) == list(range(count))

    def test_creates_deletes_and_moves_keep_priorities(self, vendor, make_key):
        make_key(vendor, name="base")

        def work(number: int, round_number: int) -> None:
            key = ApiKey.objects.create(
                vendor=vendor, name=f"t{number}-{round_number}", secret=fake_secret()
            )
            if round_number % 3 == 0:
                key.to(0)
            elif round_number % 3 == 1:
                ApiKey.objects.filter(pk=key.pk).delete()
            else:
                ApiKey.objects.renumber(vendor)

        errors = self.run_threads(work)

        assert errors == []
        count = ApiKey.objects.filter(vendor=vendor).count()
        assert priorities(vendor) == list(range(count))
