// Every page: an HTMX request that fails (an error answer, or none at all) says so where the
// user acted. htmx swaps no 4xx/5xx answer (base.html's responseHandling); the server answers
// an HTMX request's failure with templates/_error.html, whose message is shown here as text.
"use strict";

(() => {
  // The form the user submitted, or the element that asked (a polling panel, a link).
  const anchorOf = (elt) => (elt && elt.closest ? elt.closest("form") || elt : null);

  const boxAfter = (anchor) => {
    const next = anchor.nextElementSibling;
    return next && next.classList.contains("request-error") ? next : null;
  };

  const show = (elt, text) => {
    const anchor = anchorOf(elt);
    if (!anchor || !anchor.isConnected) return;
    let box = boxAfter(anchor);
    if (!box) {
      box = document.createElement("p");
      box.className = "error request-error";
      box.setAttribute("role", "alert");
      anchor.insertAdjacentElement("afterend", box);
    }
    box.textContent = text;
  };

  // The server's message when it sent one, else a sentence naming the status.
  const messageOf = (xhr) => {
    const doc = new DOMParser().parseFromString(xhr.responseText || "", "text/html");
    const message = doc.querySelector(".request-error-message");
    if (message && message.textContent.trim()) return message.textContent.trim();
    const template = document.body.dataset.msgStatus || "The server answered %s.";
    return template.replace("%s", String(xhr.status));
  };

  document.addEventListener("htmx:beforeRequest", (event) => {
    const anchor = anchorOf(event.detail.elt);
    const box = anchor && boxAfter(anchor);
    if (box) box.remove();
  });
  document.addEventListener("htmx:responseError", (event) => {
    show(event.detail.elt, messageOf(event.detail.xhr));
  });
  const unreachable = (event) => {
    show(event.detail.elt, document.body.dataset.msgUnreachable || "The server did not answer.");
  };
  document.addEventListener("htmx:sendError", unreachable);
  document.addEventListener("htmx:timeout", unreachable);
})();
