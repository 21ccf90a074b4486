// The event page's chart: devices per second, read from the page's throughput.json and
// drawn with uPlot; redrawn each time htmx swaps in the live part of the page.
(function () {
  "use strict";
  var plot = null;

  function draw() {
    var box = document.getElementById("chart");
    if (!box || typeof uPlot === "undefined") return;
    fetch(box.dataset.src, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (!d) return;
        var data = [d.x, d.sent, d.not_sent];
        if (plot) { plot.setData(data); return; }
        plot = new uPlot({
          width: Math.max(320, box.clientWidth || 800),
          height: 220,
          scales: { x: { time: false } },
          axes: [{ label: "seconds after publishing" }, { label: "devices/s" }],
          series: [
            { label: "s" },
            { label: "sent/s", stroke: "#2a7d4f", fill: "rgba(42,125,79,0.15)" },
            { label: "not sent/s", stroke: "#b03a2e" }
          ]
        }, data, box);
      })
      .catch(function () { /* the next swap tries again */ });
  }

  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSettle", function (e) {
    if (e.target && e.target.id === "live") draw();
  });
})();
