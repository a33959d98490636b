// The product page's question box: posts the question and shows the answer fragment the server renders
// (qa/views.py); without JavaScript the form posts to the same URL and gets a whole page.
document.addEventListener("DOMContentLoaded", function () {
  var form = document.querySelector("form.question-form[data-ask]");
  if (!form) return;
  var out = document.getElementById("answers");
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var button = form.querySelector("button");
    button.disabled = true;
    out.setAttribute("aria-busy", "true");
    fetch(form.action, { method: "POST", body: new FormData(form), headers: { "X-Fragment": "1" } })
      .then(function (r) { return r.text(); })
      .then(function (html) { out.insertAdjacentHTML("afterbegin", html); })
      .catch(function () { out.insertAdjacentHTML("afterbegin", '<div class="answer error" role="status"><p class="answer-error">The question could not be sent; try again.</p></div>'); })
      .finally(function () { button.disabled = false; out.removeAttribute("aria-busy"); });
  });
});
