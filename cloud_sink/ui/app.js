"use strict";
// capsight review: a queue of label items, the frame with its pre-label's box, the clip and its
// sensors on one time axis, keyboard first. Plain JavaScript: no build step.
const $ = (id) => document.getElementById(id);
const ui = { items: [], at: -1, item: null, opened: 0, box: null, series: null, drag: null };

async function api(path, options = {}) {
  const r = await fetch(path, { credentials: "same-origin", ...options });
  let body = {};
  try { body = await r.json(); } catch (e) { body = { error: r.statusText }; }
  if (r.status === 401) { location.href = "/ui/login"; }
  return { status: r.status, body };
}

function say(text, ok = false) {
  const m = $("message");
  m.textContent = text;
  m.className = ok ? "ok" : "";
}

function filters() {
  const q = new URLSearchParams();
  const add = (key, id) => { const v = $(id).value.trim(); if (v) q.set(key, v); };
  add("store", "f-store"); add("device", "f-device"); add("since", "f-since");
  add("rule", "f-rule"); add("label_status", "f-label-status"); add("barcode", "f-barcode");
  add("q", "f-q");
  return q;
}

async function loadBundles() {
  const q = filters();
  if (![...q.keys()].length) { $("bundles").textContent = ""; return null; }
  const { status, body } = await api("/api/bundles?" + q.toString());
  if (status !== 200) { say(body.error || "bundles: " + status); return null; }
  const list = $("bundles");
  list.textContent = body.bundles.length + " bundles match";
  return new Set(body.bundles.map((b) => b.device_id + "~" + b.bundle_id));
}

async function loadQueue() {
  const seq = ui.queueSeq = (ui.queueSeq || 0) + 1;
  const bundles = await loadBundles();
  const q = new URLSearchParams({ state: $("f-state").value, limit: "500" });
  const store = $("f-store").value.trim();
  if (store) q.set("store", store);
  const { status, body } = await api("/api/labels?" + q.toString());
  if (seq !== ui.queueSeq) return;  // a newer filter is on its way
  if (status !== 200) { say(body.error || "labels: " + status); return; }
  ui.items = body.items.filter((i) => !bundles || bundles.has(i.device_id + "~" + i.bundle_id));
  const c = body.counts;
  $("counts").textContent = `quick confirm ${c.quick_confirm} · needs review ${c.needs_review} · reviewed ${c.reviewed} · rejected ${c.rejected}`;
  const queue = $("queue");
  queue.textContent = "";
  ui.items.forEach((item, i) => {
    const b = document.createElement("button");
    b.dataset.item = item.item_id;
    b.innerHTML = `<span class="state"></span><span class="what"></span>`;
    b.querySelector(".state").textContent = item.state;
    b.querySelector(".what").textContent = `${item.sku || "none"} · ${item.store_id} · ${item.t_utc.slice(11, 19)}`;
    b.onclick = () => open(i);
    queue.appendChild(b);
  });
  if (ui.items.length) { await open(0); } else { ui.item = null; say("nothing in this queue", true); }
}

async function open(i) {
  const seq = ui.seq = (ui.seq || 0) + 1;  // the last item asked for wins
  ui.at = i;
  delete document.body.dataset.loaded;
  const item = ui.items[i];
  const { status, body } = await api("/api/labels/" + encodeURIComponent(item.item_id));
  if (seq !== ui.seq) return;
  if (status !== 200) { say(body.error); return; }
  ui.item = body.item;
  ui.box = ui.item.box ? [...ui.item.box] : null;
  ui.opened = performance.now();
  document.querySelectorAll("#queue button").forEach((b) => b.classList.toggle("current", b.dataset.item === item.item_id));
  $("sku").value = ui.item.sku || "";
  const cands = ui.item.candidates.map((c) => `${c.source} ${c.sku || "none"} ${c.score.toFixed(2)}`).join("; ");
  $("source").textContent = `${ui.item.state} v${ui.item.version} · ${cands || "no pre-label"}` + (ui.item.flagged ? ` · flagged: ${ui.item.flagged}` : "");
  const img = $("frame");
  img.onload = drawBox;
  img.src = "/api/frames/" + encodeURIComponent(ui.item.item_id) + ".jpg";
  const track = $("track"), base = "/api/frames/" + encodeURIComponent(ui.item.item_id) + ".jpg";
  track.replaceChildren(...(ui.item.track.length ? [document.createTextNode(`this label also goes to ${ui.item.track.length} more frames of the moment:`)] : []),
    ...ui.item.track.map((t, k) => Object.assign(document.createElement("img"), { src: `${base}?track=${k + 1}`, alt: `track frame ${k + 1}`, title: `${((t.t_ns - ui.item.t_ns) / 1e9).toFixed(2)} s` })));
  const clip = `/api/clips/${ui.item.device_id}/${ui.item.bundle_id}.mp4`;
  const video = $("video");
  const series = await api(`/api/bundles/${ui.item.device_id}/${ui.item.bundle_id}/sensors`);
  if (seq !== ui.seq) return;
  ui.series = series.status === 200 ? series.body : null;
  const offset = ui.series ? (ui.item.t_ns - ui.series.start_ns) / 1e9 : 0;
  const at = Number.isFinite(offset) ? Math.max(0, offset) : 0;
  if (!video.src.endsWith(clip)) { video.src = clip; }
  const seek = () => { video.currentTime = at; plot(); };
  if (video.readyState >= 1) seek(); else video.addEventListener("loadedmetadata", seek, { once: true });
  plot();
  document.body.dataset.loaded = ui.item.item_id;  // the item, its frame and its sensors are in
}

