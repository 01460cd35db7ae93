"""Was a stored run made by the code installed now? Answered from the record alone, without importing anything.

A record's ``method.code`` lists every source file that determined its numbers with that file's SHA-256; each
is looked up where it is installed now (modules under ``ueobench.``) or where the record says it was (plugin
files) and hashed again.
"""
from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from typing import Any

from ..core.hashing import file_sha256
from ..core.version import __version__


@lru_cache(maxsize=None)
def _current_hash(name: str, stored_path: str) -> str | None:
    """The hash of module ``name`` as installed now (found without importing it), or None if it is nowhere."""
    path: str | None = None
    if name.startswith("ueobench.") or name == "ueobench":
        try:
            spec = importlib.util.find_spec(name)
            path = spec.origin if spec is not None else None
        except (ImportError, ValueError):
            path = None
    if path is None and os.path.isfile(stored_path):
        path = stored_path
    return file_sha256(path) if path and os.path.isfile(path) else None


def code_status(code: dict[str, Any] | None) -> str:
    """"current" when every file a record names hashes as it did, "changed" when one differs (or the record
    predates code fingerprints), "unknown" when some file cannot be found here but none differs."""
    if not code or not isinstance(code.get("files"), dict):
        return "changed"
    if code.get("ueobench") != __version__:
        return "changed"
    missing = False
    for name, f in code["files"].items():
        if not isinstance(f, dict):
            return "changed"
        now = _current_hash(str(name), str(f.get("file", "")))
        if now is None:
            missing = True
        elif now != f.get("sha256"):
            return "changed"
    return "unknown" if missing else "current"
