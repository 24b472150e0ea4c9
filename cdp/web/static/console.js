// Live preview in the segment editor: post the form (with its CSRF token) and swap in the counts.
// Plain JavaScript, no build step; without it the Preview button does the same with a page load.
(function () {
  var form = document.getElementById("segment-form");
  var panel = document.getElementById("preview");
  if (!form || !panel) return;
  var timer = null;
  function refresh() {
    var body = new URLSearchParams(new FormData(form));
    fetch("/segments/preview?fragment=1", { method: "POST", body: body, credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (html) { panel.innerHTML = html; })
      .catch(function () {});
  }
  form.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(refresh, 500);
  });
})();
