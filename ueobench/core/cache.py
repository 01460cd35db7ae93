"""A small JSON cache of derived descriptions (the method and backbone catalogues) under the ueobench cache folder.

Each section is stored with the key its caller computed (a hash of everything the value depends on), so a
stale entry is never returned: a different key recomputes and replaces it. Losing the file only costs time.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from .files import atomic_write_text
from .paths import cache_root


def _cache_file() -> Path:
    return cache_root() / "catalog.json"


def _load() -> dict[str, Any]:
    try:
        doc = json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _store(doc: dict[str, Any]) -> None:
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(doc, sort_keys=True))
    except OSError:
        pass  # a read-only cache only costs speed


def cached(section: str, key: str, compute: Callable[[], Any]) -> Any:
    """The value stored for ``section`` under ``key``, else ``compute()`` (then stored)."""
    doc = _load()
    entry = doc.get(section)
    if isinstance(entry, dict) and entry.get("key") == key:
        return entry["value"]
    value = compute()
    doc = _load()  # another process may have written other sections meanwhile
    doc[section] = {"key": key, "value": value}
    _store(doc)
    return value


def clear() -> None:
    try:
        os.unlink(_cache_file())
    except OSError:
        pass
