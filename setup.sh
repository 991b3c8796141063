#!/usr/bin/env bash
# Sets up everything webmoe needs on a Debian machine, then runs one job:
#   ./setup.sh demo    the main job: convert a model and generate text with the native engine
#   ./setup.sh test    the test suite (what CI runs)
# Installs: Mesa lavapipe (software Vulkan, so WebGPU works without a GPU), a .venv with webmoe and its
# test extras (pytest, transformers and the CPU build of torch 2.13.0 as the reference).
set -euo pipefail
cd "$(dirname "$0")"
job="${1:-}"
case "$job" in demo|test) ;; *) echo "usage: ./setup.sh demo|test" >&2; exit 2 ;; esac

apt_packages=(mesa-vulkan-drivers libvulkan1)
missing=()
for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
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

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/webmoe-xdg-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
case "$job" in
  demo) exec .venv/bin/python scripts/demo.py ;;
  test) exec .venv/bin/python -m pytest -q ;;
esac
