// The pool page: dialogs, drag-and-drop priority and error messages.
// Everything else is plain htmx attributes in the templates.
"use strict";

(function () {
  const dialogId = "pool-dialog";
  const dialogBodyId = "pool-dialog-body";

  function sendCsrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    if (meta) {
      document.body.setAttribute(
        "hx-headers", JSON.stringify({"X-CSRFToken": meta.content})
      );
    }
  }

  function showMessage(text, level) {
    const region = document.getElementById("pool-messages");
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

  // Show only the settings fields of the protocol picked in the form.
  function showProtocolFields(form) {
    const select = form.querySelector('select[name="protocol"]');
    if (!select) {
      return;
    }
    form.querySelectorAll("[data-protocols]").forEach((input) => {
      const protocols = input.dataset.protocols.split(" ");
      const row = input.closest(".form-row");
      row.hidden = !protocols.includes(select.value);
    });
  }

  function postOrder(table) {
    const rows = table.querySelectorAll("tr[data-key-id]");
    const ids = Array.from(rows, (row) => row.dataset.keyId);
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
          postOrder(tbody.closest("#pool-table"));
        }
      },
    });
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
    if (event.target.matches('select[name="protocol"]')) {
      showProtocolFields(event.target.form);
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
    const status = event.detail.xhr.status;
    const text = status === 403
      ? "You do not have permission to do this."
      : `The request failed with status ${status}. Reload the page and try again.`;
    showMessage(text, "error");
  });

  document.addEventListener("htmx:sendError", () => {
    showMessage("The server did not answer. Check the connection and try again.", "error");
  });
})();
