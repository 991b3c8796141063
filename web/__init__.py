"""The browser runtime (ES modules), the chat page and, in a built wheel, the vendored npm modules in
vendor/. Served by `webmoe serve`; Python code only needs to know where the files are."""
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent
