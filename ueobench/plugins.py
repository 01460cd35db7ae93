"""Where method plugins come from, found without importing them: the ``ueobench.methods`` entry-point group
(built-ins included), the built-in ``methods/`` folder, and folders named with ``--plugins``.

Kept free of torch so that commands which only describe methods can work from the catalog (``catalog.py``)."""
from __future__ import annotations

import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

from .errors import UeobenchError

ENTRY_POINT_GROUP = "ueobench.methods"
PLUGIN_DIRS: list[Path] = []


def add_plugin_folder(folder: str | Path) -> None:
    """Load method plugins from a folder the user names explicitly (``--plugins``)."""
    p = Path(folder).expanduser().resolve()
    if not p.is_dir():
        raise UeobenchError(f"plugin folder {folder} does not exist; pass a folder of method files to --plugins")
    if p not in PLUGIN_DIRS:
        PLUGIN_DIRS.append(p)
        method = sys.modules.get("ueobench.method")
        if method is not None and method.METHODS._loaded:  # the registry is already loaded: add to it now
            method._load_folder(p)


def plugin_files(folder: Path) -> list[Path]:
    return [f for f in sorted(folder.glob("*.py")) if not f.name.startswith("_")]


def method_sources() -> list[Path]:
    """Every file that can register a method, in loading order (entry points, methods/, --plugins)."""
    files: list[Path] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            spec = importlib.util.find_spec(ep.value.split(":")[0])
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            files.append(Path(spec.origin))
    builtin = importlib.util.find_spec("ueobench.methods")
    if builtin is not None and builtin.submodule_search_locations:
        for loc in builtin.submodule_search_locations:
            files += plugin_files(Path(loc))
    for d in PLUGIN_DIRS:
        files += plugin_files(d)
    return list(dict.fromkeys(files))
