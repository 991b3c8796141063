// What web/README.md tells a Vite user: the dev server pre-bundles dependencies into node_modules/.vite/deps/,
// where webmoe's worker (found beside its module) is not; `vite build` does not need this.
export default { optimizeDeps: { exclude: ["webmoe"] } };
