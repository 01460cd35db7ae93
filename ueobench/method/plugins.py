"""Where method plugins come from, found without importing them: the built-in ``methods/`` folder (the package
``ueobench.methods``), installed packages' ``ueobench.methods`` entry points, and folders named with ``--plugins``.

Kept free of torch so that commands which only describe methods can work from the catalogue (``catalog.py``).
The registry (``registry.py``) loads what is listed here; a folder added after it has loaded is picked up at
its next lookup.
"""
from __future__ import annotations

import importlib.util
from importlib.metadata import entry_points
from pathlib import Path

from ..core.errors import UeobenchError

ENTRY_POINT_GROUP = "ueobench.methods"
BUILTIN_PACKAGE = "ueobench.methods"
PLUGIN_DIRS: list[Path] = []


def add_plugin_folder(folder: str | Path) -> None:
    """Load method plugins from a folder the user names explicitly (``--plugins``)."""
    p = Path(folder).expanduser().resolve()
    if not p.is_dir():
        raise UeobenchError(f"plugin folder {folder} does not exist; pass a folder of method files to --plugins")
    if p not in PLUGIN_DIRS:
        PLUGIN_DIRS.append(p)


def plugin_files(folder: Path) -> list[Path]:
    return [f for f in sorted(folder.glob("*.py")) if not f.name.startswith("_")]


def external_entry_points() -> list:
    """Installed packages' method entry points (the built-ins are found as files, not through entry points)."""
    return [ep for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
            if not ep.value.split(":")[0].startswith(BUILTIN_PACKAGE + ".")]


def builtin_files() -> list[Path]:
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    files: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            files += plugin_files(Path(loc))
    return files


def method_sources() -> list[Path]:
    """Every file that can register a method, in loading order (built-ins, entry points, --plugins)."""
    files = builtin_files()
    for ep in external_entry_points():
        try:
            spec = importlib.util.find_spec(ep.value.split(":")[0])
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            files.append(Path(spec.origin))
    for d in PLUGIN_DIRS:
        files += plugin_files(d)
    return list(dict.fromkeys(files))
