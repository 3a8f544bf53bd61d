// The operator page's live plots: polls /api/series every 2 s and redraws one SVG line
// chart per node, lane and measure. Built with DOM calls only (never innerHTML), so node
// and lane names are text, whatever they contain.
"use strict";
(function () {
  const grid = document.getElementById("plot-grid");
  if (!grid) return;
  const SVG = "http://www.w3.org/2000/svg";
  const W = 380, H = 140, PAD = { l: 44, r: 8, t: 10, b: 20 };
  const MEASURES = [
    { key: 1, title: "throughput", unit: "req/s" },
    { key: 2, title: "latency", unit: "ms" },
  ];

  function el(name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function fmt(v) {
    if (v >= 100) return v.toFixed(0);
    if (v >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }

  function span(ms) {
    return ms < 120000 ? Math.round(ms / 1000) + " s" : Math.round(ms / 60000) + " min";
  }

  // One chart: points are [t_ms, value] with value a number. The x axis spans the history
  // there is (at least a minute, at most the admin's window), so a young node's points are
  // not squeezed against "now".
  function chart(figure, points, measure, now, historyMs) {
    const svg = figure.querySelector("svg");
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const first = points.length ? points[0][0] : now;
    const windowMs = Math.min(historyMs, Math.max(60000, now - first));
    const max = Math.max(1e-9, ...points.map((p) => p[1])) * 1.1;
    const x = (t) => PAD.l + ((t - (now - windowMs)) / windowMs) * (W - PAD.l - PAD.r);
    const y = (v) => H - PAD.b - (v / max) * (H - PAD.t - PAD.b);
    svg.appendChild(el("line", { x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b, class: "axis" }));
    svg.appendChild(el("line", { x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: H - PAD.b, class: "axis" }));
    svg.appendChild(el("text", { x: PAD.l - 4, y: PAD.t + 8, class: "tick", "text-anchor": "end" }, fmt(max)));
    svg.appendChild(el("text", { x: PAD.l - 4, y: H - PAD.b, class: "tick", "text-anchor": "end" }, "0"));
    svg.appendChild(el("text", { x: PAD.l, y: H - 4, class: "tick" }, "-" + span(windowMs)));
    svg.appendChild(el("text", { x: W - PAD.r, y: H - 4, class: "tick", "text-anchor": "end" }, "now"));
    if (points.length === 0) {
      svg.appendChild(el("text", { x: W / 2, y: H / 2, class: "tick", "text-anchor": "middle" }, "no samples"));
      return;
    }
    const d = points
      .map((p, i) => (i === 0 ? "M" : "L") + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1))
      .join(" ");
    svg.appendChild(el("path", { d: d, class: "series", "data-points": points.length }));
    const last = points[points.length - 1];
    svg.appendChild(el("circle", { cx: x(last[0]).toFixed(1), cy: y(last[1]).toFixed(1), r: 2.5, class: "last" }));
    figure.querySelector(".value").textContent = fmt(last[1]) + " " + measure.unit;
  }

  function figureFor(id, title) {
    let f = document.getElementById(id);
    if (f) return f;
    f = document.createElement("figure");
    f.id = id;
    f.className = "plot";
    const cap = document.createElement("figcaption");
    const name = document.createElement("span");
    name.textContent = title;
    const value = document.createElement("b");
    value.className = "value";
    cap.appendChild(name);
    cap.appendChild(value);
    f.appendChild(cap);
    f.appendChild(el("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H }));
    grid.appendChild(f);
    return f;
  }

  async function poll() {
    const status = document.getElementById("plot-status");
    try {
      const r = await fetch(grid.dataset.source, { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const data = await r.json();
      if (status) status.textContent = data.series.length ? "" : "no lane has reported samples yet";
      data.series.forEach((s, i) => {
        for (const m of MEASURES) {
          const pts = s.points.filter((p) => typeof p[m.key] === "number").map((p) => [p[0], p[m.key]]);
          const f = figureFor("plot-" + i + "-" + m.title, s.node + " · " + s.lane + " · " + m.title);
          f.dataset.node = s.node;
          f.dataset.lane = s.lane;
          chart(f, pts, m, data.now_ms, data.window_ms);
        }
      });
      document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
    } catch (e) {
      if (status) status.textContent = "the admin node did not answer: " + e.message;
    }
  }

  poll();
  setInterval(poll, 2000);
})();
