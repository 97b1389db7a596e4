// qkv attention explorer. Talks only to its own server (/api/*), or, in a saved page, to nothing at all:
// the data is then inline (window.QKV_PAGE). Maps are drawn on canvases, so 512-token inputs stay fast.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, data: null, kinds: {}, sort: { key: "layer", up: true } };
const STATS = [["entropy", "entropy (nats)"], ["distance", "mean distance"], ["previous", "previous token"],
  ["same", "same token"], ["next", "next token"], ["first", "first token"], ["eos", "end of sentence"]];
const LABELLED = 60; // up to this many tokens a side: every label, and the lines view
const CELL = 22; // pixels per cell for short inputs
const THUMB = 84; // pixels of a model-view thumbnail
window.qkvRenders = 0; // how many responses have been drawn (tests wait on it)

function option(select, value, label) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label;
  select.appendChild(o);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// ----- data: one byte per weight (round(255 w)), layers × heads × queries × keys -----

function decodeKind(k) {
  const text = atob(k.weights_u8);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  const [L, H, T, S] = k.shape;
  return { ...k, L, H, T, S, bytes, means: new Array(L).fill(null) };
}

// The (T × S) map of one head, or of the mean of a layer's heads, as a Float32Array of weights.
function mapOf(k, layer, head) {
  const n = k.T * k.S;
  if (head !== "mean") {
    const start = (layer * k.H + Number(head)) * n;
    return Float32Array.from(k.bytes.subarray(start, start + n), (b) => b / 255);
  }
  if (!k.means[layer]) {
    const m = new Float32Array(n);
    for (let h = 0; h < k.H; h++) {
      const start = (layer * k.H + h) * n;
      for (let i = 0; i < n; i++) m[i] += k.bytes[start + i];
    }
    for (let i = 0; i < n; i++) m[i] /= 255 * k.H;
    k.means[layer] = m;
  }
  return k.means[layer];
}

// White to the accent blue, in proportion to weight / the kind's largest weight.
function rgb(v) {
  const a = Math.min(1, Math.max(0, v));
  return [Math.round(255 - a * (255 - 59)), Math.round(255 - a * (255 - 91)), Math.round(255 - a * (255 - 219))];
}
const LEVELS = 1024;
const PALETTE = Array.from({ length: LEVELS }, (_, i) => rgb(i / (LEVELS - 1)));

// A canvas of S × T pixels, one per cell, to be scaled up without smoothing.
function pixels(m, T, S, max) {
  const c = document.createElement("canvas");
  c.width = S;
  c.height = T;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(S, T);
  const px = img.data, f = (LEVELS - 1) / max;
  for (let i = 0; i < T * S; i++) {
    const rgbI = PALETTE[Math.min(LEVELS - 1, Math.round(m[i] * f))];
    px[4 * i] = rgbI[0]; px[4 * i + 1] = rgbI[1]; px[4 * i + 2] = rgbI[2]; px[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return c;
}

// ----- talking to the server (or reading the saved page) -----

async function loadInfo() {
  if (window.QKV_PAGE) {
    state.info = window.QKV_PAGE.info;
  } else {
    const res = await fetch("/api/info");
    state.info = await res.json();
  }
  const i = state.info;
  $("run-info").textContent = `run ${i.run} · ${i.family} · task ${i.task}` + (window.QKV_PAGE ? " · saved page" : "");
  if (!i.translation) {
    $("run").textContent = "Show attention";
    $("beam").hidden = true;
  }
  if (window.QKV_PAGE) {
    $("text").value = window.QKV_PAGE.data.source;
    for (const id of ["text", "run", "beam"]) $(id).disabled = true;
    show(window.QKV_PAGE.data, performance.now(), window.QKV_PAGE.start);
  } else if (i.example) {
    $("text").value = i.example;
    await run();
  }
}

async function run(event) {
  if (event) event.preventDefault();
  showError("");
  $("run").disabled = true;
  try {
    const res = await fetch("/api/attention", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: $("text").value, beam: Number($("beam").value) }),
    });
    const received = performance.now();
    const data = await res.json();
    if (!res.ok) {
      showError(data.error || `error ${res.status}`);
      return;
    }
    show(data, received);
  } catch (e) {
    showError(`the server did not answer (${e})`);
  } finally {
    $("run").disabled = false;
  }
}

