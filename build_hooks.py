"""Build step for wheels: copies the browser runtime's npm modules (@huggingface/tokenizers,
@huggingface/jinja, @cfworker/json-schema) from web/node_modules into the wheel's webmoe/web/vendor/, so an installed webmoe
serves a complete chat page without npm. Editable installs serve them from web/node_modules instead."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools.command.build_py import build_py as _build_py

ROOT = Path(__file__).resolve().parent
# the file names the page imports (web/tokenizer.js) -> where npm puts them
VENDOR = {"tokenizers.mjs": "@huggingface/tokenizers/dist/tokenizers.mjs",
          "jinja.js": "@huggingface/jinja/dist/index.js",
          "json-schema/": "@cfworker/json-schema/dist/esm/"}              # a folder: its .js modules


class build_py(_build_py):
    def run(self):
        if not self.editable_mode:
            # a clean copy: setuptools only adds to build/lib, so a module deleted from the source (the tests'
            # tiny_models.py, once in webmoe/) would still ship from an earlier build's leftovers
            shutil.rmtree(Path(self.build_lib) / "webmoe", ignore_errors=True)
        super().run()
        if self.editable_mode:
            return
        modules = ROOT / "web" / "node_modules"
        if not all((modules / rel).exists() for rel in VENDOR.values()):
            if shutil.which("npm") is None:
                raise SystemExit("webmoe build: web/node_modules is missing and npm is not installed; run "
                                 "`npm ci` in web/ (./setup.sh does) before building a wheel")
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT / "web", check=True)
        out = Path(self.build_lib) / "webmoe" / "web" / "vendor"
        out.mkdir(parents=True, exist_ok=True)
        for name, rel in VENDOR.items():
            if name.endswith("/"):
                (out / name).mkdir(exist_ok=True)
                for f in (modules / rel).glob("*.js"):
                    shutil.copyfile(f, out / name / f.name)
            else:
                shutil.copyfile(modules / rel, out / name)
