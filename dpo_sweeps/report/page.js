// summary.html's script (dpo_sweeps/report/page.py writes the data blob it reads). Plain DOM + Plotly, no build step.
"use strict";
const errorBox = document.getElementById("errors");
window.addEventListener("error", (e) => { errorBox.textContent += "script error: " + e.message + "\n"; });

const D = JSON.parse(document.getElementById("data").textContent);
const P = D.points;
const byName = new Map(P.map((p, i) => [p.name, i]));
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const fmt = (v) => (v === null || v === undefined ? "-" : Number(v).toPrecision(4).replace(/\.?0+$/, "").replace(/\.?0+e/, "e"));
const folder = (name) => encodeURIComponent(name) + "/";
const ticked = new Set(P.slice(0, 5).filter((p) => p.rank !== null).map((p) => p.name));
let sortCol = "rank", sortDir = 1, current = null;

// ------------------------------------------------------------------------------------------------ header and table
document.getElementById("title").textContent = "Sweep " + D.sweep;
const counts = {};
P.forEach((p) => { counts[p.state] = (counts[p.state] || 0) + 1; });
document.getElementById("summary").innerHTML = esc(P.length + " points: " + Object.entries(counts).map(([s, n]) => n + " " + s).join(", ")
  + ". Ranked by " + D.metric + " (" + D.mode + "). ") + (Object.keys(D.fixed).length ? "Same for every point: <code>"
  + esc(Object.entries(D.fixed).map(([k, v]) => k + "=" + v).join(" ")) + "</code>." : "");

const cols = [["tick", "curves"], ["rank", "#"], ["name", "point"], ["state", "state"]]
  .concat(D.swept.map((k) => ["param:" + k, k]))
  .concat(D.columns.map((k, i) => ["value:" + i, D.labels[k] || k]))
  .concat([["files", "files"], ["error", "error"]]);
document.getElementById("head").innerHTML = cols.map(([id, label]) => `<th data-col="${esc(id)}">${esc(label)}</th>`).join("");

function cell(p, id) {
  if (id === "rank") return p.rank;
  if (id === "name") return p.name;
  if (id === "state") return p.state;
  if (id === "error") return p.error;
  if (id.startsWith("param:")) { const v = p.params[id.slice(6)]; return D.numeric[id.slice(6)] && v !== null ? Number(v) : v; }
  if (id.startsWith("value:")) return p.values[Number(id.slice(6))];
  return null;
}

function rowHtml(p) {
  const tds = [`<td><input type="checkbox" data-tick="${esc(p.name)}"${ticked.has(p.name) ? " checked" : ""}></td>`,
    `<td class="num">${p.rank ?? "-"}</td>`,
    `<td><a href="#point=${encodeURIComponent(p.name)}">${esc(p.name)}</a></td>`,
    `<td class="state-${esc(p.state)}">${esc(p.state)}</td>`];
  D.swept.forEach((k) => tds.push(`<td>${esc(p.params[k] ?? "-")}</td>`));
  p.values.forEach((v) => tds.push(`<td class="num">${fmt(v)}</td>`));
  tds.push(`<td class="files">${p.files.map((f) => `<a href="${folder(p.name) + encodeURIComponent(f)}">${esc(f)}</a>`).join("")}</td>`);
  tds.push(`<td>${esc(p.error)}</td>`);
  return `<tr data-point="${esc(p.name)}"${p.name === current ? ' class="current"' : ""}>${tds.join("")}</tr>`;
}

function renderTable() {
  const words = document.getElementById("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  let rows = P.filter((p) => {
    if (!words.length) return true;
    const text = (p.name + " " + p.state + " " + Object.entries(p.params).map(([k, v]) => k + "=" + v).join(" ")).toLowerCase();
    return words.every((w) => text.includes(w));
  });
  if (sortCol !== "rank" || sortDir !== 1) {
    rows = rows.slice().sort((a, b) => {
      const x = cell(a, sortCol), y = cell(b, sortCol);
      if (x === y) return 0;
      if (x === null || x === undefined || x === "") return 1;  // missing values last either way
      if (y === null || y === undefined || y === "") return -1;
      return (x < y ? -1 : 1) * sortDir;
    });
  }
  document.getElementById("rows").innerHTML = rows.map(rowHtml).join("");
  document.getElementById("shown").textContent = rows.length + " of " + P.length + " points shown";
  document.querySelectorAll("#head th").forEach((th) => {
    th.className = th.dataset.col === sortCol ? (sortDir > 0 ? "sorted-asc" : "sorted-desc") : "";
  });
}

