"""Build step for wheels: builds the browser runtime (web/build.mjs: the npm package's modules, with the
kernels, schemas and npm dependencies inline) into web/dist/ before the package data is copied, so an
installed webmoe serves a complete chat page without npm. Editable installs serve web/dist/ as
./setup.sh builds it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools.command.build_py import build_py as _build_py

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "web"
BUILT = ("dist/standalone/webmoe.js", "dist/standalone/worker.js", "dist/xgrammar.js")    # what the chat page runs


def npm(*args: str) -> None:
    subprocess.run(["npm", *args, "--no-audit", "--no-fund", "--loglevel=error"], cwd=WEB, check=True)


class build_py(_build_py):
    def run(self):
        if not self.editable_mode:
            # a clean copy: setuptools only adds to build/lib, so a module deleted from the source (the tests'
            # tiny_models.py, once in webmoe/) would still ship from an earlier build's leftovers
            shutil.rmtree(Path(self.build_lib) / "webmoe", ignore_errors=True)
            if shutil.which("npm") is not None:
                if not (WEB / "node_modules" / "esbuild").is_dir():
                    npm("ci")
                npm("run", "build")              # always from the sources being packaged, never a stale dist/
            elif not all((WEB / f).is_file() for f in BUILT):
                raise SystemExit("webmoe build: web/dist is missing and npm is not installed; run ./setup.sh "
                                 "(npm ci and npm run build in web/) before building a wheel")
        super().run()
