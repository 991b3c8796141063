// The chat page: picks a served model, loads it into the worker with progress, streams replies.
import { mib } from "./units.js";
import * as webmoe from "./dist/standalone/webmoe.js";     // the npm package's build (web/build.mjs)

const $ = (id) => document.getElementById(id);
let engine = null;
const history = [];

function notice(text, error = false) {
  $("notice").hidden = !text;
  $("notice").textContent = text || "";
  $("notice").className = error ? "notice error" : "notice";
}


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

// The load's stages, each a line with its own bar: {stage -> latest progress event}
const STAGE_TEXT = {
  download: (p) => {
    const waiting = Object.values(p.shards).filter((s) => ["queued", "downloading", "retrying", "verifying"].includes(s)).length;
    const later = Object.values(p.shards).filter((s) => s === "on demand").length;
    const rest = later ? `; ${later} experts come when the router first asks for them` : "";
    if (waiting) return `Downloading ${mib(p.loaded)} / ${mib(p.total)} (${waiting} ${waiting > 1 ? "shards" : "shard"} to go)${rest}`;
    return `Downloaded ${mib(p.total)}${rest}`;
  },
  compile: (p) => (p.done < p.total ? `Compiling kernels ${p.done} / ${p.total}` : `Compiled ${p.total} kernels`),
  upload: (p) => (p.loaded < p.total ? `Uploading to the GPU ${mib(p.loaded)} / ${mib(p.total)}` : `Uploaded ${mib(p.total)} to the GPU`),
};
let stages = {};

function showProgress(p) {
  stages[p.stage] = p;
  $("progress").hidden = false;
  $("stages").replaceChildren(...Object.keys(STAGE_TEXT).filter((s) => stages[s]).map((s) => {
    const q = stages[s];
    const li = document.createElement("li");
    li.dataset.stage = s;
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = s === "compile" ? q.done / (q.total || 1) : q.loaded / (q.total || 1);
    const text = document.createElement("span");
    text.textContent = STAGE_TEXT[s](q);
    li.append(bar, text);
    return li;
  }));
  if (p.stage === "download") {
    $("shards").replaceChildren(...Object.entries(p.shards).map(([f, st]) => {
      const li = document.createElement("li");
      li.textContent = `${f}: ${st}`;
      return li;
    }));
  }
}

let loadedUrl = null;
const served = new Map();     // manifest URL -> the server's description of the model

// What this model may keep in OPFS: 80 % of what the browser grants this site, less what other models
// use; undefined when the whole model fits (then nothing is ever evicted).
async function opfsBudget(model) {
  if (!navigator.storage?.estimate) return undefined;        // no storage API: the engine keeps the model in memory
  const { quota, usage } = await navigator.storage.estimate();
  const cached = await webmoe.listCached().catch(() => []);     // no OPFS (some private windows): nothing cached
  const own = cached.find((c) => c.url === new URL(model.manifest, location.href).href);
  const budget = Math.floor(0.8 * quota) - (usage - (own?.bytes || 0));
  return budget >= model.bytes ? undefined : Math.max(0, budget);
}

// why: what made this load happen, when the user did not (said while loading and after)
async function loadModel(why = "") {
  const url = $("model").value;
  if (!url || url === loadedUrl) return;
  const model = served.get(url);
  $("load").disabled = true;
  stages = {};
  notice(`${why}Loading ${model.name}…`, !!why);
  try {
    // experts on demand (those that took half of each layer's tokens in the package's routing statistics,
    // if it has them, with the dense shards), within what the browser lets this site store; the rest of
    // the model follows in the background when the user asked for it
    const options = { onProgress: showProgress, observeRouting: true, expertsOnDemand: true, hotExperts: 0.5,
                      opfsBudgetBytes: await opfsBudget(model), backgroundDownload: $("whole-model").checked,
                      onDeviceLost: (message) => deviceLost(url, message) };
    localStorage.setItem("webmoe.whole", $("whole-model").checked ? "1" : "");
    const previous = engine;
    engine = null;
    loadedUrl = null;
    $("prompt").disabled = $("send").disabled = true;
    await previous?.unload();        // its GPU memory goes before the next model's arrives
    // observeRouting: read back each layer's routing while generating, for the live expert heatmap
    engine = await webmoe.load(url, options);
    loadedUrl = url;
    localStorage.setItem("webmoe.last", url);
    const again = why ? `${why}The model was loaded again; the conversation goes on.` : "";
    // a private window or a full disk: the model runs, but the next visit downloads it again
    const kept = engine.ephemeral ? `Nothing of ${model.name} is kept in this browser (${engine.ephemeral}): its ` +
      "experts come from the server as the model needs them, and the next visit downloads it again." : "";
    notice([again, kept].filter(Boolean).join(" "), !!why);
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

// The GPU device went away (driver reset, GPU process crash, the browser reclaiming memory): load the
// model again, which reads it from OPFS; the conversation so far stays on the page.
function deviceLost(url, message) {
  if (url !== loadedUrl) return;
  loadedUrl = null;
  engine = null;
  $("prompt").disabled = $("send").disabled = true;
  $("model").value = url;
  loadModel(`The GPU device was lost (${message.replace(/\.$/, "")}). `);
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
  refreshCached();           // experts fetched on demand are now in OPFS
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
    served.set(m.manifest, m);
  }
  $("load").onclick = () => loadModel();
  $("whole-model").checked = !!localStorage.getItem("webmoe.whole");
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
    const m = models[0];
    notice(`Press Load to chat with ${m.name}: it downloads the dense weights (${mib(m.dense_bytes)}) and the ` +
           `most-used experts now, each other expert the first time it is needed (${mib(m.bytes)} in all), and ` +
           "keeps them in this browser.");
  } else if (models.length) {
    notice("Choose a model above and press Load: it is downloaded once and kept in this browser.");
  } else {
    notice("This server serves no model: start it with `webmoe serve PACKAGE`.", true);
  }
}

main();
