// The live decisions, as the console streams them (server-sent events), and the search by
// picture. Text only: nothing from an event or an answer is ever read as HTML.
"use strict";
(function () {
  const list = document.getElementById("events");
  if (!list || !window.EventSource) return;
  const stream = new EventSource("/api/events?after=" + encodeURIComponent(list.dataset.after || "0"));
  stream.onmessage = function (message) {
    const event = JSON.parse(message.data);
    const item = document.createElement("li");
    const identity = event.identity !== undefined ? event.identity : event.into;
    item.textContent = event.type + " · identity " + identity + (event.camera_id ? " · " + event.camera_id : "");
    list.insertBefore(item, list.firstChild);
    while (list.children.length > 50) list.removeChild(list.lastChild);
  };
})();

(function () {
  const input = document.getElementById("search-file");
  const results = document.getElementById("search-results");
  if (!input || !results) return;
  input.addEventListener("change", function () {
    const file = input.files[0];
    if (!file) return;
    fetch("/api/search", {method: "POST", body: file, headers: {"Content-Type": file.type}})
      .then(function (response) { return response.json(); })
      .then(function (answer) {
        results.replaceChildren();
        if (answer.error) {
          const item = document.createElement("li");
          item.textContent = answer.error;
          results.appendChild(item);
          return;
        }
        answer.matches.forEach(function (match) {
          const item = document.createElement("li");
          const link = document.createElement("a");
          link.href = "/identities/" + Number(match.identity);
          link.textContent = "identity " + match.identity;
          item.appendChild(link);
          item.appendChild(document.createTextNode(" · cosine " + match.similarity.toFixed(3)));
          results.appendChild(item);
        });
      });
  });
})();