// Draw an answer; ``start`` ({kind, layer, head}, a saved page's) picks the map shown first.
function show(data, received, start = {}) {
  state.data = data;
  state.kinds = {};
  for (const [name, k] of Object.entries(data.kinds)) state.kinds[name] = decodeKind(k);
  $("source").textContent = data.source;
  // a GPT's output is its most likely next token, often a space or a line break: show it quoted
  $("output").textContent = data.family === "gpt" ? `next token ${JSON.stringify(data.output)}` : data.output;
  $("arrow").hidden = $("output").hidden = !data.output;
  const kind = $("kind");
  const previous = kind.value;
  kind.innerHTML = "";
  for (const [name, k] of Object.entries(data.kinds)) option(kind, name, k.name);
  if (previous && data.kinds[previous]) kind.value = previous;
  if (start.kind && data.kinds[start.kind]) kind.value = start.kind;
  $("step").max = Math.max(0, data.steps - 1);
  $("step").value = Math.max(0, data.steps - 1);
  $("result").hidden = false;
  changeKind();
  if (start.layer !== undefined || start.head !== undefined) {
    openHead(start.layer ?? $("layer").value, start.head ?? $("head").value);
  }
  window.qkvLastRenderMs = performance.now() - received;
  window.qkvRenders += 1;
}

// ----- controls -----

function current() {
  const k = state.kinds[$("kind").value];
  return { k, layer: Number($("layer").value), head: $("head").value };
}

function changeKind() {
  const k = state.kinds[$("kind").value];
  $("head-control").hidden = k.H === 1; // the baselines' one attention, a rollout
  for (const [id, count, extra] of [["layer", k.L, null], ["head", k.H, k.H > 1 ? "mean" : null]]) {
    const sel = $(id);
    const previous = sel.value;
    sel.innerHTML = "";
    for (let i = 0; i < count; i++) option(sel, String(i), String(i));
    if (extra) option(sel, extra, "mean of heads");
    if ([...sel.options].some((o) => o.value === previous)) sel.value = previous;
  }
  drawModelView();
  drawTable();
  draw();
}

function openHead(layer, head) {
  $("layer").value = String(layer);
  $("head").value = String(head);
  draw();
}

// ----- the heatmap -----

function draw() {
  const { k, layer, head } = current();
  const m = mapOf(k, layer, head);
  const stepped = k.stepped;
  $("step-control").hidden = !stepped;
  const step = stepped ? Number($("step").value) : null;
  if (stepped) $("step-label").textContent = `${step + 1}/${k.T}: ${k.queries.slice(0, step + 1).join(" ")}`;
  const which = head === "mean" ? ", mean over heads" : k.H > 1 ? `, head ${head}` : "";
  const where = $("kind").value === "rollout" ? `through layer ${layer}` : `layer ${layer}`;
  $("caption").textContent = `${k.name}, ${where}${which}: ${k.T} × ${k.S}`;
  drawHeatmap(k, m, step);
  drawLegend(k);
  drawLines(k, m, step);
  for (const t of document.querySelectorAll("#model-view .thumb")) {
    t.classList.toggle("selected", t.dataset.layer === String(layer) && t.dataset.head === String(head));
  }
}

