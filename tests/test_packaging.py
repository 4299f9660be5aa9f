"""Packaging for ComfyUI-Manager and the Comfy Registry: requirements never touch torch, metadata is complete,
the spaCy model install fails gracefully offline, and every node has a help page."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = re.compile(r"^(torch|torchvision|torchaudio|triton|xformers|nvidia-.*|pytorch-.*)$")


def _requirement_lines() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pack_node_ids() -> list[str]:
    tree = ast.parse((ROOT / "nodes" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "NODE_CLASS_MAPPINGS":
            return [key.value for key in node.value.keys]
    raise AssertionError("nodes/__init__.py has no NODE_CLASS_MAPPINGS")


def test_requirements_name_no_torch():
    names = [_canonical(re.split(r"[<>=!~ ;\[@]", line, maxsplit=1)[0]) for line in _requirement_lines()]
    assert names and not [n for n in names if FORBIDDEN.match(n)]


@pytest.mark.parametrize("ignore_installed", [False, True], ids=["beside-installed-torch", "whole-dependency-tree"])
def test_pip_install_requirements_leaves_torch_alone(ignore_installed, tmp_path):
    """`pip install -r requirements.txt` in the test venv (torch installed) would install nothing torch-related,
    and no requirement depends on torch at all (resolving the whole tree as if nothing were installed)."""
    import torch
    import torchvision

    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
               "-r", str(ROOT / "requirements.txt")]
    if ignore_installed:
        command.append("--ignore-installed")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    installs = json.loads(report.read_text())["install"]
    names = {_canonical(item["metadata"]["name"]) for item in installs}
    assert not {n for n in names if FORBIDDEN.match(n)}, names
    if ignore_installed:
        assert "spacy" in names  # the resolution really ran
    else:
        assert "torch" not in names and "torchvision" not in names
    assert torch.__version__.startswith("2.14.1") and torchvision.__version__.startswith("0.29.1")


def test_pyproject_is_registry_ready():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", project["name"]) and "comfyui" not in project["name"]
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?", project["version"])
    assert project["description"] and project["license"] and project["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"] == "Binding Guidance" and comfy["Icon"].startswith("https://")
    assert sorted(project["dependencies"]) == sorted(_requirement_lines())
    assert (ROOT / "docs" / "images" / "icon.png").is_file()


def test_spacy_model_install_fails_gracefully_offline():
    env = dict(os.environ, BINDING_GUIDANCE_FORCE_MODEL_INSTALL="1",
               BINDING_GUIDANCE_SPACY_MODEL_URL="http://127.0.0.1:9/en_core_web_sm-3.8.0-py3-none-any.whl")
    result = subprocess.run([sys.executable, str(ROOT / "install.py")], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    python = os.path.normpath(sys.executable)  # the child reports its interpreter path normalised
    assert "could not install" in lines[0] and f"{python} -m pip install http://127.0.0.1:9/" in lines[0]


def test_every_node_has_a_help_page():
    for node in _pack_node_ids():
        page = ROOT / "web" / "docs" / f"{node}.md"
        assert page.is_file(), node
        assert page.read_text().startswith("# ")


def test_config_help_page_documents_every_advanced_key():
    from binding_guidance.binding_losses.objectives import METHODS, default_params

    page = (ROOT / "web" / "docs" / "BindingLossConfig.md").read_text()
    for method in METHODS:
        section = page.split(f"### `{method}`", 1)
        assert len(section) == 2, f"no section for {method}"
        body = section[1].split("\n### ", 1)[0]
        for key in default_params(method):
            if key not in ("scale_factor", "guided_fraction"):  # these are the node's own widgets
                assert f"| `{key}` |" in body, f"{method}: advanced key {key} undocumented"
