"""The dialogs of the pool page: add and edit a key, vendor settings and
add a vendor.

``GET`` returns the form, as a fragment for the page's ``<dialog>`` or as a
page of its own without JavaScript. An invalid ``POST`` returns the form
again with status 422 and the errors next to their fields. Nothing is
saved, and no secret is rendered back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.forms import Form
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.debug import (
    sensitive_post_parameters,
    sensitive_variables,
)
from django.views.decorators.http import require_http_methods
from django_htmx.http import (
    HttpResponseClientRedirect,
    reswap,
    retarget,
    trigger_client_event,
)

from pool import audit
from pool.forms import AddVendorForm, KeyForm, VendorSettingsForm
from pool.models import ApiKey, Vendor
from pool.views import get_key, pool_permission, render_table

logger = logging.getLogger(__name__)

CLOSE_DIALOG_EVENT = "pool:close-dialog"

# The dialogs' form fields that may carry a credential: extra headers too,
# because a vendor may take a token in a header of its own. Error reports
# (the technical 500 page, mailed reports) show these as stars.
SENSITIVE_FIELDS = ("secret", "headers")


def hide_secrets(view: Callable) -> Callable:
    """Keep the posted secret, and every local variable of the view and of
    the code it calls, out of error reports."""
    return sensitive_post_parameters(*SENSITIVE_FIELDS)(sensitive_variables()(view))


def render_dialog(
    request: HttpRequest, context: dict, status: int = 200
) -> HttpResponse:
    """Render a dialog's form: the fragment for htmx, else a whole page."""
    template = "pool/_dialog.html" if request.htmx else "pool/dialog_page.html"
    context = {
        **admin.site.each_context(request),
        "is_nav_sidebar_enabled": False,
        **context,
    }
    return render(request, template, context, status=status)


def close_dialog(request: HttpRequest, vendor: Vendor) -> HttpResponse:
    """Return the response to a saved dialog: the new table and a close event for htmx,
    else a redirect to the page."""
    if not request.htmx:
        return redirect("pool:vendor", vendor=vendor.slug)
    response = render_table(request, vendor)
    response = retarget(response, "#pool-table")
    response = reswap(response, "outerHTML")
    return trigger_client_event(response, CLOSE_DIALOG_EVENT)


def reload_page(request: HttpRequest, vendor: Vendor) -> HttpResponse:
    """Return a full load of the vendor's page, whose header, vendor list
    and table all change."""
    url = reverse("pool:vendor", kwargs={"vendor": vendor.slug})
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)


def invalid(
    request: HttpRequest, context: dict, form: Form | VendorSettingsForm
) -> HttpResponse:
    # Field names only: a rejected value may be a secret.
    logger.info(
        "Rejected %s %s: invalid fields %s",
        request.method,
        request.path,
        ", ".join(sorted(form.errors)),
    )
    return render_dialog(request, context, status=422)


@require_http_methods(["GET", "POST"])
@pool_permission("view_apikey", "add_apikey")
@hide_secrets
def add_key(request: HttpRequest, vendor: str) -> HttpResponse:
    vendor_obj = get_object_or_404(Vendor, slug=vendor)
    key = ApiKey(vendor=vendor_obj)
    initial = {"name": ApiKey.objects.suggest_name(vendor_obj)}
    data = request.POST if request.method == "POST" else None
    form = KeyForm(
        data,
        instance=key,
        initial=initial,
        vendor=vendor_obj,
        protocol=vendor_obj.protocol,
    )
    context = {
        "form": form,
        "vendor": vendor_obj,
        "title": f"Add a key to {vendor_obj.name}",
        "action": request.path,
        "submit_label": "Add key",
    }
    if data is None:
        return render_dialog(request, context)
    if not save_or_report(form):
        return invalid(request, context, form)
    audit.log_addition(request.user, key)
    logger.info("Added key %s to vendor %s", key.name, vendor_obj.slug)
    messages.success(request, f"{key.name} is added at priority {key.order + 1}.")
    return close_dialog(request, vendor_obj)