function drawHeatmap(k, m, step) {
  const canvas = $("heatmap");
  const labelled = Math.max(k.T, k.S) <= LABELLED;
  const cell = labelled ? CELL : Math.max(1, Math.floor(720 / Math.max(k.T, k.S)));
  const every = Math.max(1, Math.ceil(13 / cell)); // a label every `every` tokens, 13 px apart at least
  const margin = { left: 110, top: 90 };
  canvas.width = margin.left + k.S * cell + 4;
  canvas.height = margin.top + k.T * cell + 4;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(pixels(m, k.T, k.S, k.max || 1), margin.left, margin.top, k.S * cell, k.T * cell);
  if (step !== null) {
    ctx.fillStyle = "rgba(255, 255, 255, 0.75)"; // rows after the current step: not produced yet
    ctx.fillRect(margin.left, margin.top + (step + 1) * cell, k.S * cell, (k.T - step - 1) * cell);
    ctx.strokeStyle = "#f79009";
    ctx.lineWidth = 2;
    ctx.strokeRect(margin.left, margin.top + step * cell, k.S * cell, cell);
  }
  ctx.fillStyle = "#1d2330";
  ctx.font = `${Math.min(12, Math.max(9, cell))}px system-ui, sans-serif`;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  for (let t = 0; t < k.T; t += every) {
    const label = labelled ? k.queries[t] : `${t} ${k.queries[t]}`;
    ctx.fillText(label.slice(0, 16), margin.left - 4, margin.top + (t + 0.5) * cell);
  }
  ctx.save();
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "left";
  for (let s = 0; s < k.S; s += every) {
    const label = labelled ? k.keys[s] : `${s} ${k.keys[s]}`;
    ctx.fillText(label.slice(0, 14), -(margin.top - 4), margin.left + (s + 0.5) * cell);
  }
  ctx.restore();
  canvas.dataset.rows = k.T;
  canvas.dataset.cols = k.S;
  canvas.onmousemove = (e) => {
    const r = canvas.getBoundingClientRect();
    const s = Math.floor((e.clientX - r.left - margin.left) / cell);
    const t = Math.floor((e.clientY - r.top - margin.top) / cell);
    $("tip").textContent = t >= 0 && t < k.T && s >= 0 && s < k.S
      ? `${k.queries[t]} (${t}) → ${k.keys[s]} (${s}): ${m[t * k.S + s].toFixed(3)}` : "\u00a0";
  };
}

// The weight the heatmap shows at row t, column s (for tests and the console).
window.qkvWeight = (t, s) => {
  const { k, layer, head } = current();
  return mapOf(k, layer, head)[t * k.S + s];
};

function drawLegend(k) {
  const ctx = $("legend").getContext("2d");
  for (let x = 0; x < 160; x++) {
    const [r, g, b] = rgb(x / 159);
    ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
    ctx.fillRect(x, 0, 1, 12);
  }
  $("legend-max").textContent = (k.max || 1).toFixed(2);
}

// ----- the lines view (short inputs) -----

function drawLines(k, m, step) {
  const svg = $("lines");
  const ns = "http://www.w3.org/2000/svg";
  svg.innerHTML = "";
  svg.classList.remove("focus");
  const fits = Math.max(k.T, k.S) <= LABELLED;
  svg.style.display = fits ? "" : "none";
  $("lines-note").hidden = fits;
  $("lines-note").textContent = `${Math.max(k.T, k.S)} tokens: the lines view shows inputs up to ${LABELLED} tokens`;
  if (!fits) return;
  const rowH = 22, left = 10, gap = 220;
  svg.setAttribute("width", 2 * 150 + gap);
  svg.setAttribute("height", Math.max(k.T, k.S) * rowH + 20);
  const rows = step === null ? [...Array(k.T).keys()] : [step];
  const lines = [];
  for (const t of rows) {
    for (let s = 0; s < k.S; s++) {
      const w = m[t * k.S + s];
      if (w < 0.02) continue;
      const l = document.createElementNS(ns, "line");
      l.setAttribute("x1", left + 150); l.setAttribute("y1", 16 + t * rowH);
      l.setAttribute("x2", left + 150 + gap); l.setAttribute("y2", 16 + s * rowH);
      l.setAttribute("stroke-width", (1 + 4 * w).toFixed(2));
      l.setAttribute("stroke-opacity", w.toFixed(3));
      l.dataset.q = t; l.dataset.k = s;
      svg.appendChild(l);
      lines.push(l);
    }
  }
  const label = (text, x, y, anchor, side, index) => {
    const el = document.createElementNS(ns, "text");
    el.textContent = text;
    el.setAttribute("x", x); el.setAttribute("y", y + 4); el.setAttribute("text-anchor", anchor);
    el.addEventListener("mouseenter", () => {
      svg.classList.add("focus");
      el.classList.add("hot");
      for (const l of lines) if (l.dataset[side] === String(index)) l.classList.add("hot");
    });
    el.addEventListener("mouseleave", () => {
      svg.classList.remove("focus");
      el.classList.remove("hot");
      for (const l of lines) l.classList.remove("hot");
    });
    svg.appendChild(el);
  };
  k.queries.forEach((q, t) => label(q, left + 145, 16 + t * rowH, "end", "q", t));
  k.keys.forEach((key, s) => label(key, left + 155 + gap, 16 + s * rowH, "start", "k", s));
}

