// Builds the npm package's modules with esbuild (`npm run build`, run by ./setup.sh and before `npm pack`):
//   dist/webmoe.js              the API (load, chat.completions, errors); starts ./worker.js beside it
//   dist/worker.js              the engine, kernels and schemas inline; its npm dependencies left as imports,
//                               for the app's bundler to resolve (package.json's dependencies)
//   dist/standalone/...         the same two with the dependencies inline too: for a page with no bundler
//                               (<script type="module">) and for the chat page `webmoe serve` sends
//   dist/webmoe.d.ts            the API's types (webmoe.d.ts)
import { build } from "esbuild";
import { copyFile, mkdir, readdir, readFile, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const DEPENDENCIES = Object.keys(JSON.parse(await readFile(join(here, "package.json"), "utf8")).dependencies);

// assets.js as the build has it: every kernel and schema as a string, nothing fetched
async function inlineAssets() {
  const read = async (dir, suffix) => Object.fromEntries(await Promise.all(
    (await readdir(join(root, dir))).filter((f) => f.endsWith(suffix)).sort()
      .map(async (f) => [f.slice(0, f.length - (suffix === ".wgsl" ? 0 : suffix.length)), await readFile(join(root, dir, f), "utf8")])));
  const kernels = await read("shaders", ".wgsl");
  const schemas = await read("schemas", ".schema.json");
  return `import { PackageError, ShaderError } from "./errors.js";
const KERNELS = ${JSON.stringify(kernels)};
const SCHEMAS = ${JSON.stringify(schemas)};
export async function kernelSource(name) {
  if (!Object.hasOwn(KERNELS, name)) throw new ShaderError(\`kernel source \${name}: not in this build of webmoe\`);
  return KERNELS[name];
}
export async function schemaJson(name) {
  if (!Object.hasOwn(SCHEMAS, name)) throw new PackageError(\`schema \${name}: not in this build of webmoe\`);
  return JSON.parse(SCHEMAS[name]);
}
`;
}

const assets = {
  name: "webmoe-assets",
  setup(b) {
    b.onResolve({ filter: /^\.\/assets\.js$/ }, () => ({ path: "assets.js", namespace: "webmoe-assets" }));
    b.onLoad({ filter: /.*/, namespace: "webmoe-assets" }, async () => ({ contents: await inlineAssets(), resolveDir: here, loader: "js" }));
  },
};

// @cfworker/json-schema (4.1.1 to 4.1.6) computes a base URI when its module loads from
// `self.location.origin + self.location.pathname`, which is no URL in a worker started from a blob: (the
// pathname of blob:https://site/UUID is https://site/UUID), so the module throws as it loads. The standalone
// build, whose worker a page imports from a CDN through such a blob, uses the location's href instead (the
// same URL less its fragment elsewhere). The build fails if the expression changes.
const BLOB_BASE = "new URL(self.location.origin + self.location.pathname + location.search)";
const blobSafeBase = {
  name: "webmoe-blob-safe-base",
  setup(b) {
    b.onLoad({ filter: /@cfworker[\\/]json-schema[\\/]dist[\\/]esm[\\/]dereference\.js$/ }, async ({ path }) => {
      const text = await readFile(path, "utf8");
      if (!text.includes(BLOB_BASE)) throw new Error(`${path}: the base URI expression changed; review build.mjs's patch`);
      return { contents: text.replace(BLOB_BASE, "new URL(self.location.href.split('#')[0])"), loader: "js" };
    });
  },
};

async function bundle(outdir, external) {
  await build({
    entryPoints: { webmoe: join(here, "webmoe.js"), worker: join(here, "worker.js") },
    outdir, bundle: true, format: "esm", platform: "browser", target: "es2022", external,
    plugins: [assets, blobSafeBase], logLevel: "warning", legalComments: "eof",
  });
}

const dist = join(here, "dist");
await rm(dist, { recursive: true, force: true });
await bundle(dist, DEPENDENCIES);
await bundle(join(dist, "standalone"), []);
await mkdir(dist, { recursive: true });
await copyFile(join(here, "webmoe.d.ts"), join(dist, "webmoe.d.ts"));
