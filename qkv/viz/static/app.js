// qkv attention explorer. Talks only to its own server (/api/*); no other requests.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, data: null };

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

async function loadInfo() {
  const res = await fetch("/api/info");
  state.info = await res.json();
  $("run-info").textContent = `run ${state.info.run} · ${state.info.family} · task ${state.info.task} · ${state.info.heads} heads`;
  if (!state.info.translation) {
    $("run").textContent = "Show attention";
    $("beam").hidden = true;
  }
}

async function run(event) {
  event.preventDefault();
  showError("");
  $("run").disabled = true;
  try {
    const res = await fetch("/api/attention", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: $("text").value, beam: Number($("beam").value) }),
    });
    const data = await res.json();
    if (!res.ok) {
      showError(data.error || `error ${res.status}`);
      return;
    }
    state.data = data;
    setup();
  } catch (e) {
    showError(`the server did not answer (${e})`);
  } finally {
    $("run").disabled = false;
  }
}

function setup() {
  const d = state.data;
  $("source").textContent = d.source;
  $("output").textContent = d.output;
  const kind = $("kind");
  const previous = kind.value;
  kind.innerHTML = "";
  for (const [k, v] of Object.entries(d.kinds)) option(kind, k, v.name);
  if (previous && d.kinds[previous]) kind.value = previous;
  $("step").max = Math.max(0, d.steps - 1);
  $("step").value = Math.max(0, d.steps - 1);
  fillLayerHead();
  $("result").hidden = false;
  draw();
}

function fillLayerHead() {
  const k = state.data.kinds[$("kind").value];
  for (const [id, count, extra] of [["layer", k.weights.length, null], ["head", k.weights[0].length, "mean"]]) {
    const sel = $(id);
    const previous = sel.value;
    sel.innerHTML = "";
    for (let i = 0; i < count; i++) option(sel, String(i), String(i));
    if (extra) option(sel, extra, "mean of heads");
    if ([...sel.options].some((o) => o.value === previous)) sel.value = previous;
  }
}

function matrix() {
  const k = state.data.kinds[$("kind").value];
  const heads = k.weights[Number($("layer").value)];
  const head = $("head").value;
  if (head !== "mean") return heads[Number(head)];
  return heads[0].map((row, t) => row.map((_, s) => heads.reduce((acc, h) => acc + h[t][s], 0) / heads.length));
}

function color(w) {
  const a = Math.min(1, Math.max(0, w));
  return `rgba(59, 91, 219, ${a.toFixed(3)})`;
}

function drawHeatmap(k, m, step) {
  const table = $("heatmap");
  table.innerHTML = "";
  const head = table.createTHead().insertRow();
  head.appendChild(document.createElement("th"));
  for (const key of k.keys) {
    const th = document.createElement("th");
    th.textContent = key;
    head.appendChild(th);
  }
  const body = table.createTBody();
  m.forEach((row, t) => {
    const tr = body.insertRow();
    if (step !== null) tr.className = t === step ? "current" : t > step ? "future" : "";
    const th = document.createElement("th");
    th.textContent = k.queries[t];
    tr.appendChild(th);
    row.forEach((w, s) => {
      const td = tr.insertCell();
      td.className = "cell";
      td.style.background = color(w);
      td.title = `${k.queries[t]} → ${k.keys[s]}: ${w.toFixed(3)}`;
      td.dataset.weight = w;
    });
  });
}

function drawLines(k, m, step) {
  const svg = $("lines");
  const ns = "http://www.w3.org/2000/svg";
  svg.innerHTML = "";
  svg.classList.remove("focus");
  const rowH = 22, left = 10, gap = 220;
  const width = 2 * 150 + gap, height = Math.max(k.queries.length, k.keys.length) * rowH + 20;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const rows = step === null ? m.map((_, t) => t) : [step];
  const lines = [];
  rows.forEach((t) => m[t].forEach((w, s) => {
    if (w < 0.02) return;
    const l = document.createElementNS(ns, "line");
    l.setAttribute("x1", left + 150); l.setAttribute("y1", 16 + t * rowH);
    l.setAttribute("x2", left + 150 + gap); l.setAttribute("y2", 16 + s * rowH);
    l.setAttribute("stroke-width", (1 + 4 * w).toFixed(2));
    l.setAttribute("stroke-opacity", w.toFixed(3));
    l.dataset.q = t; l.dataset.k = s;
    svg.appendChild(l);
    lines.push(l);
  }));
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

function draw() {
  const kind = $("kind").value;
  const k = state.data.kinds[kind];
  const m = matrix();
  const stepped = kind === "dec" || kind === "cross";
  $("step-control").hidden = !stepped;
  const step = stepped ? Number($("step").value) : null;
  if (stepped) {
    const produced = k.queries.slice(0, step + 1).join(" ");
    $("step-label").textContent = `${step + 1}/${k.queries.length}: ${produced}`;
  }
  const head = $("head").value === "mean" ? "mean over heads" : `head ${$("head").value}`;
  $("caption").textContent = `${k.name}, layer ${$("layer").value}, ${head}: ${k.queries.length} × ${k.keys.length}`;
  drawHeatmap(k, m, step);
  drawLines(k, m, step);
}

$("input-form").addEventListener("submit", run);
$("kind").addEventListener("change", () => { fillLayerHead(); draw(); });
$("layer").addEventListener("change", draw);
$("head").addEventListener("change", draw);
$("step").addEventListener("input", draw);
loadInfo().catch((e) => showError(`could not reach the server (${e})`));
