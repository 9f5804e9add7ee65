// summary.html's script (dpo_sweeps/report/page.py writes the data blob it reads). Plain DOM + Plotly, no build step.
// The table and a point's answers come first and need no Plotly; Plotly's script (a non-executed <script
// type="text/plain">, most of the page's bytes) is evaluated only after that first paint, then each plot is drawn in a
// task of its own, so that the page is usable long before every plot is there (page.py says why).
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

// Every row is in the table, but the browser lays out only those on screen (content-visibility in page.css): laying
// out 1,000 rows of a classic table took longer than the rest of the page. So the rows are grids of fixed columns,
// each as wide as its widest text (measured on a canvas in the page's font, the few longest texts of the column;
// capped: the cell's title holds a cut text in full), the same in every row.
const shown = (p, id) => (id === "tick" ? "" : id.startsWith("value:") ? fmt(cell(p, id)) : String(cell(p, id) ?? "-"));
const CAP = {name: 420, error: 480, files: 640};
const family = getComputedStyle(document.body).fontFamily, pen = document.createElement("canvas").getContext("2d");
const widest = (texts, font) => { pen.font = font; return Math.max(0, ...texts.map((t) => pen.measureText(t).width)); };
document.getElementById("points").style.setProperty("--cols", cols.map(([id, label]) => {
  let px = widest([label + " \u25B2"], "bold 14px " + family);
  if (id === "tick") px = Math.max(px, 20);
  else if (id === "files") {  // links in 12px, 4px apart; a few distinct names, each measured once
    const each = new Map([...new Set(P.flatMap((p) => p.files))].map((f) => [f, widest([f], "12px " + family) + 4]));
    px = Math.max(px, ...P.map((p) => p.files.reduce((w, f) => w + each.get(f), 0)));
  }
  else px = Math.max(px, widest(P.map((p) => shown(p, id)).sort((a, b) => b.length - a.length).slice(0, 5), "14px " + family));
  return Math.ceil(Math.min(px, CAP[id] || 260) + 14) + "px";  // + the cell's padding
}).join(" "));

