// Builds the npm package's modules with esbuild (`npm run build`, run by ./setup.sh and before `npm pack`):
//   dist/webmoe.js              the API (load, chat.completions, errors); starts ./worker.js beside it
//   dist/worker.js              the engine, kernels and schemas inline; its npm dependencies left as imports,
//                               for the app's bundler to resolve (package.json's dependencies)
//   dist/standalone/...         the same two with the dependencies inline too: for a page with no bundler
//                               (<script type="module">) and for the chat page `webmoe serve` sends
//   dist/xgrammar.js            XGrammar's WebAssembly build (@mlc-ai/web-xgrammar) as one ES module, which the
//                               worker of either build loads the first time a grammar is asked for
//   dist/webmoe.d.ts            the API's types (webmoe.d.ts)
import { build } from "esbuild";
import { copyFile, mkdir, readdir, readFile, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const DEPENDENCIES = Object.keys(JSON.parse(await readFile(join(here, "package.json"), "utf8")).dependencies);

// assets.js as the build has it: every kernel and schema as a string, nothing fetched
async function inlineAssets(grammarLibrary) {
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
export function grammarLibraryUrl() {
  return new URL(${JSON.stringify(grammarLibrary)}, import.meta.url);
}
`;
}

// grammarLibrary: dist/xgrammar.js relative to the worker, a literal in new URL(..., import.meta.url) so that
// an app's bundler copies it beside the worker it emits (and loads it only when a grammar is asked for)
const assets = (grammarLibrary) => ({
  name: "webmoe-assets",
  setup(b) {
    b.onResolve({ filter: /^\.\/assets\.js$/ }, () => ({ path: "assets.js", namespace: "webmoe-assets" }));
    b.onLoad({ filter: /.*/, namespace: "webmoe-assets" }, async () => ({ contents: await inlineAssets(grammarLibrary), resolveDir: here, loader: "js" }));
  },
});

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

async function bundle(outdir, external, grammarLibrary) {
  await build({
    entryPoints: { webmoe: join(here, "webmoe.js"), worker: join(here, "worker.js") },
    outdir, bundle: true, format: "esm", platform: "browser", target: "es2022", external,
    plugins: [assets(grammarLibrary), blobSafeBase], logLevel: "warning", legalComments: "eof",
  });
}

// @mlc-ai/web-xgrammar is a UMD bundle (with "type": "module", which bundlers read two ways) whose C++ reports
// a schema it cannot use by printing "[FATAL] ..." to the console and aborting the call. Built here into one
// ES module whose default export is the library, with `printed`: the lines it printed, for constraint.js to
// name what failed. Its Node branch imports "module" and "url", which a browser never reaches. The build fails if
// the patched expressions change.
const XGRAMMAR_INIT = "binding = await Module();";
const XGRAMMAR_EXPORTS = "exports.default = index;";
const grammarLibraryPatch = {
  name: "webmoe-xgrammar",
  setup(b) {
    b.onLoad({ filter: /@mlc-ai[\\/]web-xgrammar[\\/]lib[\\/]index\.js$/ }, async ({ path }) => {
      const text = await readFile(path, "utf8");
      for (const expression of [XGRAMMAR_INIT, XGRAMMAR_EXPORTS]) {
        if (text.split(expression).length !== 2) throw new Error(`${path}: "${expression}" changed; review build.mjs's patch`);
      }
      // the UMD wrapper fills `exports` when it sees CommonJS's `exports` and `module`: given both here, it
      // fills this module's default export
      const patched = text.replace(XGRAMMAR_INIT, "binding = await Module({ printErr: (line) => exports.printed.push(String(line)) });")
        .replace(XGRAMMAR_EXPORTS, `${XGRAMMAR_EXPORTS} exports.printed = [];`);
      return { contents: `const exports = {};\nconst module = { exports };\n${patched}\nexport default exports;\n`, loader: "js" };
    });
  },
};

async function grammarLibrary(outdir) {
  const { version, license } = JSON.parse(await readFile(join(here, "node_modules/@mlc-ai/web-xgrammar/package.json"), "utf8"));
  await build({
    entryPoints: { xgrammar: "@mlc-ai/web-xgrammar" }, outdir, bundle: true, format: "esm", platform: "browser",
    target: "es2022", external: ["module", "url"], plugins: [grammarLibraryPatch], logLevel: "error",
    banner: { js: `// XGrammar (https://github.com/mlc-ai/xgrammar), @mlc-ai/web-xgrammar ${version}, ${license}; bundled by webmoe` },
  });
}

const dist = join(here, "dist");
await rm(dist, { recursive: true, force: true });
await bundle(dist, DEPENDENCIES, "./xgrammar.js");
await bundle(join(dist, "standalone"), [], "../xgrammar.js");
await grammarLibrary(dist);
await mkdir(dist, { recursive: true });
await copyFile(join(here, "webmoe.d.ts"), join(dist, "webmoe.d.ts"));
