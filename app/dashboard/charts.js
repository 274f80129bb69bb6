// Hand-drawn charts: an SVG column chart (spend per day) and horizontal bars (spend per model).
// Bar lengths use Number() (geometry only); every label shows the exact decimal string.
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, text) {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // points: [{label: "2026-12-01", value: "0.0123"}], one per day, oldest first.
  function columns(container, points, { currency = "", unit = "" } = {}) {
    // Drawn at the container's own width, so labels keep their size on a phone.
    const W = Math.max(280, Math.round(container.clientWidth || 640)), H = 200, left = 8, right = 8, top = 16, bottom = 26;
    const max = Math.max(0, ...points.map((p) => Number(p.value)));
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Spend per day", class: "columns" });
    const innerW = W - left - right, innerH = H - top - bottom;
    const step = innerW / Math.max(points.length, 1);
    const barW = Math.max(2, step * 0.7);
    root.append(svg("line", { class: "axis", x1: left, x2: W - right, y1: top + innerH, y2: top + innerH }));
    points.forEach((p, i) => {
      const v = Number(p.value);
      const hgt = max > 0 ? Math.max(v > 0 ? 2 : 0, (v / max) * innerH) : 0;
      const x = left + i * step + (step - barW) / 2;
      const bar = svg("rect", { class: "bar", x: x.toFixed(1), y: (top + innerH - hgt).toFixed(1), width: barW.toFixed(1), height: hgt.toFixed(1), rx: 2 });
      bar.append(svg("title", {}, `${p.label}: ${Gw.money(p.value)} ${currency}${p.requests !== undefined ? ` · ${p.requests} calls` : ""}`));
      root.append(bar);
      const every = Math.ceil(points.length / Math.max(3, Math.floor(W / 100)));
      if (i % every === 0 || i === points.length - 1) {
        const anchor = i === 0 ? "start" : i === points.length - 1 ? "end" : "middle";
        const at = i === 0 ? x : i === points.length - 1 ? x + barW : x + barW / 2;
        root.append(svg("text", { x: at.toFixed(1), y: H - 8, "text-anchor": anchor }, p.label.slice(5)));
      }
    });
    const peak = points.reduce((a, p) => (Number(p.value) > Number(a.value) ? p : a), points[0] || { value: "0", label: "" });
    if (max > 0) root.append(svg("text", { x: W - right, y: 11, "text-anchor": "end" }, `peak ${Gw.money(peak.value)} ${currency} on ${peak.label}`));
    Gw.fill(container, root);
    return root;
  }

  // rows: [{name, value}] — largest first.
  function bars(container, rows, { currency = "" } = {}) {
    const max = Math.max(0, ...rows.map((r) => Number(r.value)));
    const grid = Gw.h("div", { class: "hbar", role: "list" });
    for (const r of rows) {
      const fill = Gw.h("div", { class: "fill" });
      fill.style.width = (max > 0 ? (Number(r.value) / max) * 100 : 0).toFixed(1) + "%";
      grid.append(
        Gw.h("div", { class: "name", title: r.name, role: "listitem" }, r.name),
        Gw.h("div", { class: "track" }, fill),
        Gw.h("div", { class: "amt" }, `${Gw.money(r.value)} ${currency}`),
      );
    }
    Gw.fill(container, grid);
    return grid;
  }

  return { columns, bars };
})();
