// The live decisions, as the console streams them (server-sent events). Text only: nothing
// from an event is ever read as HTML.
"use strict";
(function () {
  const list = document.getElementById("events");
  if (!list || !window.EventSource) return;
  const stream = new EventSource("/api/events");
  stream.onmessage = function (message) {
    const event = JSON.parse(message.data);
    const item = document.createElement("li");
    const identity = event.identity !== undefined ? event.identity : event.into;
    item.textContent = event.type + " · identity " + identity + (event.camera_id ? " · " + event.camera_id : "");
    list.insertBefore(item, list.firstChild);
    while (list.children.length > 50) list.removeChild(list.lastChild);
  };
})();
