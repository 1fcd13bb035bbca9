"""The pool page and the actions on its rows.

Each action returns the fragment to swap for an htmx request (one with
an ``HX-Request`` header), and a redirect back to the page for a plain
form post, so everything but dragging works without JavaScript. Bad input gets a 4xx
with the page or fragment and its message, and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.views.debug import SafeExceptionReporterFilter
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_GET, require_POST

from pool import audit, services
from pool.models import (
    ApiKey,
    StaleOrderError,
    Vendor,
    validate_config,
    validate_secret,
)
from pool.rows import build_rows

logger = logging.getLogger(__name__)

STALE_ORDER_MESSAGE = "The list changed while you were dragging; it has been reloaded."
CSRF_FAILURE_MESSAGE = (
    "Your session changed or the page is out of date. Reload the page and try again."
)
# pool.js shows the response text of a 403 that carries this header.
ERROR_HEADER = "X-Keypool-Error"


class SecretSafeExceptionReporterFilter(SafeExceptionReporterFilter):
    """Cleanse sensitive POST parameters and variables even with DEBUG on.

    Django's own filter is active only with DEBUG off, so its technical 500
    page would show a secret posted to a view that marks it sensitive.
    """

    def is_active(self, request: HttpRequest | None) -> bool:
        return True


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """Return 403 for a failed CSRF check, with a message to reload the page.

    The usual cause is a page opened before the user signed in again in
    another tab, which changed the CSRF token.
    """
    logger.warning(
        "Rejected %s %s: CSRF check failed: %s", request.method, request.path, reason
    )
    response = HttpResponseForbidden(
        CSRF_FAILURE_MESSAGE, content_type="text/plain; charset=utf-8"
    )
    response[ERROR_HEADER] = "csrf"
    return response


def pool_permission(*codenames: str) -> Callable:
    """Require a signed-in staff user with each ``pool.<codename>``; others
    get the admin login page or 403."""

    def decorator(view: Callable) -> Callable:
        @staff_member_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            for codename in codenames:
                if not request.user.has_perm(f"pool.{codename}"):
                    raise PermissionDenied(f"You need the pool.{codename} permission.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def page_context(request: HttpRequest, vendor: Vendor | None) -> dict:
    """Build the context of the page and of its table fragment."""
    user = request.user
    context = {
        **admin.site.each_context(request),
        "is_nav_sidebar_enabled": False,
        "title": vendor.name if vendor else "API keys",
        "vendors": Vendor.objects.with_key_counts(),
        "vendor": vendor,
        "rows": [],
        "can_add": user.has_perm("pool.add_apikey"),
        "can_change": user.has_perm("pool.change_apikey"),
        "can_delete": user.has_perm("pool.delete_apikey"),
        "can_change_vendor": user.has_perm("pool.change_vendor")
        and user.has_perm("pool.change_apikey"),
        "can_add_vendor": user.has_perm("pool.add_vendor")
        and user.has_perm("pool.add_apikey"),
        # pool.js checks a dragged list against this before posting it.
        "max_order_length": settings.DATA_UPLOAD_MAX_NUMBER_FIELDS,
    }
    if vendor is not None:
        keys = list(vendor.keys.order_by("order", "pk"))
        for key in keys:
            key.vendor = vendor
        context["rows"] = build_rows(keys)
    return context


def render_page(
    request: HttpRequest, vendor: Vendor | None, status: int = 200
) -> HttpResponse:
    return render(
        request, "pool/page.html", page_context(request, vendor), status=status
    )


def render_table(
    request: HttpRequest, vendor: Vendor, status: int = 200, **extra
) -> HttpResponse:
    """Render the key table with the messages and the vendor list, which
    htmx swaps out of band."""
    context = {**page_context(request, vendor), **extra}
    return render(request, "pool/_table_response.html", context, status=status)


def action_done(request: HttpRequest, vendor: Vendor, message: str) -> HttpResponse:
    """Return the response to a successful action: the table for htmx, else
    a redirect to the page."""
    messages.success(request, message)
    if request.htmx:
        return render_table(request, vendor)
    return redirect("pool:vendor", vendor=vendor.slug)


def action_failed(
    request: HttpRequest, vendor: Vendor, message: str, status: int
) -> HttpResponse:
    """Return the response to a rejected action, with ``status`` and
    ``message``: the table for htmx, else the whole page."""
    logger.info(
        "Rejected %s %s for vendor %s with status %s: %s",
        request.method,
        request.path,
        vendor.slug,
        status,
        message,
    )
    messages.error(request, message)
    if request.htmx:
        return render_table(request, vendor, status=status)
    return render_page(request, vendor, status=status)


def get_key(vendor_slug: str, key_id: int) -> tuple[Vendor, ApiKey]:
    vendor = get_object_or_404(Vendor, slug=vendor_slug)
    key = get_object_or_404(ApiKey, pk=key_id, vendor=vendor)
    key.vendor = vendor
    return vendor, key


# Page ------------------------------------------------------------------------


@require_GET
@pool_permission("view_apikey")
def index(request: HttpRequest) -> HttpResponse:
    return render_page(request, Vendor.objects.order_by("name").first())


@require_GET
@pool_permission("view_apikey")
def vendor_page(request: HttpRequest, vendor: str) -> HttpResponse:
    return render_page(request, get_object_or_404(Vendor, slug=vendor))


@require_GET
@pool_permission("view_apikey")
def key_history(request: HttpRequest, vendor: str, key_id: int) -> HttpResponse:
    vendor_obj, key = get_key(vendor, key_id)
    context = {
        **admin.site.each_context(request),
        "is_nav_sidebar_enabled": False,
        "title": f"History of {key.name}",
        "vendor": vendor_obj,
        "key": key,
        "entries": audit.key_history(key),
    }
    template = "pool/_history.html" if request.htmx else "pool/history.html"
    return render(request, template, context)


# Row actions -----------------------------------------------------------------


def parse_ids(values: list[str]) -> list[int] | None:
    try:
        return [int(value) for value in values]
    except ValueError:
        return None


@require_POST
@pool_permission("view_apikey", "change_apikey")
def reorder(request: HttpRequest, vendor: str) -> HttpResponse:
    vendor_obj = get_object_or_404(Vendor, slug=vendor)
    # A list longer than DATA_UPLOAD_MAX_NUMBER_FIELDS fails in the CSRF
    # middleware, before this view, so pool.js checks the length first.
    ids = parse_ids(request.POST.getlist("order"))
    if not ids:
        return action_failed(
            request,
            vendor_obj,
            "The new order is missing or invalid: send every key id of the "
            "vendor as an integer in the field “order”.",
            status=400,
        )
    old_ids = list(vendor_obj.keys.order_by("order", "pk").values_list("pk", flat=True))
    try:
        ApiKey.objects.reorder(vendor_obj, ids)
    except StaleOrderError:
        return action_failed(request, vendor_obj, STALE_ORDER_MESSAGE, status=409)
    log_reorder(request, vendor_obj, old_ids, ids)
    return action_done(request, vendor_obj, "The new order is saved.")


def log_reorder(
    request: HttpRequest, vendor: Vendor, old_ids: list[int], new_ids: list[int]
) -> None:
    # One entry on the vendor, not one per key, so that the number of
    # queries does not grow with the number of keys. Key histories show
    # their vendor's entries too.
    if old_ids == new_ids:
        return
    names = dict(vendor.keys.values_list("pk", "name"))
    order = ", ".join(names[pk] for pk in new_ids)
    audit.log_change(request.user, vendor, f"Changed priority order to {order}.")


@require_POST
@pool_permission("view_apikey", "change_apikey")
def move(request: HttpRequest, vendor: str, key_id: int) -> HttpResponse:
    vendor_obj, key = get_key(vendor, key_id)
    direction = request.POST.get("direction", "")
    if direction not in ("up", "down"):
        return action_failed(
            request,
            vendor_obj,
            f"The direction {direction!r} is invalid: use “up” or “down”.",
            status=400,
        )
    old_priority = key.order + 1
    if not key.move(direction):
        end = "top" if direction == "up" else "bottom"
        message = f"{key.name} is already at the {end}; nothing was moved."
        return action_failed(request, vendor_obj, message, status=400)
    message = f"Moved {direction}: priority {old_priority} to {key.order + 1}."
    audit.log_change(request.user, key, message)
    return action_done(request, vendor_obj, f"{key.name}: {message}")


@require_POST
@pool_permission("view_apikey", "change_apikey")
def enable(request: HttpRequest, vendor: str, key_id: int) -> HttpResponse:
    vendor_obj, key = get_key(vendor, key_id)
    try:
        key.enable()
    except ValidationError as error:
        return action_failed(request, vendor_obj, error.messages[0], status=409)
    audit.log_change(request.user, key, "Enabled.")
    logger.info("Enabled key %s of vendor %s", key.name, vendor_obj.slug)
    return action_done(request, vendor_obj, f"{key.name} is enabled.")


@require_POST
@pool_permission("view_apikey", "change_apikey")
def disable(request: HttpRequest, vendor: str, key_id: int) -> HttpResponse:
    vendor_obj, key = get_key(vendor, key_id)
    key.disable()
    audit.log_change(request.user, key, "Disabled.")
    logger.info("Disabled key %s of vendor %s", key.name, vendor_obj.slug)
    return action_done(request, vendor_obj, f"{key.name} is disabled.")


@require_POST
@pool_permission("view_apikey", "delete_apikey")
def delete(request: HttpRequest, vendor: str, key_id: int) -> HttpResponse:
    vendor_obj, key = get_key(vendor, key_id)
    try:
        key.delete()
    except ValidationError as error:
        return action_failed(request, vendor_obj, error.messages[0], status=409)
    key.pk = key_id
    audit.log_deletion(request.user, key)
    logger.info("Deleted key %s of vendor %s", key.name, vendor_obj.slug)
    return action_done(request, vendor_obj, f"{key.name} is deleted.")


TEST_OUTCOMES = {
    "success": "the vendor accepted the key",
    "exceeded": "the key is out of quota",
    "invalid": "the vendor rejected the key",
    "rate_limited": "the key is rate limited",
    "transient": "the vendor failed to answer; try again later",
    "request_error": "the vendor rejected the test request",
}


@require_POST
@pool_permission("view_apikey", "change_apikey")
@sensitive_variables()
def probe_key(request: HttpRequest, vendor: str, key_id: int) -> HttpResponse:
    """Send one request with the key and show the result in its row.

    ``probe()`` marks the key from the vendor's response.
    """
    vendor_obj, key = get_key(vendor, key_id)
    unsendable = check_sendable(key)
    if unsendable:
        return action_failed(request, vendor_obj, unsendable, status=409)
    attempt = services.probe(key)
    # Write the usage counts now, so the row shows this request.
    services.flush_usage()
    outcome = TEST_OUTCOMES.get(attempt.outcome, attempt.outcome)
    message = f"Test of {key.name}: {outcome}."
    if attempt.outcome == "success":
        messages.success(request, message)
    else:
        messages.warning(request, message)
    if request.htmx:
        return render_table(
            request, vendor_obj, tested_key_id=key.pk, attempt=attempt, outcome=outcome
        )
    return redirect("pool:vendor", vendor=vendor_obj.slug)


def check_sendable(key: ApiKey) -> str:
    """Return why ``key`` cannot be sent in a request, or "" if it can.

    Keys saved without the model validators (by code or before they
    existed) may hold a secret or a header that the HTTP client rejects
    with an exception whose message contains the value.
    """
    try:
        validate_secret(key.secret)
        validate_config(key.config)
    except ValidationError as error:
        return f"{key.name} was not tested: {error.messages[0]} Edit the key to fix it."
    return ""
