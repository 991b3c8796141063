"""The chat page and the browser runtime as web/build.mjs builds it (dist/: the npm package's modules, with
the kernels, schemas and npm dependencies inline). Served by `webmoe serve`; Python code only needs to
know where the files are."""
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent
