#!/usr/bin/env bash
# Sets up everything webmoe needs on a Debian machine, then runs one job:
#   ./setup.sh demo    the main job: serve the chat app with the bundled demo model, print the URL
#   ./setup.sh test    the test suite (what CI runs)
# Installs: Mesa lavapipe (software Vulkan, so WebGPU works without a GPU), Chromium and Node/npm (browser
# tests, the browser runtime's npm dependencies and build), a .venv with webmoe and its test extras (pytest, playwright,
# transformers and the CPU build of torch 2.13.0 as the reference).
set -euo pipefail
cd "$(dirname "$0")"
job="${1:-}"
case "$job" in demo|test) ;; *) echo "usage: ./setup.sh demo|test" >&2; exit 2 ;; esac

apt_packages=(mesa-vulkan-drivers libvulkan1 chromium)
missing=()
for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "setup: Python >= 3.11 needed" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
stamp=.venv/.webmoe-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing webmoe and its test extras into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi

if [ ! -d web/node_modules/esbuild ] || [ web/package-lock.json -nt web/node_modules ]; then
  echo "setup: installing the browser runtime's npm dependencies and build tools" >&2
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi
(cd web && npm run --silent build)      # web/dist: the npm package's modules, which the chat page runs

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/webmoe-xdg-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
case "$job" in
  demo) exec .venv/bin/webmoe serve demo/shakespeare-moe --host 127.0.0.1 --port "${PORT:-8080}" ;;
  test) exec .venv/bin/python -m pytest -q ;;
esac
