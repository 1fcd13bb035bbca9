// The pool page: dialogs, drag-and-drop priority, keyboard focus and error
// messages. Everything else is plain htmx attributes in the templates.
"use strict";

(function () {
  const dialogId = "pool-dialog";
  const dialogBodyId = "pool-dialog-body";
  const tableId = "pool-table";
  // The server sends this header with its 403 for a failed CSRF check.
  const errorHeader = "X-Keypool-Error";

  // The id of the table control that had focus when a request started. An
  // outerHTML swap replaces that control, so focus goes back to the control
  // with the same id in the new table (the ids are stable per key).
  let focusedControlId = null;

  function sendCsrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    if (meta) {
      document.body.setAttribute(
        "hx-headers", JSON.stringify({"X-CSRFToken": meta.content})
      );
    }
  }

  function showMessage(text, level) {
    const dialog = document.getElementById(dialogId);
    // An open modal dialog hides the page's message region.
    const region = dialog?.open
      ? dialogMessageRegion(dialog)
      : document.getElementById("pool-messages");
    if (!region) {
      return;
    }
    const list = document.createElement("ul");
    list.className = "messagelist";
    const item = document.createElement("li");
    item.className = level;
    item.textContent = text;
    list.append(item);
    region.replaceChildren(list);
  }

  function dialogMessageRegion(dialog) {
    let region = dialog.querySelector(".pool-dialog-messages");
    if (!region) {
      region = document.createElement("div");
      region.className = "pool-dialog-messages";
      region.setAttribute("role", "alert");
      // Inside the body, so the next form loaded into the dialog drops it.
      document.getElementById(dialogBodyId).prepend(region);
    }
    return region;
  }

  // The protocol whose settings the form shows: the protocol field, or on
  // the add-vendor form left at "Preset's protocol", the preset's protocol.
  function selectedProtocol(form) {
    const select = form.querySelector('select[name="protocol"]');
    if (!select) {
      return null;
    }
    const preset = form.querySelector('select[name="preset"]');
    if (select.value || !preset?.dataset.presetProtocols) {
      return select.value;
    }
    return JSON.parse(preset.dataset.presetProtocols)[preset.value] || "";
  }

  // Show only the settings fields of the protocol picked in the form.
  function showProtocolFields(form) {
    const protocol = selectedProtocol(form);
    if (protocol === null) {
      return;
    }
    form.querySelectorAll("[data-protocols]").forEach((input) => {
      const protocols = input.dataset.protocols.split(" ");
      const row = input.closest(".form-row");
      row.hidden = !protocols.includes(protocol);
    });
  }

  // Put a dragged row back where it was, for a drop that is not sent.
  function undoDrag(event) {
    const tbody = event.from;
    event.item.remove();
    tbody.insertBefore(event.item, tbody.children[event.oldIndex] || null);
  }

  function postOrder(table, event) {
    const rows = table.querySelectorAll("tr[data-key-id]");
    const ids = Array.from(rows, (row) => row.dataset.keyId);
    const maxLength = Number(table.dataset.maxOrderLength || Infinity);
    if (ids.length > maxLength) {
      // Django rejects such a request in the CSRF middleware, before the view.
      undoDrag(event);
      showMessage(
        `${ids.length} keys are too many to reorder by dragging: one request ` +
          `takes at most ${maxLength} (DATA_UPLOAD_MAX_NUMBER_FIELDS). Use ` +
          "Move up and Move down, or raise that setting.",
        "error",
      );
      return;
    }
    htmx.ajax("POST", table.dataset.reorderUrl, {
      source: table,
      target: "#pool-table",
      swap: "outerHTML",
      values: {order: ids},
    });
  }

  function makeSortable(tbody) {
    Sortable.create(tbody, {
      handle: ".pool-handle",
      animation: 150,
      onEnd(event) {
        if (event.oldIndex !== event.newIndex) {
          postOrder(tbody.closest("#pool-table"), event);
        }
      },
    });
  }

  // ArrowUp and ArrowDown on a focused drag handle move its key, as the
  // Move up and Move down buttons do; focus stays on the handle.
  function moveWithKeyboard(event) {
    const direction = {ArrowUp: "up", ArrowDown: "down"}[event.key];
    const handle = event.target.closest(".pool-handle");
    if (!direction || !handle) {
      return;
    }
    event.preventDefault();
    const row = handle.closest("tr[data-key-id]");
    const button = document.getElementById(`move-${direction}-${row.dataset.keyId}`);
    if (!button || button.disabled) {
      return;
    }
    htmx.ajax("POST", button.form.getAttribute("hx-post"), {
      source: button.form,
      target: `#${tableId}`,
      swap: "outerHTML",
      values: {direction: direction},
    });
  }

  function rememberFocus() {
    const active = document.activeElement;
    const table = document.getElementById(tableId);
    focusedControlId = active?.id && table?.contains(active) ? active.id : null;
  }

  // A Move button that is now disabled (its key reached either end) cannot
  // take focus, so the key's other Move button gets it.
  function restoreFocus() {
    if (!focusedControlId) {
      return;
    }
    let control = document.getElementById(focusedControlId);
    const move = /^move-(up|down)-(\d+)$/.exec(focusedControlId);
    if (move && control?.disabled) {
      const other = move[1] === "up" ? "down" : "up";
      control = document.getElementById(`move-${other}-${move[2]}`);
    }
    focusedControlId = null;
    if (control && !control.disabled && document.activeElement !== control) {
      control.focus();
    }
  }

  // htmx calls this for the page and then for each element it swaps in,
  // which may itself be the form or the table body.
  function setUp(root) {
    const matches = (selector) => [
      ...(root.matches(selector) ? [root] : []),
      ...root.querySelectorAll(selector),
    ];
    matches(".pool-sortable").forEach(makeSortable);
    matches("form").forEach(showProtocolFields);
  }

  document.addEventListener("DOMContentLoaded", sendCsrfToken);

  htmx.onLoad(setUp);

  document.addEventListener("change", (event) => {
    if (event.target.matches('select[name="protocol"], select[name="preset"]')) {
      showProtocolFields(event.target.form);
    }
  });

  document.addEventListener("keydown", moveWithKeyboard);

  document.addEventListener("htmx:beforeRequest", rememberFocus);

  document.addEventListener("htmx:afterSettle", (event) => {
    if (event.detail.target.id === tableId) {
      restoreFocus();
    }
  });

  // Open the dialog when htmx puts a form into it.
  document.addEventListener("htmx:afterSwap", (event) => {
    const dialog = document.getElementById(dialogId);
    if (event.detail.target.id === dialogBodyId && dialog && !dialog.open) {
      dialog.showModal();
    }
  });

  document.addEventListener("pool:close-dialog", () => {
    document.getElementById(dialogId)?.close();
  });

  document.addEventListener("click", (event) => {
    const dialog = document.getElementById(dialogId);
    if (dialog?.open && event.target.closest(".pool-dialog-cancel")) {
      event.preventDefault();
      dialog.close();
    }
  });

  document.addEventListener("htmx:responseError", (event) => {
    const xhr = event.detail.xhr;
    let text;
    if (xhr.getResponseHeader(errorHeader) === "csrf") {
      text = xhr.responseText;
    } else if (xhr.status === 403) {
      text = "You do not have permission to do this.";
    } else {
      text = `The request failed with status ${xhr.status}. Reload the page and try again.`;
    }
    showMessage(text, "error");
  });

  document.addEventListener("htmx:sendError", () => {
    showMessage("The server did not answer. Check the connection and try again.", "error");
  });
})();
