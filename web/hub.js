// Where a package is: load() takes the manifest's URL, the URL of the folder holding it (a package is a
// static folder: any HTTP host serves it as it is), or a Hugging Face Hub repository holding a package,
// hf://ORG/REPO or hf://ORG/REPO@REVISION, read from env.remoteHost (as transformers.js's env.remoteHost).
export const env = {
  remoteHost: "https://huggingface.co/",     // the Hub's address: a mirror, or a local folder laid out as the Hub's
  remotePathTemplate: "{repo}/resolve/{revision}/",   // a file of a repository at a revision, below remoteHost
};

const HUB = /^hf:\/\/([\w.-]+\/[\w.-]+)(?:@(.+))?$/;

// source (string or URL) -> the manifest's absolute URL; relative URLs against `base` (the page).
export function manifestUrl(source, base) {
  const text = String(source);
  if (text.startsWith("hf://")) {
    const m = HUB.exec(text);
    if (!m) throw new TypeError(`not a Hub repository: ${text} (hf://ORG/REPO or hf://ORG/REPO@REVISION)`);
    const folder = env.remotePathTemplate.replace("{repo}", m[1]).replace("{revision}", encodeURIComponent(m[2] || "main"));
    return new URL(folder + "manifest.json", new URL(env.remoteHost, base)).href;
  }
  const url = new URL(text, base);
  if (!url.pathname.endsWith(".json")) url.pathname = url.pathname.replace(/\/?$/, "/manifest.json");
  return url.href;
}
