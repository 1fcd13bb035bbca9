"""Forms of the pool page: add and edit a key, vendor settings, add a vendor.

Every form field that takes a secret is a password input that never renders
its value back, so a form shown again after an error is empty there.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import partial

from django import forms
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from pool.models import (
    HEADER_NAME_PATTERN,
    MAX_HEADERS,
    ApiKey,
    Protocol,
    Vendor,
    validate_header,
    validate_http_url,
    validate_secret,
    validate_setting,
)
from pool.presets import PRESETS_BY_SLUG, VENDOR_PRESETS

# The key settings that each protocol reads from ``ApiKey.config``, besides
# ``headers``, which every protocol takes.
PROTOCOL_SETTINGS: dict[str, tuple[str, ...]] = {
    Protocol.OPENAI: ("organization", "project"),
    Protocol.AZURE: ("api_version",),
    Protocol.ANTHROPIC: (),
    Protocol.GEMINI: (),
}
SETTING_FIELDS = ("api_version", "organization", "project")

CUSTOM_PRESET = "custom"
PLACEHOLDER_HOST = "YOUR-RESOURCE"
AZURE_API_VERSION_MESSAGE = (
    "Azure OpenAI needs an API version, for example 2024-10-21. Azure answers "
    "404 to requests without one."
)


def parse_headers(text: str) -> dict[str, str]:
    """Parse one ``Name: value`` header per line into a dict.

    Raises ``forms.ValidationError`` naming the first bad line or header,
    never a header's value.
    """
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not HEADER_NAME_PATTERN.match(name):
            raise forms.ValidationError(
                f"Line {number} is not a header: write one “Name: value” per line.",
                code="invalid_header",
            )
        value = value.strip()
        validate_header(name, value)
        if name.lower() in {known.lower() for known in headers}:
            raise forms.ValidationError(
                f"The header {name} is listed twice. Keep one line for it.",
                code="duplicate_header",
            )
        if len(headers) == MAX_HEADERS:
            raise forms.ValidationError(
                f"There are more than {MAX_HEADERS} extra headers. At most "
                f"{MAX_HEADERS} are allowed.",
                code="too_many_headers",
            )
        headers[name] = value
    return headers


def format_headers(headers: dict[str, str]) -> str:
    return "\n".join(f"{name}: {value}" for name, value in headers.items())


def secret_field(**kwargs) -> forms.CharField:
    """Build a write-only API key field that rejects what HTTP cannot send."""
    return forms.CharField(
        label="API key",
        strip=True,
        validators=[validate_secret],
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        **kwargs,
    )


class HttpUrlField(forms.URLField):
    """A URL field that takes only http and https, with the model's message.

    It replaces the default validator, which also takes ftp, and the field's
    "invalid" message, which would hide the model validator's own.
    """

    default_validators = [validate_http_url]
    default_error_messages = {"invalid": validate_http_url.message}


def url_field(label: str, help_text: str, **kwargs) -> forms.URLField:
    return HttpUrlField(
        label=label,
        max_length=500,
        assume_scheme="https",
        help_text=help_text,
        **kwargs,
    )


def setting_fields() -> dict[str, forms.Field]:
    """Build the fields of the protocol settings and the extra headers."""
    return {
        "api_version": forms.CharField(
            label="API version",
            required=False,
            validators=[partial(validate_setting, "api_version")],
            help_text="Azure OpenAI only, e.g. 2024-10-21.",
        ),
        "organization": forms.CharField(
            required=False,
            validators=[partial(validate_setting, "organization")],
            help_text="OpenAI only: the organization ID.",
        ),
        "project": forms.CharField(
            required=False,
            validators=[partial(validate_setting, "project")],
            help_text="OpenAI only: the project ID.",
        ),
        "headers": forms.CharField(
            label="Extra headers",
            required=False,
            widget=forms.Textarea(attrs={"rows": 3}),
            help_text=(
                f"Sent with every request: one “Name: value” per line, at most "
                f"{MAX_HEADERS}. Authentication and connection headers are "
                "set by the pool."
            ),
        ),
    }


def tag_setting_fields(
    fields: dict[str, forms.Field], shown_protocol: str | None = None
) -> None:
    """Tag each settings field with the protocols that read it, for the
    script that shows only the fields of the protocol picked.

    With ``shown_protocol``, the fields that protocol does not read are
    rendered hidden, so they do not flash up before the script runs.
    """
    for name in SETTING_FIELDS:
        if name in fields:
            readers = [p for p, names in PROTOCOL_SETTINGS.items() if name in names]
            fields[name].widget.attrs["data-protocols"] = " ".join(readers)
            fields[name].initially_hidden = (
                shown_protocol is not None and shown_protocol not in readers
            )


def settings_config(cleaned_data: dict, protocol: str) -> dict:
    """Return the ``config`` entries of ``protocol``'s settings and the
    extra headers in ``cleaned_data``."""
    config = {}
    for name in PROTOCOL_SETTINGS[protocol]:
        if cleaned_data.get(name):
            config[name] = cleaned_data[name]
    if cleaned_data.get("headers"):
        config["headers"] = cleaned_data["headers"]
    return config


def check_vendor_name(name: str, vendor: Vendor | None = None) -> None:
    """Raise ``ValidationError`` if another vendor has ``name`` in any case.

    The check runs the model's own constraint, so it compares exactly as
    the database does.
    """
    candidate = Vendor(name=name)
    if vendor is not None and vendor.pk is not None:
        candidate.pk = vendor.pk
        candidate._state.adding = False
    try:
        candidate.validate_constraints()
    except ValidationError as error:
        # The model reports the expression constraint for the whole form.
        raise ValidationError(error.messages[0], code="unique") from None


class DateTimeLocalInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self, attrs: dict | None = None) -> None:
        super().__init__(attrs, format="%Y-%m-%dT%H:%M")


class KeyForm(forms.ModelForm):
    """The fields of one key: name, secret, API URL, expiry and settings.

    ``protocol`` selects the settings fields shown; ``None`` shows those of
    every protocol (the vendor settings dialog, where the protocol itself
    can change). The secret is required for a new key; on an existing key
    an empty secret keeps the stored one.
    """

    api_url = url_field(
        "API URL", "Leave empty to use the vendor's base URL.", required=False
    )
    secret = secret_field(required=False)

    field_order = [
        "name",
        "secret",
        "api_url",
        *SETTING_FIELDS,
        "headers",
        "expires_at",
    ]

    class Meta:
        model = ApiKey
        fields = ["name", "api_url", "expires_at"]
        widgets = {"expires_at": DateTimeLocalInput()}
        help_texts = {"expires_at": "Leave empty for never."}

    def __init__(
        self,
        *args,
        vendor: Vendor,
        protocol: str | None,
        shown_protocol: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fields.update(setting_fields())
        self.order_fields(self.field_order)
        self.vendor = vendor
        self.protocol = protocol
        # Validation copies the cleaned values onto the instance, so keep the
        # stored ones to tell which fields changed.
        self.stored = {
            name: getattr(self.instance, name)
            for name in ("name", "api_url", "expires_at")
        }
        self.stored["config"] = dict(self.instance.config or {})

        self.fields["api_url"].widget.attrs["placeholder"] = vendor.base_url
        zone = timezone.get_current_timezone_name()
        self.fields[
            "expires_at"
        ].help_text = f"Time zone {zone}. Leave empty for never."
        self.fields["secret"].required = self.instance._state.adding
        if not self.instance._state.adding:
            self.fields["secret"].help_text = "Leave empty to keep the current key."
        self.set_up_settings(protocol, shown_protocol or protocol)

    def set_up_settings(self, protocol: str | None, shown_protocol: str | None) -> None:
        """Keep the settings fields of ``protocol`` (all for ``None``), tag
        each with the protocols that read it and fill them from ``config``."""
        config = self.stored["config"]
        for name in SETTING_FIELDS:
            if protocol is not None and name not in PROTOCOL_SETTINGS[protocol]:
                del self.fields[name]
                continue
            self.initial.setdefault(name, config.get(name, ""))
        tag_setting_fields(self.fields, shown_protocol)
        self.initial.setdefault("headers", format_headers(config.get("headers", {})))

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        same_name = ApiKey.objects.filter(vendor=self.vendor, name=name)
        if self.instance.pk is not None:
            same_name = same_name.exclude(pk=self.instance.pk)
        if same_name.exists():
            raise forms.ValidationError(
                f"{self.vendor.name} already has a key named “{name}”. "
                "Pick another name.",
                code="unique",
            )
        return name

    def clean_expires_at(self) -> datetime | None:
        expires_at = self.cleaned_data["expires_at"]
        if expires_at is None or expires_at > timezone.now():
            return expires_at
        # An expired key may be edited without moving its expiry: the input
        # shows minutes only, so compare to the minute.
        old = self.stored["expires_at"]
        if old is not None and old.replace(second=0, microsecond=0) == expires_at:
            return old
        raise forms.ValidationError(
            "The expiry date is in the past. Pick a future date and time, or "
            "leave it empty for never.",
            code="past",
        )

    def clean_headers(self) -> dict[str, str]:
        return parse_headers(self.cleaned_data["headers"])

    def clean(self) -> dict:
        data = super().clean()
        if self.protocol is not None:
            self.require_api_version(self.protocol)
        return data

    def require_api_version(self, protocol: str) -> None:
        """Add an error to ``api_version`` if ``protocol`` needs one and the
        form has none."""
        if protocol != Protocol.AZURE or "api_version" in self.errors:
            return
        if not self.cleaned_data.get("api_version"):
            self.add_error("api_version", AZURE_API_VERSION_MESSAGE)

    def build_config(self, protocol: str) -> dict:
        """Return ``config`` with the settings that ``protocol`` reads."""
        config = {
            key: value
            for key, value in self.stored["config"].items()
            if key not in SETTING_FIELDS and key != "headers"
        }
        config.update(settings_config(self.cleaned_data, protocol))
        return config

    def apply(self, protocol: str) -> list[str]:
        """Copy the cleaned values to the key and return the changed fields.

        ``secret`` is listed when a new secret was given; the key is not
        saved.
        """
        key = self.instance
        changed = [
            name
            for name in ("name", "api_url", "expires_at")
            if name in self.fields and self.stored[name] != self.cleaned_data[name]
        ]
        config = self.build_config(protocol)
        if config != self.stored["config"]:
            changed.append("config")
        if self.cleaned_data["secret"]:
            changed.append("secret")
        for name in changed:
            if name == "config":
                key.config = config
            else:
                setattr(key, name, self.cleaned_data[name])
        return changed

    def save(self, commit: bool = True) -> ApiKey:
        """Save the key, writing only the changed fields of an existing key,
        so a status that the failover service wrote meanwhile survives."""
        key = self.instance
        protocol = self.protocol or self.vendor.protocol
        if key._state.adding:
            key.vendor = self.vendor
            self.apply(protocol)
            key.save()
            self.changed_fields = ["name"]
            return key
        self.changed_fields = self.apply(protocol)
        if self.changed_fields:
            key.save(update_fields=self.changed_fields)
        return key


class DefaultKeyForm(KeyForm):
    """The default key's fields inside the vendor settings dialog, where
    ``name`` is the vendor's name; the key is renamed through Edit."""

    class Meta(KeyForm.Meta):
        fields = ["api_url", "expires_at"]


