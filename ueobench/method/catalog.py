"""What ``list methods`` and ``show method`` print, without importing torch: a cached method catalogue.

Describing a method needs its class, and importing a method module imports torch (seconds). The catalogue is
therefore computed once, by importing, and cached (``ueobench.core.cache``) under a key made of the ueobench
version and the hash of every file that can define a method or an option (the ueobench package and every plugin
source). Any edit, install or ``--plugins`` folder changes the key and the next command recomputes it, so the
catalogue is never stale.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
import typing
from pathlib import Path
from typing import Any

from ..core.cache import cached
from ..core.errors import UeobenchError
from ..core.registry import suggest
from ..core.version import __version__

CATALOG_VERSION = 2


def _key() -> str:
    """A hash of every file that can define a method or an option: the ueobench package and every plugin."""
    from .plugins import method_sources

    package = sorted(Path(__file__).resolve().parents[1].rglob("*.py"))
    h = hashlib.sha256(f"catalog {CATALOG_VERSION} ueobench {__version__}\n".encode())
    for f in package + method_sources():
        try:
            h.update(f"{f}\n".encode() + f.read_bytes())
        except OSError:
            h.update(f"{f} missing\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ methods


def _option_help(options_cls: type) -> dict[str, str]:
    """One-line help of each option: the comment after its field in the source of the class declaring it."""
    import inspect

    out: dict[str, str] = {}
    for klass in reversed(options_cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+(\w+)\s*:[^=\n]*=[^#\n]*#\s*(.+)$", source, flags=re.M):
            out[m.group(1)] = m.group(2).strip()
    return out


def _type_name(t: Any) -> str:
    return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")


def describe(cls: type) -> dict[str, Any]:
    """Everything ``show method`` prints about a registered method class."""
    from .registry import METHODS

    module = sys.modules.get(cls.__module__)
    doc = (module.__doc__ if module is not None and module.__doc__ else cls.__doc__ or "").strip()
    hints = typing.get_type_hints(cls.Options)
    helps = _option_help(cls.Options)
    options = []
    for f in dataclasses.fields(cls.Options):
        meta = dict(f.metadata or {})
        valid = {k: meta[k] for k in ("min", "max", "choices") if meta.get(k) is not None}
        options.append({"name": f.name, "type": _type_name(hints.get(f.name, f.type)),
                        "default": f.default if f.default is not dataclasses.MISSING else None,
                        "help": meta.get("help") or helps.get(f.name, ""), **valid})
    return {"name": cls.name, "summary": doc.splitlines()[0] if doc else "", "description": doc,
            "adaptation": cls.adaptation, "track": cls.track, "oracle": cls.uses_target_labels, "origin": METHODS.origin(cls.name),
            "options": options, "dataset_defaults": cls.dataset_defaults}


def _compute_methods() -> dict[str, Any]:
    from .registry import METHODS

    return {name: describe(METHODS.get(name)) for name in METHODS.names()}


def methods() -> dict[str, dict[str, Any]]:
    """name -> description of every method (from the cache when no source changed)."""
    return cached("methods", _key(), _compute_methods)


def method(name: str) -> dict[str, Any]:
    table = methods()
    if name not in table:
        raise UeobenchError(f"unknown method '{name}'{suggest(name, list(table))}")
    return table[name]
