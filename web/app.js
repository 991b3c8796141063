// The chat page: picks a served model, loads it into the worker with progress, streams replies.
import * as webmoe from "./webmoe.js";

const $ = (id) => document.getElementById(id);
let engine = null;
const history = [];

function notice(text, error = false) {
  $("notice").hidden = !text;
  $("notice").textContent = text || "";
  $("notice").className = error ? "notice error" : "notice";
}

const mib = (n) => `${(n / 2 ** 20).toFixed(1)} MiB`;

async function refreshCached() {
  const list = $("cached");
  list.replaceChildren();
  let models = [];
  try {
    models = await webmoe.listCached();
  } catch (e) {
    list.textContent = String(e.message || e);
    return;
  }
  if (!models.length) list.textContent = "none";
  for (const m of models) {
    const li = document.createElement("li");
    li.dataset.id = m.id;
    li.textContent = `${m.name} — ${mib(m.bytes)}${m.complete ? "" : " (incomplete)"} `;
    const del = document.createElement("button");
    del.textContent = "Delete";
    del.onclick = async () => { await webmoe.deleteCached(m.id); refreshCached(); };
    li.append(del);
    list.append(li);
  }
}

function showProgress(p) {
  $("progress").hidden = false;
  $("bar").value = p.total ? p.loaded / p.total : 0;
  const waiting = Object.values(p.shards).some((s) => ["queued", "downloading", "retrying", "verifying"].includes(s));
  // after the last byte the worker still compiles the kernels and uploads the weights: say so
  $("progress-text").textContent = waiting ? `Downloading: ${mib(p.loaded)} / ${mib(p.total)}`
    : `Downloaded ${mib(p.loaded)}; compiling kernels and uploading the model…`;
  $("shards").replaceChildren(...Object.entries(p.shards).map(([f, s]) => {
    const li = document.createElement("li");
    li.textContent = `${f}: ${s}`;
    return li;
  }));
}

let loadedUrl = null;

async function loadModel() {
  const url = $("model").value;
  if (!url || url === loadedUrl) return;
  $("load").disabled = true;
  notice(`Loading ${url}…`);
  try {
    // observeRouting: read back each layer's routing while generating, for the live expert heatmap
    engine = await webmoe.load(url, { onProgress: showProgress, observeRouting: true });
    loadedUrl = url;
    localStorage.setItem("webmoe.last", url);
    notice("");
    $("progress").hidden = true;
    $("status").textContent = `${engine.family} on ${engine.adapter}`;
    $("status").title = engine.description;     // KV cache size and how the expert budget was chosen
    $("prompt").disabled = $("send").disabled = false;
    $("prompt").focus();
  } catch (e) {
    notice(e.message || String(e), true);
  } finally {
    $("load").disabled = false;
    refreshCached();
  }
}

// usage: {layer: [tokens routed to each expert]} -> a layers x experts table shaded by share
function drawHeatmap(usage) {
  const experts = Object.values(usage)[0]?.length || 0;
  const head = document.createElement("tr");
  head.append(document.createElement("th"), ...Array.from({ length: experts }, (_, e) => {
    const th = document.createElement("th");
    th.textContent = String(e);
    th.title = `expert ${e}`;
    return th;
  }));
  const rows = Object.entries(usage).map(([layer, counts]) => {
    const total = counts.reduce((a, b) => a + b, 0) || 1;
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.textContent = `L${layer}`;
    tr.append(th);
    for (const [e, n] of counts.entries()) {
      const td = document.createElement("td");
      const share = n / total;
      td.style.background = `rgba(59, 110, 165, ${Math.min(1, share * counts.length / 2)})`;
      td.title = `layer ${layer}, expert ${e}: ${n} tokens (${(share * 100).toFixed(1)} %)`;
      tr.append(td);
    }
    return tr;
  });
  const table = document.createElement("table");
  table.append(head, ...rows);
  $("heatmap").replaceChildren(table);
}

async function showCacheStats() {
  const s = await engine.expertStats();
  const t = s.total;
  $("cache-stats").textContent = `GPU slots ${s.slots}, resident ${s.resident}; lookups ${t.lookups}, hits ${t.hits}, ` +
    `misses ${t.misses}, evictions ${t.evictions}, uploaded ${mib(t.bytes_uploaded)}`;
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("log").append(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

async function send(ev) {
  ev.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || !engine) return;
  $("prompt").value = "";
  history.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  $("send").disabled = true;
  $("stop").disabled = false;
  let reply = "";
  const t0 = performance.now();
  let n = 0;
  try {
    const system = $("system").value.trim();
    const messages = system ? [{ role: "system", content: system }, ...history] : history;
    const settings = { maxNewTokens: Math.max(1, Math.round(Number($("max-tokens").value) || 200)),
                       temperature: Math.max(0, Number($("temperature").value) || 0),
                       topP: Math.min(1, Math.max(0.01, Number($("top-p").value) || 1)) };
    for await (const token of engine.generate(messages, settings)) {
      reply += token.text;
      n++;
      if (token.usage) drawHeatmap(token.usage);
      if (n % 8 === 0) showCacheStats().catch(() => {});
      out.textContent = reply;
      $("log").scrollTop = $("log").scrollHeight;
      $("status").textContent = `${n} tokens, ${(n / ((performance.now() - t0) / 1000)).toFixed(1)} tokens/s`;
    }
  } catch (e) {
    notice(e.message || String(e), true);
  }
  history.push({ role: "assistant", content: reply });
  await showCacheStats().catch(() => {});
  $("send").disabled = false;
  $("stop").disabled = true;
}

async function main() {
  // navigator.gpu can exist with no usable adapter (e.g. WebGPU blocklisted or switched off)
  const webgpu = !!navigator.gpu && !!(await navigator.gpu.requestAdapter().catch(() => null));
  if (!webgpu) {
    notice("WebGPU is not available in this browser, so webmoe cannot run here. Use a recent Chrome, Edge or " +
           "Safari with WebGPU enabled.", true);
    $("load").disabled = true;
  }
  const models = await (await fetch("/models")).json();
  for (const m of models) {
    const opt = document.createElement("option");
    opt.value = m.manifest;
    opt.textContent = `${m.name} (${m.family}, ${mib(m.bytes)})`;
    $("model").append(opt);
  }
  $("load").onclick = loadModel;
  $("chat").onsubmit = send;
  $("stop").onclick = () => engine?.stop();
  $("prompt").onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) send(e); };
  refreshCached();
  if (!webgpu) return;
  // the model loaded last time loads by itself (it is in OPFS); a first visit is told what to do, since
  // Load starts a download
  const last = models.find((m) => m.manifest === localStorage.getItem("webmoe.last"));
  if (last) $("model").value = last.manifest;
  if (last || (models.length && new URLSearchParams(location.search).has("autoload"))) {
    loadModel();
  } else if (models.length === 1) {
    notice(`Press Load to download ${models[0].name} (${mib(models[0].bytes)}) into this browser and chat with it.`);
  } else if (models.length) {
    notice("Choose a model above and press Load: it is downloaded once and kept in this browser.");
  } else {
    notice("This server serves no model: start it with `webmoe serve PACKAGE`.", true);
  }
}

main();
