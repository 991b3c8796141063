// The Origin Private File System as webmoe lays it out: /webmoe/<model id>/{state.json, <shard>,
// <shard>.part}, one folder per model (its id: the first 16 hex digits of the sha256 of its manifest URL).
import { sha256Hex } from "./manifest.js";

const ROOT = "webmoe";

export async function rootDir() {
  if (!navigator.storage?.getDirectory) throw new Error("this browser has no Origin Private File System");
  return (await navigator.storage.getDirectory()).getDirectoryHandle(ROOT, { create: true });
}

export async function modelId(manifestUrl) {
  return (await sha256Hex(new TextEncoder().encode(manifestUrl))).slice(0, 16);
}

export async function readJson(dir, name) {
  try {
    return JSON.parse(await (await (await dir.getFileHandle(name)).getFile()).text());
  } catch {
    return null;
  }
}

export async function writeJson(dir, name, value) {
  const w = await (await dir.getFileHandle(name, { create: true })).createWritable();
  await w.write(JSON.stringify(value));
  await w.close();   // createWritable writes a swap file: the old state stays until close() succeeds
}

// A file's size, or -1 when it is not there.
export async function fileSize(dir, name) {
  try {
    return (await (await dir.getFileHandle(name)).getFile()).size;
  } catch {
    return -1;
  }
}

async function dirBytes(dir) {
  let n = 0;
  for await (const [, h] of dir.entries()) {
    if (h.kind !== "file") continue;
    // another tab (or the browser's swap files of a writable) may remove a file while we count
    n += await h.getFile().then((f) => f.size, (err) => { if (err?.name === "NotFoundError") return 0; throw err; });
  }
  return n;
}

// [{id, url, name, bytes, complete}] for every model in OPFS.
export async function listCached() {
  const root = await rootDir();
  const out = [];
  for await (const [id, h] of root.entries()) {
    if (h.kind !== "directory") continue;
    const state = (await readJson(h, "state.json")) || {};
    out.push({ id, url: state.url || null, name: state.name || id, bytes: await dirBytes(h), complete: !!state.complete });
  }
  return out;
}

export async function deleteCached(id) {
  await (await rootDir()).removeEntry(id, { recursive: true });
}