document.getElementById("head").addEventListener("click", (e) => {
  const col = e.target.dataset && e.target.dataset.col;
  if (!col || col === "tick" || col === "files") return;
  sortDir = col === sortCol ? -sortDir : 1;
  sortCol = col;
  renderTable();
});
document.getElementById("filter").addEventListener("input", renderTable);
document.getElementById("rows").addEventListener("change", (e) => {
  const name = e.target.dataset && e.target.dataset.tick;
  if (!name) return;
  if (e.target.checked) ticked.add(name); else ticked.delete(name);
  drawCurves();
});

// ------------------------------------------------------------------------------------------------------ the plots
const hover = (p) => esc(p.name) + "<br>" + p.state + (p.rank ? " #" + p.rank : "") + "<br>"
  + D.columns.map((k, i) => (D.labels[k] || k) + ": " + fmt(p.values[i])).join("<br>");
const layout = (title, extra) => Object.assign({title: {text: title, font: {size: 14}}, margin: {l: 60, r: 20, t: 40, b: 50}, height: 360}, extra);
const config = {displaylogo: false, responsive: true};

function drawParcoords() {
  const el = document.getElementById("parcoords");
  const ranked = P.filter((p) => p.values[0] !== null);
  if (!D.swept.length || !ranked.length) { el.textContent = "parallel coordinates: no swept parameter with a finished point"; return; }
  const dims = D.swept.map((k) => {
    if (D.numeric[k]) {
      const vals = ranked.map((p) => Number(p.params[k]));
      const positive = vals.every((v) => v > 0), wide = positive && Math.max(...vals) / Math.min(...vals) >= 20;
      return wide ? {label: "log10 " + k, values: vals.map(Math.log10)} : {label: k, values: vals};
    }
    const cats = [...new Set(ranked.map((p) => String(p.params[k])))].sort();
    return {label: k, values: ranked.map((p) => cats.indexOf(String(p.params[k]))), tickvals: cats.map((_, i) => i), ticktext: cats};
  });
  const objective = ranked.map((p) => p.values[0]);
  dims.push({label: D.metric, values: objective});
  Plotly.newPlot(el, [{type: "parcoords", dimensions: dims,
    line: {color: objective, colorscale: "Viridis", reversescale: D.mode === "min", showscale: true}}],
    layout("swept parameters to " + D.metric), config);
}

function drawFrontier() {
  const el = document.getElementById("frontier");
  const xi = ["gen/kl_to_ref", "gen/logratio_to_ref"].map((k) => D.columns.indexOf(k)).find((i) => i >= 0 && P.some((p) => p.values[i] !== null));
  const yi = ["gen/score_after", "gen/win_rate_vs_ref"].map((k) => D.columns.indexOf(k)).find((i) => i >= 0);
  if (xi === undefined || yi === undefined) { el.textContent = "reward-KL frontier: no point ran the generation eval"; return; }
  const pts = P.filter((p) => p.values[xi] !== null && p.values[yi] !== null);
  const colourKey = D.swept[0];
  const colour = colourKey && D.numeric[colourKey] ? pts.map((p) => Number(p.params[colourKey])) : "#1f77b4";
  Plotly.newPlot(el, [{type: pts.length > 2000 ? "scattergl" : "scatter", mode: "markers", x: pts.map((p) => p.values[xi]), y: pts.map((p) => p.values[yi]),
    text: pts.map(hover), hoverinfo: "text", customdata: pts.map((p) => p.name),
    marker: {size: pts.length > 300 ? 6 : 10, color: colour, colorscale: "Viridis", showscale: Array.isArray(colour), colorbar: {title: {text: colourKey || ""}}}}],
    layout("reward-KL frontier (click a point for its answers)", {xaxis: {title: {text: D.columns[xi]}}, yaxis: {title: {text: D.columns[yi]}}, hovermode: "closest"}), config);
  el.on("plotly_click", (ev) => { location.hash = "point=" + encodeURIComponent(ev.points[0].customdata); });
}

