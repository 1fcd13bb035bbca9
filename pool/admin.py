"""Django admin for vendors and keys, for superusers only.

Secrets are write-only here: the form never renders a stored secret, and
lists and change pages show it masked. The admin has no priority controls,
so no GET request can reorder keys. The pool page reorders them by POST.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import widgets
from django.contrib.admin.actions import delete_selected
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from pool.models import ApiKey, DefaultKeyDeletionError, Vendor


def url_formfield(db_field: models.Field, **kwargs) -> forms.Field | None:
    """Build form fields, with URLs that lack a scheme read as https."""
    if isinstance(db_field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")
    return db_field.formfield(**kwargs)


class SuperuserOnlyMixin:
    """Show the model only to active superusers, whatever their permissions.

    Staff users with ``pool`` permissions use the pool page instead, where
    each action is checked on its own.
    """

    formfield_overrides = {
        models.URLField: {
            "widget": widgets.AdminURLFieldWidget,
            "assume_scheme": "https",
        },
    }

    def _is_superuser(self, request: HttpRequest) -> bool:
        user = request.user
        return user.is_active and user.is_superuser

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._is_superuser(request)

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return self._is_superuser(request)

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return self._is_superuser(request)

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return self._is_superuser(request)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return self._is_superuser(request)


@admin.register(Vendor)
class VendorAdmin(SuperuserOnlyMixin, admin.ModelAdmin):
    list_display = ["name", "slug", "protocol", "base_url", "key_count"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Vendor]:
        return super().get_queryset(request).with_key_counts()

    @admin.display(description="keys", ordering="key_count")
    def key_count(self, vendor: Vendor) -> int:
        return vendor.key_count


class ApiKeyAdminForm(forms.ModelForm):
    """The key form, with a secret that is written but never shown.

    On change a blank secret keeps the stored one.
    """

    secret = forms.CharField(
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        strip=True,
        help_text="The credential. Stored encrypted and never shown again.",
    )

    class Meta:
        model = ApiKey
        fields = ["vendor", "name", "secret", "api_url", "config", "expires_at"]
        formfield_callback = url_formfield

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Keep the stored secret out of the form's initial data, so the page
        # never renders it and ``changed_data`` lists the secret only when a
        # new one is typed.
        self.initial.pop("secret", None)
        if self.instance.pk is not None:
            self.fields["secret"].required = False
            self.fields[
                "secret"
            ].help_text = "Leave blank to keep the current secret. Stored encrypted."

    def clean_secret(self) -> str:
        secret = self.cleaned_data["secret"]
        if not secret and self.instance.pk is not None:
            return self.instance.secret
        return secret


@admin.action(description="Enable selected keys")
def enable_keys(modeladmin, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
    """Enable each key and clear its automatic status, reporting expired keys."""
    enabled = 0
    for key in queryset:
        try:
            key.enable()
        except ValidationError as error:
            modeladmin.message_user(request, " ".join(error.messages), messages.ERROR)
        else:
            enabled += 1
    if enabled:
        modeladmin.message_user(request, f"Enabled {enabled} key(s).")


@admin.action(description="Disable selected keys")
def disable_keys(modeladmin, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
    """Disable each selected key."""
    for key in queryset:
        key.disable()
    modeladmin.message_user(request, f"Disabled {len(queryset)} key(s).")


@admin.action(
    description="Delete selected keys (the default key cannot be deleted)",
    permissions=["delete"],
)
def delete_selected_keys(
    modeladmin, request: HttpRequest, queryset: QuerySet[ApiKey]
) -> HttpResponse | None:
    """Run the admin's bulk delete unless the selection contains a default key.

    The check runs before the confirmation page and again inside the
    delete, so a key that became the default meanwhile is still kept.
    """
    defaults = list(queryset.filter(is_default=True).select_related("vendor"))
    if defaults:
        names = ", ".join(f"{key.name} ({key.vendor.name})" for key in defaults)
        modeladmin.message_user(
            request,
            f"Nothing was deleted: the selection includes default keys ({names}). "
            "Make another key the default first, or delete the vendor with all "
            "its keys.",
            messages.ERROR,
        )
        return None
    try:
        # One transaction, so the deletion log entries go if the delete fails.
        with transaction.atomic():
            return delete_selected(modeladmin, request, queryset)
    except DefaultKeyDeletionError as error:
        modeladmin.message_user(request, " ".join(error.messages), messages.ERROR)
        return None


@admin.register(ApiKey)
class ApiKeyAdmin(SuperuserOnlyMixin, admin.ModelAdmin):
    form = ApiKeyAdminForm
    actions = [enable_keys, disable_keys, delete_selected_keys]
    list_display = [
        "name",
        "vendor",
        "priority",
        "masked_secret",
        "status_display",
        "is_default",
        "expires_at",
        "last_used_at",
    ]
    list_filter = ["vendor", "is_enabled", "is_default"]
    list_select_related = ["vendor"]
    search_fields = ["name", "vendor__name", "vendor__slug"]
    ordering = ["vendor__name", "order"]
    readonly_fields = [
        "masked_secret",
        "priority",
        "is_default",
        "status_display",
        "is_enabled",
        "is_exceeded",
        "is_invalid",
        "cooldown_until",
        "status_reason",
        "status_changed_at",
        "last_used_at",
        "success_count",
        "failure_count",
        "created_at",
    ]

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        # Replaced by ``delete_selected_keys``, which keeps default keys.
        actions.pop("delete_selected", None)
        return actions

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            # Moving a key to another vendor would leave two default keys.
            fields.append("vendor")
        return fields

    def get_fieldsets(self, request: HttpRequest, obj=None):
        if obj is None:
            return [(None, {"fields": ApiKeyAdminForm.Meta.fields})]
        return [
            (
                None,
                {
                    "fields": [
                        "vendor",
                        "name",
                        "masked_secret",
                        "secret",
                        "api_url",
                        "config",
                        "expires_at",
                        "priority",
                        "is_default",
                        "created_at",
                    ]
                },
            ),
            (
                "Status (use the Enable and Disable actions to change it)",
                {
                    "fields": [
                        "status_display",
                        "is_enabled",
                        "is_exceeded",
                        "is_invalid",
                        "cooldown_until",
                        "status_reason",
                        "status_changed_at",
                    ]
                },
            ),
            (
                "Usage",
                {"fields": ["last_used_at", "success_count", "failure_count"]},
            ),
        ]

    @admin.display(description="secret")
    def masked_secret(self, key: ApiKey) -> str:
        return key.masked

    @admin.display(description="priority", ordering="order")
    def priority(self, key: ApiKey) -> int:
        return key.order + 1

    @admin.display(description="status")
    def status_display(self, key: ApiKey) -> str:
        return key.status.label

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if not change:
            obj.save()
            return
        # Write only what the form changed, so a status, a usage count or a
        # priority written meanwhile by the failover service or the pool
        # page survives the edit.
        obj.save(update_fields=form.changed_data)

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context=None
    ) -> HttpResponse:
        key = self.get_object(request, object_id)
        if key is not None and key.is_default:
            return self._reject_default_deletion(request, key)
        try:
            return super().delete_view(request, object_id, extra_context)
        except DefaultKeyDeletionError:
            # The key became the default after the page was loaded.
            key = self.get_object(request, object_id)
            return self._reject_default_deletion(request, key)

    def _reject_default_deletion(
        self, request: HttpRequest, key: ApiKey
    ) -> HttpResponseRedirect:
        error = DefaultKeyDeletionError.for_key(key)
        self.message_user(request, " ".join(error.messages), messages.ERROR)
        url = reverse("admin:pool_apikey_change", args=[key.pk])
        return HttpResponseRedirect(url)
