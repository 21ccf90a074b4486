// fanout's Web Push service worker: shows each push fanout sends, with its actions, and
// reports the open (or the action clicked) to POST /v1/opens with the push's fo_open token.
//
// Served by `fanout serve` at /sdk/fanout-sw.js; no build step. From your own worker
// (registered with navigator.serviceWorker.register("/sw.js")):
//   self.FANOUT_OPENS_URL = "https://fanout.example.com/v1/opens";
//   importScripts("https://fanout.example.com/sdk/fanout-sw.js");

// importScripts leaves the worker no trace of where this file came from: the opens go to
// the worker's own origin unless FANOUT_OPENS_URL names fanout's.
const OPENS_URL = self.FANOUT_OPENS_URL || new URL("/v1/opens", self.location.origin).href;

self.addEventListener("push", (event) => {
  let push = {};
  try {
    push = event.data ? event.data.json() : {};
  } catch (error) {
    return; // not one of fanout's pushes
  }
  if (push.kind === "background") {
    return; // nothing to show: the page's own worker code handles the data
  }
  const options = {
    body: push.body || "",
    data: { fo_open: push.fo_open, url: push.url, data: push.data || {} },
  };
  if (push.image) options.image = push.image;
  if (push.tag) options.tag = push.tag;
  if (Array.isArray(push.actions)) options.actions = push.actions;
  event.waitUntil(self.registration.showNotification(push.title || "", options));
});

self.addEventListener("notificationclick", (event) => {
  const shown = event.notification.data || {};
  event.notification.close();
  const report = shown.fo_open
    ? fetch(OPENS_URL, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(
          event.action
            ? { token: shown.fo_open, action: event.action, opened_at: new Date().toISOString() }
            : { token: shown.fo_open, opened_at: new Date().toISOString() }
        ),
        keepalive: true,
      }).catch(() => undefined) // an open not reported is not worth an error to the user
    : Promise.resolve();
  const open = shown.url ? self.clients.openWindow(shown.url) : Promise.resolve();
  event.waitUntil(Promise.all([report, open]));
});
