"""Test bootstrap.

Two ways the pack is imported in tests:

* Pure modules (``parsers``, ``binding_losses``, ``tokens``) are imported as the
  package ``binding_guidance`` *without* running the pack's root ``__init__``
  (which imports ComfyUI). The pack root itself is never put on ``sys.path``.
* Integration tests load the pack through ComfyUI's real custom-node loader; see
  ``tests/comfy_env.py``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = PACK_ROOT.parent / "shared"


def _register_pure_package() -> None:
    if "binding_guidance" in sys.modules:
        return
    package = types.ModuleType("binding_guidance")
    package.__path__ = [str(PACK_ROOT)]  # submodules resolve inside the pack
    package.__package__ = "binding_guidance"
    sys.modules["binding_guidance"] = package


_register_pure_package()
