"""The pool page in Debian's Chromium: dialog, drag-and-drop and switches."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from pool.models import ApiKey
from tests.conftest import fake_secret
from tests.fixtures.browser import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(page, username: str, next_path: str) -> None:
    page.goto(f"/admin/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"**{next_path}")


def row_names(page) -> list[str]:
    return page.locator("#pool-table tbody tr").evaluate_all(
        "rows => rows.map(row => row.dataset.keyName)"
    )


def drag_to_top(page, key_name: str) -> None:
    """Drag the key's handle above the first row with the real mouse."""
    handle = page.get_by_role(
        "button", name=f"Drag to reorder {key_name}"
    ).bounding_box()
    first_row = page.locator("#pool-table tbody tr").first.bounding_box()
    page.mouse.move(
        handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
    )
    page.mouse.down()
    target_x = handle["x"] + handle["width"] / 2
    target_y = first_row["y"] + 3
    page.mouse.move(target_x, target_y + 30, steps=10)
    page.mouse.move(target_x, target_y, steps=10)
    page.mouse.up()


def test_pool_page_in_chromium(page, operator, vendor, make_key, screenshot_dir):
    default_key = make_key(vendor)
    make_key(vendor, api_url="http://127.0.0.1:9/a/rather/long/path/to/the/api/v1")
    expired = make_key(vendor)
    ApiKey.objects.filter(pk=expired.pk).update(
        expires_at=timezone.now() - timedelta(days=1)
    )
    url = f"/pool/{vendor.slug}/"
    sign_in(page, operator.username, url)

    # Add a key through the dialog.
    page.get_by_role("link", name="Add key").click()
    dialog = page.locator("#pool-dialog")
    dialog.get_by_label("API key").fill(fake_secret("browser"))
    assert dialog.get_by_label("Name").input_value() == "key4"
    page.screenshot(path=screenshot_dir / "pool-dialog.png")
    dialog.get_by_role("button", name="Add key").click()
    page.locator("#pool-table tr[data-key-name='key4']").wait_for()
    assert not dialog.is_visible()
    assert row_names(page) == ["key1", "key2", "key3", "key4"]

    # Drag it to the top; the order survives a reload.
    with page.expect_response("**/reorder/") as reorder:
        drag_to_top(page, "key4")
    assert reorder.value.status == 200
    page.reload()
    assert row_names(page)[0] == "key4"
    assert ApiKey.objects.get(name="key4").order == 0

    # Disable a key and see its badge.
    key2_row = page.locator("#pool-table tr[data-key-name='key2']")
    key2_row.get_by_role("switch", name="key2 enabled").click()
    key2_row = page.locator("#pool-table tr[data-key-name='key2']")
    key2_row.locator(".pool-badge", has_text="Disabled").wait_for()
    assert key2_row.get_by_role("switch").get_attribute("aria-checked") == "false"

    # The expired key has no switch and the default key has no Delete.
    expired_row = page.locator(f"#pool-table tr[data-key-id='{expired.pk}']")
    assert expired_row.locator(".pool-badge").inner_text() == "Expired"
    assert expired_row.get_by_role("switch").count() == 0
    default_row = page.locator(f"#pool-table tr[data-key-id='{default_key.pk}']")
    assert default_row.locator("summary", has_text="Delete").count() == 0
    assert key2_row.locator("summary", has_text="Delete").count() == 1

    # "vendor default" stays on one line at 1400 px.
    quiet_urls = page.locator(".pool-url .pool-quiet")
    line_counts = quiet_urls.evaluate_all(
        "spans => spans.map(span => span.getClientRects().length)"
    )
    assert line_counts == [1, 1, 1]
    # Every column, the actions included, fits without scrolling sideways.
    table = page.locator("#pool-table")
    overflow = table.evaluate("table => table.scrollWidth - table.clientWidth")
    assert overflow <= 0
    page.screenshot(path=screenshot_dir / "pool-page.png", full_page=True)
    page.emulate_media(color_scheme="dark")
    # The admin's colour transitions would otherwise be caught halfway.
    page.screenshot(
        path=screenshot_dir / "pool-page-dark.png",
        full_page=True,
        animations="disabled",
    )


def test_errors_and_stale_order_are_shown(
    page, operator, vendor, make_key, screenshot_dir
):
    make_key(vendor)
    make_key(vendor)
    url = f"/pool/{vendor.slug}/"
    sign_in(page, operator.username, url)

    # A 422 form is swapped into the dialog, which stays open.
    page.get_by_role("link", name="Edit key2").click()
    dialog = page.locator("#pool-dialog")
    dialog.get_by_label("Expires").fill("2020-01-01T10:00")
    with page.expect_response("**/edit/") as edit:
        dialog.get_by_role("button", name="Save").click()
    assert edit.value.status == 422
    dialog.locator("#id_expires_at_error").wait_for()
    assert dialog.is_visible()
    page.screenshot(path=screenshot_dir / "pool-dialog-error.png")
    dialog.get_by_role("link", name="Cancel").click()
    assert not dialog.is_visible()

    # A key added elsewhere makes the dragged list stale: 409 and reload.
    make_key(vendor, name="added-elsewhere")
    with page.expect_response("**/reorder/") as reorder:
        drag_to_top(page, "key2")
    assert reorder.value.status == 409
    page.get_by_text("The list changed while you were dragging").wait_for()
    assert row_names(page) == ["key1", "key2", "added-elsewhere"]


