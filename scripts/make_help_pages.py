"""Rewrite the generated tables of the help pages (web/docs/*.md) from the declared settings.

Usage: .venv/bin/python scripts/make_help_pages.py
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("BindingLossConfig.md", "BindingGuidanceOptions.md")


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from comfy_env import bootstrap_comfy, register_pack_package

    bootstrap_comfy()
    register_pack_package()
    tables = importlib.import_module("binding_guidance.nodes.config_node").help_tables()
    fill = importlib.import_module("binding_guidance.settings").fill_tables
    for name in PAGES:
        page = ROOT / "web" / "docs" / name
        page.write_text(fill(page.read_text(encoding="utf-8"), tables), encoding="utf-8")
        print(f"wrote {page.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