class VendorForm(forms.ModelForm):
    base_url = url_field("Base URL", "API URL for keys that do not set their own.")

    class Meta:
        model = Vendor
        fields = ["name", "base_url", "protocol"]

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        check_vendor_name(name, self.instance)
        return name


class VendorSettingsForm:
    """The vendor settings dialog: the vendor and its default key, validated
    together and saved in one transaction."""

    def __init__(self, data: dict | None, *, vendor: Vendor, key: ApiKey) -> None:
        self.vendor_form = VendorForm(data, instance=vendor)
        # Every protocol's settings are in the form, because the protocol
        # can change in the same dialog. Those of the current one show.
        shown_protocol = (data or {}).get("protocol") or vendor.protocol
        self.key_form = DefaultKeyForm(
            data,
            instance=key,
            vendor=vendor,
            protocol=None,
            shown_protocol=shown_protocol,
        )

    @property
    def errors(self) -> dict:
        return {**self.vendor_form.errors, **self.key_form.errors}

    def is_valid(self) -> bool:
        # Both forms run, so every error shows at once.
        vendor_ok = self.vendor_form.is_valid()
        key_ok = self.key_form.is_valid()
        protocol = self.vendor_form.cleaned_data.get("protocol")
        if key_ok and protocol:
            self.key_form.require_api_version(protocol)
            key_ok = not self.key_form.errors
        return vendor_ok and key_ok

    def save(self) -> tuple[list[str], list[str]]:
        """Save the vendor and the default key atomically; return the names
        of the changed vendor fields and key fields."""
        with transaction.atomic():
            vendor_changed = list(self.vendor_form.changed_data)
            vendor = self.vendor_form.save()
            self.key_form.vendor = vendor
            self.key_form.protocol = vendor.protocol
            key = self.key_form.save()
            if not key.is_default:
                # Keys made without this page may leave a vendor with keys
                # but no default key: the key saved here becomes it.
                key.set_default()
        return vendor_changed, self.key_form.changed_fields


