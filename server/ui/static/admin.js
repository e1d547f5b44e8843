// pubmind workbench: charts (uPlot, committed under static/vendor) for the Dashboard and a re-tune job's loss
// curve, redrawn after each htmx refresh; confirmation of destructive buttons (data-confirm).
"use strict";
const PALETTE = ["#1f5fbf", "#b3261e", "#1e7b3c", "#a15c00", "#6b3fa0"];

function chartOpts(el, spec, width) {
  const time = !spec.xlabel;
  const series = [{label: spec.xlabel || "date"}];
  spec.series.forEach(([label], i) => {
    const s = {label, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: false};
    if (spec.bars) { s.fill = PALETTE[i % PALETTE.length] + "55"; s.points = {show: false}; s.paths = uPlot.paths.bars({size: [0.6 / spec.series.length, 40], align: i ? 1 : -1}); }
    if (spec.step) s.paths = uPlot.paths.stepped({align: 1});
    if (spec.points) { s.paths = () => null; s.points = {show: true, size: 9, fill: PALETTE[i % PALETTE.length]}; }
    if (spec.share) s.value = (u, v) => v == null ? "–" : (100 * v).toFixed(1) + "%";
    series.push(s);
  });
  const axes = [{}, {size: 56}];
  if (spec.share) axes[1].values = (u, vals) => vals.map((v) => (100 * v).toFixed(0) + "%");
  return {width, height: 220, scales: {x: {time}}, series, axes, legend: {live: true}};
}

function promotionsSpec(rows) {
  // version served over time, one series per adapter (points at each promotion or rollback)
  const adapters = [...new Set(rows.map((r) => r.adapter))];
  const xs = rows.map((r) => r.at);
  return {x: xs, points: true, series: adapters.map((a) => [a, rows.map((r) => (r.adapter === a ? r.to : null))])};
}

function draw(el) {
  const src = el.parentElement.querySelector("script.chart-data");
  if (!src || typeof uPlot === "undefined") return;
  let spec = JSON.parse(src.textContent);
  if (el.dataset.chart === "promotions") spec = promotionsSpec(spec);
  if (!spec.x || spec.x.length === 0 || spec.series.every(([, ys]) => ys.every((y) => y == null))) {
    el.textContent = "No data in this window.";
    el.classList.add("empty");
    return;
  }
  if (el._plot) el._plot.destroy();
  el.innerHTML = "";
  const width = Math.max(240, el.clientWidth || el.parentElement.clientWidth - 32);
  el._plot = new uPlot(chartOpts(el, spec, width), [spec.x, ...spec.series.map(([, ys]) => ys)], el);
}

function drawAll(root) {
  root.querySelectorAll("[data-chart]").forEach(draw);
  root.querySelectorAll("pre.log").forEach((p) => { p.scrollTop = p.scrollHeight; });  // the tail: newest last
}

document.addEventListener("DOMContentLoaded", () => drawAll(document));
document.addEventListener("htmx:afterSwap", (e) => drawAll(e.detail.target.parentElement || document));
let resizeTimer;
window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(() => drawAll(document), 150); });
document.addEventListener("submit", (e) => {
  const b = e.submitter;
  if (b && b.dataset.confirm && !window.confirm(b.dataset.confirm)) e.preventDefault();
});
