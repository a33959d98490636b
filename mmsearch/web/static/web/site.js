// Progressive enhancement only: every page works without this file.
(function () {
  "use strict";

  // Photo search: choosing a photo starts the search (the label reads "Search by photo"); say what is
  // happening while the upload runs, and ignore a second submit.
  document.querySelectorAll("[data-photo-form]").forEach(function (form) {
    var status = form.querySelector("[data-photo-status]");
    var input = form.querySelector('input[type="file"]');
    function start() {
      if (form.dataset.busy) return false;
      form.dataset.busy = "1";
      if (status) status.textContent = "Searching with your photo…";
      return true;
    }
    input.addEventListener("change", function () {
      if (input.files.length && start()) form.submit();
    });
    form.addEventListener("submit", function (event) {
      if (!start()) event.preventDefault();
    });
  });

  // Back-button restores come from the page cache with the form still busy: make it usable again.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    document.querySelectorAll("[data-photo-form]").forEach(function (form) {
      form.reset();
      delete form.dataset.busy;
      var status = form.querySelector("[data-photo-status]");
      if (status) status.textContent = "";
    });
  });

  // The filter panel starts closed on phones so the results come first; it stays open on wide screens.
  var facets = document.querySelector("[data-facets]");
  if (facets && window.matchMedia("(max-width: 759px)").matches) {
    facets.open = false;
  }
})();