@require_http_methods(["GET", "POST"])
@pool_permission("view_apikey", "change_apikey")
@hide_secrets
def edit_key(request: HttpRequest, vendor: str, key_id: int) -> HttpResponse:
    vendor_obj, key = get_key(vendor, key_id)
    data = request.POST if request.method == "POST" else None
    form = KeyForm(data, instance=key, vendor=vendor_obj, protocol=vendor_obj.protocol)
    context = {
        "form": form,
        "vendor": vendor_obj,
        "key": key,
        "title": f"Edit {key.name}",
        "action": request.path,
        "submit_label": "Save",
    }
    if data is None:
        return render_dialog(request, context)
    if not save_or_report(form):
        return invalid(request, context, form)
    if form.changed_fields:
        audit.log_change(request.user, key, audit.describe_fields(form.changed_fields))
        logger.info("Changed key %s of vendor %s", key.name, vendor_obj.slug)
        messages.success(request, f"{key.name} is saved.")
    else:
        messages.info(request, f"{key.name} had no changes to save.")
    return close_dialog(request, vendor_obj)


def save_or_report(form: Form) -> bool:
    """Validate and save ``form``; report a name taken meanwhile as a field
    error. Return whether it was saved."""
    if not form.is_valid():
        return False
    try:
        with transaction.atomic():
            form.save()
    except IntegrityError:
        # Another request took the name between the check and the save.
        form.add_error("name", "This vendor already has a key with this name.")
        return False
    return True


@require_http_methods(["GET", "POST"])
@pool_permission("view_apikey", "change_vendor", "change_apikey")
@hide_secrets
def vendor_settings(request: HttpRequest, vendor: str) -> HttpResponse:
    vendor_obj = get_object_or_404(Vendor, slug=vendor)
    # A vendor made elsewhere may have no key yet; the first one saved
    # becomes its default key.
    key = vendor_obj.default_key or ApiKey(
        vendor=vendor_obj, name=ApiKey.objects.suggest_name(vendor_obj)
    )
    key.vendor = vendor_obj

    data = request.POST if request.method == "POST" else None
    form = VendorSettingsForm(data, vendor=vendor_obj, key=key)
    context = {
        "settings_form": form,
        "vendor": vendor_obj,
        "key": key,
        "title": f"Settings of {vendor_obj.name}",
        "action": request.path,
        "submit_label": "Save",
    }
    if data is None:
        return render_dialog(request, context)

    key_added = key._state.adding
    if key_added and not request.user.has_perm("pool.add_apikey"):
        raise PermissionDenied(
            "You need the pool.add_apikey permission: saving these settings "
            "adds the vendor's default key."
        )
    if not form.is_valid():
        return invalid(request, context, form)
    vendor_changed, key_changed = form.save()
    log_settings(request, vendor_obj, key, key_added, vendor_changed, key_changed)
    messages.success(request, f"The settings of {vendor_obj.name} are saved.")
    return reload_page(request, vendor_obj)


def log_settings(
    request: HttpRequest,
    vendor: Vendor,
    key: ApiKey,
    key_added: bool,
    vendor_changed: list[str],
    key_changed: list[str],
) -> None:
    if vendor_changed:
        audit.log_change(request.user, vendor, audit.describe_fields(vendor_changed))
        logger.info("Changed the settings of vendor %s", vendor.slug)
    if key_added:
        audit.log_addition(request.user, key, "Added as the default key.")
    elif key_changed:
        audit.log_change(request.user, key, audit.describe_fields(key_changed))


@require_http_methods(["GET", "POST"])
@pool_permission("view_apikey", "add_vendor", "add_apikey")
@hide_secrets
def add_vendor(request: HttpRequest) -> HttpResponse:
    data = request.POST if request.method == "POST" else None
    form = AddVendorForm(data)
    context = {
        "form": form,
        "title": "Add a vendor",
        "action": request.path,
        "submit_label": "Add vendor",
    }
    if data is None:
        return render_dialog(request, context)
    if not form.is_valid():
        return invalid(request, context, form)
    try:
        vendor, key = form.save()
    except IntegrityError:
        # Another request took the slug or the name since the form checked.
        form.add_error(
            None, "A vendor with this slug or name exists. Pick another one."
        )
        return invalid(request, context, form)
    audit.log_addition(request.user, vendor)
    audit.log_addition(request.user, key, "Added as the default key.")
    logger.info("Added vendor %s with default key %s", vendor.slug, key.name)
    messages.success(
        request, f"{vendor.name} is added with its default key {key.name}."
    )
    return reload_page(request, vendor)