const curveKey = document.getElementById("curve-key");
curveKey.innerHTML = D.curve_keys.map(([k, t]) => `<option value="${esc(k)}">${esc(t)}</option>`).join("");
curveKey.addEventListener("change", drawCurves);
function drawCurves() {
  const key = curveKey.value;
  const traces = [...ticked].map((n) => P[byName.get(n)]).filter((p) => p && p.curves[key])
    .map((p) => ({type: "scatter", mode: "lines+markers", name: (p.rank ? "#" + p.rank + " " : "") + p.name, x: p.curves[key][0], y: p.curves[key][1]}));
  Plotly.react(document.getElementById("curves"), traces, layout(ticked.size ? "" : "tick points in the table to draw their curves",
    {xaxis: {title: {text: "step"}}, yaxis: {title: {text: key}}, showlegend: true, legend: {orientation: "h", y: -0.25}}), config);
}

// -------------------------------------------------------------------------------------------- one point's answers
function showPoint() {
  const m = location.hash.match(/^#point=(.*)$/);
  const box = document.getElementById("detail");
  current = m ? decodeURIComponent(m[1]) : null;
  document.querySelectorAll("#rows tr.current").forEach((tr) => tr.classList.remove("current"));
  if (current === null) { box.hidden = true; return; }
  const p = P[byName.get(current)];
  box.hidden = false;
  if (!p) { box.innerHTML = `<h2>No point named ${esc(current)} in this sweep</h2>`; return; }
  const row = document.querySelector(`#rows tr[data-point="${CSS.escape(p.name)}"]`);
  if (row) row.classList.add("current");
  let html = `<h2 id="detail-name">${esc(p.name)}</h2><p>${esc(p.state)}${p.rank ? ", rank " + p.rank : ""}; `
    + D.columns.map((k, i) => esc(D.labels[k] || k) + " " + fmt(p.values[i])).join(", ") + "</p>";
  if (p.error) html += `<p class="state-failed">${esc(p.error)}</p>`;
  if (p.samples && p.samples.length) {
    const S = D.strings;
    html += "<table id='answers'><thead><tr><th>prompt</th><th>reference answer</th><th>score</th><th>trained answer</th><th>score</th></tr></thead><tbody>"
      + p.samples.map(([q, r, a, rs, as]) => `<tr><td>${esc(S[q])}</td><td>${esc(S[r])}</td><td class="num">${fmt(rs)}</td><td>${esc(S[a])}</td><td class="num">${fmt(as)}</td></tr>`).join("")
      + "</tbody></table>";
  } else if (p.files.includes("samples.jsonl")) {
    html += `<p>Answers not embedded (only the best ${D.samples_for} points' are): <a href="${folder(p.name)}samples.jsonl">samples.jsonl</a></p>`;
  } else {
    html += "<p>No held-out answers for this point (no samples.jsonl: the generation eval did not run or the point did not finish).</p>";
  }
  box.innerHTML = html;
  if (!ticked.has(p.name)) { ticked.add(p.name); renderTable(); drawCurves(); }
}
window.addEventListener("hashchange", showPoint);

// When each part was drawn (ms since navigation): what `make bench-report` reads as the page's cost.
const marks = {script: performance.now()};
renderTable(); marks.table = performance.now();
drawParcoords(); marks.parcoords = performance.now();
drawFrontier(); marks.frontier = performance.now();
drawCurves(); marks.curves = performance.now();
showPoint();
document.body.dataset.timings = JSON.stringify(Object.fromEntries(Object.entries(marks).map(([k, v]) => [k, Math.round(v)])));
document.body.dataset.readyMs = performance.now().toFixed(0);
