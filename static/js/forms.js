// Forms marked data-submit-once send one request, however often the button is pressed.
// Pages with such a form load it in their head block; the rest of the site stays script-free.
// A second submission of a share link's Open button, its PIN, or a new link would spend
// a second use or make a second link, and its answer (the spent link's error page, or a
// link that was never shown) replaces the first one's in the browser.
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-submit-once")) return;
    if (form.dataset.submitted === "true") {
      event.preventDefault();
      return;
    }
    form.dataset.submitted = "true";
    form.setAttribute("aria-busy", "true");
    // Disabled after this event, so the pressed button's own name and value still go.
    window.setTimeout(function () {
      for (const button of form.querySelectorAll("button[type=submit], input[type=submit]")) {
        button.disabled = true;
      }
    }, 0);
  });

  // Back to a page kept whole by the browser: its forms may be sent again.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    for (const form of document.querySelectorAll("form[data-submit-once]")) {
      delete form.dataset.submitted;
      form.removeAttribute("aria-busy");
      for (const button of form.querySelectorAll("button[type=submit], input[type=submit]")) {
        button.disabled = false;
      }
    }
  });
})();