function rowHtml(p) {
  const tds = [`<td><input type="checkbox" data-tick="${esc(p.name)}"${ticked.has(p.name) ? " checked" : ""}></td>`,
    `<td class="num">${p.rank ?? "-"}</td>`,
    `<td title="${esc(p.name)}"><a href="#point=${encodeURIComponent(p.name)}">${esc(p.name)}</a></td>`,
    `<td class="state-${esc(p.state)}">${esc(p.state)}</td>`];
  D.swept.forEach((k) => tds.push(`<td>${esc(p.params[k] ?? "-")}</td>`));
  p.values.forEach((v) => tds.push(`<td class="num">${fmt(v)}</td>`));
  tds.push(`<td class="files">${p.files.map((f) => `<a href="${folder(p.name) + encodeURIComponent(f)}">${esc(f)}</a>`).join("")}</td>`);
  tds.push(`<td title="${esc(p.error)}">${esc(p.error)}</td>`);
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

// Plotly's script, evaluated once, on demand: inserting a <script> with its text runs it at once (no network).
function loadPlotly() {
  const src = document.getElementById("plotly-src");
  if (window.Plotly || !src) return;
  const script = document.createElement("script");
  script.textContent = src.textContent;
  document.head.appendChild(script);
  src.remove();  // its 4.8 MB of text are not needed twice
  if (!window.Plotly) throw new Error("Plotly's inlined script did not define Plotly");
}

// A plot's box says what it waits for until it is drawn; drawing clears that text first.
function box(id) {
  const el = document.getElementById(id);
  if (el.dataset.waiting) { el.textContent = ""; delete el.dataset.waiting; }
  return el;
}

function drawParcoords() {
  const el = box("parcoords");
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
  return Plotly.newPlot(el, [{type: "parcoords", dimensions: dims,
    line: {color: objective, colorscale: "Viridis", reversescale: D.mode === "min", showscale: true}}],
    layout("swept parameters to " + D.metric), config);
}

function drawFrontier() {
  const el = box("frontier");
  const xi = ["gen/kl_to_ref", "gen/logratio_to_ref"].map((k) => D.columns.indexOf(k)).find((i) => i >= 0 && P.some((p) => p.values[i] !== null));
  const yi = ["gen/score_after", "gen/win_rate_vs_ref"].map((k) => D.columns.indexOf(k)).find((i) => i >= 0);
  if (xi === undefined || yi === undefined) { el.textContent = "reward-KL frontier: no point ran the generation eval"; return; }
  const pts = P.filter((p) => p.values[xi] !== null && p.values[yi] !== null);
  const colourKey = D.swept[0];
  const colour = colourKey && D.numeric[colourKey] ? pts.map((p) => Number(p.params[colourKey])) : "#1f77b4";
  const drawn = Plotly.newPlot(el, [{type: pts.length > 2000 ? "scattergl" : "scatter", mode: "markers", x: pts.map((p) => p.values[xi]), y: pts.map((p) => p.values[yi]),
    text: pts.map(hover), hoverinfo: "text", customdata: pts.map((p) => p.name),
    marker: {size: pts.length > 300 ? 6 : 10, color: colour, colorscale: "Viridis", showscale: Array.isArray(colour), colorbar: {title: {text: colourKey || ""}}}}],
    layout("reward-KL frontier (click a point for its answers)", {xaxis: {title: {text: D.columns[xi]}}, yaxis: {title: {text: D.columns[yi]}}, hovermode: "closest"}), config);
  el.on("plotly_click", (ev) => { location.hash = "point=" + encodeURIComponent(ev.points[0].customdata); });
  return drawn;
}

const curveKey = document.getElementById("curve-key");
curveKey.innerHTML = D.curve_keys.map(([k, t]) => `<option value="${esc(k)}">${esc(t)}</option>`).join("");
curveKey.addEventListener("change", drawCurves);
function drawCurves() {
  if (!window.Plotly) return;  // the plots' turn comes after the table's; the curves are drawn then
  const key = curveKey.value;
  const traces = [...ticked].map((n) => P[byName.get(n)]).filter((p) => p && p.curves[key])
    .map((p) => ({type: "scatter", mode: "lines+markers", name: (p.rank ? "#" + p.rank + " " : "") + p.name, x: p.curves[key][0], y: p.curves[key][1]}));
  return Plotly.react(box("curves"), traces, layout(ticked.size ? "" : "tick points in the table to draw their curves",
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

// When each part was drawn (ms since navigation): what `make bench-report` reads as the page's cost. `data-usable-ms`:
// the table with every point and the answers of the point named in the URL are built and painted, and the page answers
// clicks; `data-ready-ms`: every plot is drawn and painted too.
const marks = {script: performance.now()};
const stamp = () => { document.body.dataset.timings = JSON.stringify(Object.fromEntries(Object.entries(marks).map(([k, v]) => [k, Math.round(v)]))); };
renderTable(); marks.table = performance.now();
showPoint(); marks.point = performance.now();
stamp();

// Resolves once the browser has painted what is on the page now: a frame, then a task (a hidden page, e.g. a background
// tab, gets no frames: there, a task).
const afterPaint = () => new Promise((resolve) => {
  if (document.visibilityState === "hidden") setTimeout(resolve, 0);
  else requestAnimationFrame(() => setTimeout(resolve, 0));
});

const steps = [["plotly", loadPlotly], ["parcoords", drawParcoords], ["frontier", drawFrontier], ["curves", drawCurves]];
async function drawPlots() {
  await afterPaint();
  marks.usable = performance.now();
  stamp();
  document.body.dataset.usableMs = marks.usable.toFixed(0);
  for (const [name, draw] of steps) {
    await new Promise((resolve) => setTimeout(resolve, 0));  // a task of its own: clicks in between are answered
    try {
      await draw();  // Plotly.newPlot/react resolve once the plot is built
    } catch (e) {  // one plot that fails says so and leaves the others to be drawn
      errorBox.textContent += name + ": " + e + "\n";
      console.error(e);
    }
    marks[name] = performance.now();
    stamp();
  }
  await afterPaint();
  marks.ready = performance.now();
  stamp();
  document.body.dataset.readyMs = marks.ready.toFixed(0);
}
drawPlots();