def test_vendor_settings_show_protocol_fields(
    page, operator, vendor, make_key, screenshot_dir
):
    make_key(vendor)
    url = f"/pool/{vendor.slug}/"
    sign_in(page, operator.username, url)

    page.get_by_role("link", name="Vendor settings").click()
    dialog = page.locator("#pool-dialog")
    dialog.get_by_label("Organization").wait_for()
    assert not dialog.get_by_label("API version").is_visible()
    dialog.get_by_label("Protocol").select_option("azure")
    assert dialog.get_by_label("API version").is_visible()
    assert not dialog.get_by_label("Organization").is_visible()
    page.screenshot(path=screenshot_dir / "pool-vendor-settings.png")


def focused_id(page) -> str:
    return page.evaluate("document.activeElement && document.activeElement.id")


def wait_for_focus(page, element_id: str) -> None:
    page.wait_for_function(
        "id => document.activeElement && document.activeElement.id === id",
        arg=element_id,
    )


def test_keyboard_focus_survives_table_swap(page, operator, vendor, make_key):
    first, second, third = make_key(vendor), make_key(vendor), make_key(vendor)
    sign_in(page, operator.username, f"/pool/{vendor.slug}/")

    # Move down twice with the keyboard: focus stays on the key's button,
    # then moves to Move up once Move down is disabled at the bottom.
    page.focus(f"#move-down-{first.pk}")
    with page.expect_response("**/move/"):
        page.keyboard.press("Enter")
    wait_for_focus(page, f"move-down-{first.pk}")
    assert row_names(page) == ["key2", "key1", "key3"]
    with page.expect_response("**/move/"):
        page.keyboard.press("Enter")
    wait_for_focus(page, f"move-up-{first.pk}")
    assert row_names(page) == ["key2", "key3", "key1"]
    assert page.locator(f"#move-down-{first.pk}").is_disabled()

    # The switch keeps focus after the swap.
    page.focus(f"#switch-{second.pk}")
    with page.expect_response("**/disable/"):
        page.keyboard.press("Space")
    page.locator(f"#switch-{second.pk}[aria-checked='false']").wait_for()
    wait_for_focus(page, f"switch-{second.pk}")

    # ArrowUp on the focused drag handle moves the key and keeps focus.
    handle = page.get_by_role("button", name="Drag to reorder key3")
    handle.focus()
    with page.expect_response("**/move/"):
        page.keyboard.press("ArrowUp")
    wait_for_focus(page, f"handle-{third.pk}")
    assert row_names(page) == ["key3", "key2", "key1"]
    assert list(vendor.keys.order_by("order").values_list("name", flat=True)) == [
        "key3",
        "key2",
        "key1",
    ]
    with page.expect_response("**/move/"):
        page.keyboard.press("ArrowDown")
    wait_for_focus(page, f"handle-{third.pk}")
    assert row_names(page) == ["key2", "key3", "key1"]


def test_stale_csrf_token_message_shown(page, operator, vendor, make_key):
    make_key(vendor)
    key = make_key(vendor)
    sign_in(page, operator.username, f"/pool/{vendor.slug}/")

    # Signing in again in another tab rotates the CSRF cookie, so the
    # tokens in this page no longer match it.
    origin = page.evaluate("location.origin")
    page.context.add_cookies(
        [{"name": "csrftoken", "value": "a" * 32, "url": f"{origin}/"}]
    )
    with page.expect_response("**/disable/") as disable:
        page.locator(f"#switch-{key.pk}").click()

    assert disable.value.status == 403
    message = page.locator("#pool-messages .error")
    message.wait_for()
    assert message.inner_text() == (
        "Your session changed or the page is out of date. Reload the page and "
        "try again."
    )
    key.refresh_from_db()
    assert key.is_enabled


def test_too_long_drag_not_sent(page, operator, vendor, make_key, settings):
    for _ in range(3):
        make_key(vendor)
    sign_in(page, operator.username, f"/pool/{vendor.slug}/")
    # After signing in, whose form has more fields than this limit.
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 2
    page.reload()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))

    drag_to_top(page, "key3")

    message = page.locator("#pool-messages .error")
    message.wait_for()
    assert "3 keys are too many to reorder by dragging" in message.inner_text()
    assert not [url for url in requests if url.endswith("/reorder/")]
    assert row_names(page) == ["key1", "key2", "key3"]


def test_add_vendor_shows_preset_settings(page, operator, vendor, screenshot_dir):
    sign_in(page, operator.username, f"/pool/{vendor.slug}/")

    page.get_by_role("link", name="Add vendor").click()
    dialog = page.locator("#pool-dialog")
    dialog.get_by_label("Preset").select_option("azure-openai")
    assert dialog.get_by_label("API version").is_visible()
    assert not dialog.get_by_label("Organization").is_visible()
    assert dialog.get_by_label("Extra headers").is_visible()
    page.screenshot(path=screenshot_dir / "pool-add-vendor-azure.png")

    dialog.get_by_label("Preset").select_option("mistral")
    assert not dialog.get_by_label("API version").is_visible()
    assert dialog.get_by_label("Organization").is_visible()

    dialog.get_by_label("Protocol").select_option("azure")
    assert dialog.get_by_label("API version").is_visible()