function drawBox() {
  const img = $("frame"), c = $("overlay");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  if (!ui.box) return;
  g.lineWidth = Math.max(2, c.width / 320);
  g.strokeStyle = "#2bd96b";
  g.strokeRect(...ui.box);
  g.fillStyle = "#2bd96b";
  g.font = `${Math.round(c.width / 45)}px sans-serif`;
  g.fillText($("sku").value || "none", ui.box[0], Math.max(12, ui.box[1] - 4));
}

function framePoint(ev) {
  const c = $("overlay"), r = c.getBoundingClientRect();
  return [Math.round((ev.clientX - r.left) * c.width / r.width), Math.round((ev.clientY - r.top) * c.height / r.height)];
}
$("overlay").addEventListener("mousedown", (ev) => { ui.drag = framePoint(ev); });
$("overlay").addEventListener("mousemove", (ev) => {
  if (!ui.drag) return;
  const [x, y] = framePoint(ev), [x0, y0] = ui.drag;
  ui.box = [Math.min(x, x0), Math.min(y, y0), Math.abs(x - x0), Math.abs(y - y0)];
  drawBox();
});
$("overlay").addEventListener("mouseup", () => { ui.drag = null; if (ui.box && (ui.box[2] < 3 || ui.box[3] < 3)) ui.box = ui.item.box; drawBox(); });

function plot() {
  const c = $("plot"), g = c.getContext("2d"), s = ui.series;
  g.clearRect(0, 0, c.width, c.height);
  if (!s) return;
  const dur = Math.max(s.duration_s, 0.1), x = (t) => (t / dur) * c.width;
  const line = (pts, color, idx = 1) => {
    if (!pts.length) return;
    const vals = pts.map((p) => p[idx]), lo = Math.min(...vals), hi = Math.max(...vals), span = hi - lo || 1;
    g.strokeStyle = color; g.beginPath();
    pts.forEach((p, i) => { const y = c.height - 10 - ((p[idx] - lo) / span) * (c.height - 20); if (i) g.lineTo(x(p[0]), y); else g.moveTo(x(p[0]), y); });
    g.stroke();
  };
  line(s.weight_g, "#2a6fdb"); line(s.accel_g, "#d98b2b"); line(s.position_mm, "#8a8a8a");
  g.fillStyle = "#b33";
  for (const e of s.events) { g.fillRect(x(e.t_s), 0, 1, c.height); }
  const t = $("video").currentTime || 0;
  g.fillStyle = "#000"; g.fillRect(x(t), 0, 2, c.height);
  if (ui.item) { g.fillStyle = "#2bd96b"; g.fillRect(x((ui.item.t_ns - s.start_ns) / 1e9), 0, 3, c.height); }
}
$("video").addEventListener("timeupdate", plot);
$("video").addEventListener("seeked", plot);

async function save(action) {
  if (!ui.item) return;
  const seconds = Math.round((performance.now() - ui.opened) / 100) / 10;
  const body = { version: ui.item.version, action, seconds };
  if (action === "correct") {
    body.sku = $("sku").value.trim();
    const changed = JSON.stringify(ui.box) !== JSON.stringify(ui.item.box);
    if (changed && ui.box && body.sku) body.box = ui.box;
    if (body.sku === (ui.item.sku || "") && !body.box) { say("nothing changed: press a to accept"); return; }
  }
  const r = await api("/api/labels/" + encodeURIComponent(ui.item.item_id), {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (r.status === 409) {  // someone saved first: show theirs, and say why ours was refused
    const why = r.body.error;
    try { await open(ui.at); } finally { say(why); }
    return;
  }
  if (r.status !== 200) { say(r.body.error || "save failed: " + r.status); return; }
  say(`${action}: ${r.body.item.item_id} is ${r.body.item.state} (${seconds} s)`, true);
  const b = document.querySelector(`#queue button[data-item="${CSS.escape(ui.item.item_id)}"] .state`);
  if (b) b.textContent = r.body.item.state;
  if (ui.at + 1 < ui.items.length) await open(ui.at + 1);
}

$("accept").onclick = () => save("accept");
$("save").onclick = () => save("correct");
$("reject").onclick = () => save("reject");
$("next").onclick = () => { if (ui.at + 1 < ui.items.length) open(ui.at + 1); };
$("apply").onclick = loadQueue;
$("f-state").onchange = loadQueue;
$("sku").addEventListener("input", drawBox);

document.addEventListener("keydown", (ev) => {
  const typing = ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT";
  if (typing) {
    if (ev.key === "Enter" && ev.target.id === "sku") { ev.preventDefault(); ev.target.blur(); save("correct"); }
    if (ev.key === "Escape") ev.target.blur();
    return;
  }
  const keys = { a: () => save("accept"), Enter: () => save("accept"), s: () => save("correct"), r: () => save("reject"),
                 n: () => $("next").onclick(), j: () => $("next").onclick(), k: () => { if (ui.at > 0) open(ui.at - 1); },
                 "/": () => { $("sku").focus(); $("sku").select(); } };
  if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
});

window.addEventListener("unhandledrejection", (e) => { console.error(String(e.reason)); say("error: " + e.reason); });

(async () => {
  const cat = await api("/api/catalogue");
  for (const p of cat.body.products || []) {
    const o = document.createElement("option");
    o.value = p.sku; o.label = `${p.name} (${p.gtin})`;
    $("skus").appendChild(o);
  }
  await loadQueue();
})();