def preset_choices() -> list[tuple[str, str]]:
    choices = [(preset.slug, preset.name) for preset in VENDOR_PRESETS]
    return choices + [(CUSTOM_PRESET, "Other (enter the details below)")]


class AddVendorForm(forms.Form):
    """Add a vendor from a preset, or a custom one, with its first key,
    which becomes the default key."""

    preset = forms.ChoiceField(choices=preset_choices)
    name = forms.CharField(
        required=False, max_length=100, help_text="Leave empty to use the preset's."
    )
    slug = forms.SlugField(
        required=False,
        max_length=50,
        help_text="Used in URLs. Leave empty to use the preset's.",
    )
    protocol = forms.ChoiceField(
        choices=[("", "Preset's protocol"), *Protocol.choices], required=False
    )
    base_url = url_field("Base URL", "Leave empty to use the preset's.", required=False)
    secret = secret_field(
        help_text="The first key; it becomes the vendor's default key."
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields.update(setting_fields())
        tag_setting_fields(self.fields)
        # The script shows the settings of the preset's protocol while the
        # protocol field is left on "Preset's protocol".
        preset_protocols = {preset.slug: preset.protocol for preset in VENDOR_PRESETS}
        self.fields["preset"].widget.attrs["data-preset-protocols"] = json.dumps(
            preset_protocols
        )

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if name:
            check_vendor_name(name)
        return name

    def clean_headers(self) -> dict[str, str]:
        return parse_headers(self.cleaned_data["headers"])

    def clean(self) -> dict:
        data = super().clean()
        preset = PRESETS_BY_SLUG.get(data.get("preset", ""))
        name_typed = bool(data.get("name"))
        for field in ("name", "slug", "protocol", "base_url"):
            if data.get(field) or field in self.errors:
                continue
            if preset is None:
                self.add_error(field, "Enter this for a custom vendor.")
            else:
                data[field] = getattr(preset, field)
        if not name_typed and data.get("name") and "name" not in self.errors:
            # clean_name() saw an empty name, so check the preset's here.
            try:
                check_vendor_name(data["name"])
            except ValidationError as error:
                self.add_error("name", error)
        if data.get("protocol") == Protocol.AZURE and not data.get("api_version"):
            if "api_version" not in self.errors:
                self.add_error("api_version", AZURE_API_VERSION_MESSAGE)
        base_url = data.get("base_url") or ""
        if PLACEHOLDER_HOST in base_url:
            self.add_error(
                "base_url",
                f"Replace {PLACEHOLDER_HOST} in the base URL with your resource name.",
            )
        slug = data.get("slug")
        if slug and Vendor.objects.filter(slug=slug).exists():
            self.add_error(
                "slug", f"A vendor with the slug “{slug}” exists. Pick another slug."
            )
        return data

    def save(self) -> tuple[Vendor, ApiKey]:
        """Create the vendor and its default key in one transaction."""
        data = self.cleaned_data
        with transaction.atomic():
            vendor = Vendor.objects.create(
                slug=data["slug"],
                name=data["name"],
                protocol=data["protocol"],
                base_url=data["base_url"],
            )
            key = ApiKey.objects.create(
                vendor=vendor,
                name=ApiKey.objects.suggest_name(vendor),
                secret=data["secret"],
                config=settings_config(data, data["protocol"]),
            )
        return vendor, key