// ----- the model view: every layer × head as a thumbnail, on the kind's one colour scale -----

function drawModelView() {
  const k = state.kinds[$("kind").value];
  const grid = $("model-view");
  grid.innerHTML = "";
  const heads = k.H > 1 ? [...Array(k.H).keys(), "mean"] : [0];
  grid.style.gridTemplateColumns = `64px repeat(${heads.length}, ${THUMB}px)`;
  grid.appendChild(document.createElement("span"));
  for (const h of heads) {
    const th = document.createElement("span");
    th.className = "axis";
    th.textContent = h === "mean" ? "mean" : `head ${h}`;
    grid.appendChild(th);
  }
  const scale = Math.min(THUMB / k.S, THUMB / k.T);
  for (let layer = 0; layer < k.L; layer++) {
    const name = document.createElement("span");
    name.className = "axis";
    name.textContent = `layer ${layer}`;
    grid.appendChild(name);
    for (const h of heads) {
      const c = document.createElement("canvas");
      c.className = h === "mean" ? "thumb mean" : "thumb";
      c.width = Math.max(1, Math.round(k.S * scale));
      c.height = Math.max(1, Math.round(k.T * scale));
      c.dataset.layer = String(layer);
      c.dataset.head = String(h);
      c.title = `layer ${layer}, ${h === "mean" ? "mean of heads" : `head ${h}`}`;
      const ctx = c.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(pixels(mapOf(k, layer, h), k.T, k.S, k.max || 1), 0, 0, c.width, c.height);
      c.addEventListener("click", () => openHead(layer, h));
      grid.appendChild(c);
    }
  }
}

// ----- the head table -----

function drawTable() {
  const kind = $("kind").value;
  const rows = (state.data.stats || []).filter((r) => r.kind === kind);
  const table = $("head-table");
  table.innerHTML = "";
  $("stats-note").hidden = rows.length > 0;
  $("stats-note").textContent = "rollout combines every layer: it has no heads of its own to describe";
  if (!rows.length) return;
  const { key, up } = state.sort;
  rows.sort((a, b) => {
    const x = a[key] ?? -Infinity, y = b[key] ?? -Infinity;
    return (x < y ? -1 : x > y ? 1 : a.layer - b.layer || a.head - b.head) * (up ? 1 : -1);
  });
  const head = table.createTHead().insertRow();
  for (const [name, label] of [["layer", "layer"], ["head", "head"], ...STATS]) {
    const th = document.createElement("th");
    th.textContent = label + (name === key ? (up ? " ▲" : " ▼") : "");
    th.dataset.key = name;
    th.addEventListener("click", () => {
      state.sort = { key: name, up: name === key ? !up : name === "layer" || name === "head" };
      drawTable();
    });
    head.appendChild(th);
  }
  const body = table.createTBody();
  for (const r of rows) {
    const tr = body.insertRow();
    tr.dataset.layer = r.layer;
    tr.dataset.head = r.head;
    for (const [name] of [["layer"], ["head"], ...STATS]) {
      const td = tr.insertCell();
      const v = r[name];
      td.dataset.key = name;
      td.dataset.value = v === null ? "" : String(v);
      td.textContent = v === null ? "—" : name === "layer" || name === "head" ? String(v) : v.toFixed(3);
    }
    tr.addEventListener("click", () => openHead(r.layer, r.head));
  }
}

$("input-form").addEventListener("submit", run);
$("kind").addEventListener("change", changeKind);
$("layer").addEventListener("change", draw);
$("head").addEventListener("change", draw);
$("step").addEventListener("input", draw);
loadInfo().catch((e) => showError(`could not reach the server (${e})`));
