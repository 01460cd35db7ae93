"""What produced a run, as content hashes: the method's code and the images.

**Method code.** A method's fingerprint covers the source of its module, of every module its class inherits
from, and of every ueobench (or plugin) module those modules use directly (losses, trainer, transforms, ...),
plus the ueobench version. Editing any of them gives the method a new fingerprint, hence new run ids. The record
keeps each file's hash, so ``code_status`` can later tell, without importing anything, whether a stored run was
made by the code that is installed now.

**Data.** The data fingerprint covers every image of both lists: its path relative to the dataset root (resolved,
so ``a/../a/x.png`` is one image), its label, size and modification time, and the data root as the user named
it. The built-in generated worlds are hashed by content (their files are small and regenerated per machine), and
Hugging Face datasets by the library's own fingerprint of each split.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import types
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

PACKAGE_PREFIXES = ("ueobench",)  # ueobench.* and ueobench_plugins.* (folders given with --plugins)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _ours(name: str | None) -> bool:
    return bool(name) and name.split(".")[0].startswith(PACKAGE_PREFIXES)  # type: ignore[union-attr]


def _module_file(module: types.ModuleType) -> str | None:
    try:
        return inspect.getsourcefile(module)
    except TypeError:
        return None


def _direct_uses(module: types.ModuleType) -> set[str]:
    """Names of our modules that ``module`` refers to at top level (imported modules, functions, classes)."""
    out = set()
    for value in vars(module).values():
        name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        if isinstance(name, str) and _ours(name) and name in sys.modules:
            out.add(name)
    return out


def method_modules(cls: type) -> list[str]:
    """The modules whose source determines what ``cls`` computes (see the module docstring)."""
    core = {c.__module__ for c in cls.__mro__ if _ours(c.__module__)}
    names = set(core)
    for name in core:
        names |= _direct_uses(sys.modules[name])
    return sorted(names)


def method_code(cls: type) -> dict[str, Any]:
    """``{"fingerprint": "sha256:...", "ueobench": version, "files": {module: {"file", "sha256"}}}``."""
    from . import __version__

    files = {}
    for name in method_modules(cls):
        path = _module_file(sys.modules[name])
        if path:
            files[name] = {"file": path, "sha256": file_sha256(path)}
    h = hashlib.sha256(f"ueobench {__version__}\n".encode())
    for name, f in sorted(files.items()):
        h.update(f"{name} {f['sha256']}\n".encode())
    return {"fingerprint": "sha256:" + h.hexdigest(), "ueobench": __version__, "files": files}


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
    from . import __version__

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


# --------------------------------------------------------------------------------------------------- data


def data_fingerprint(domain: Any, root: str | None, root_label: str) -> str:
    """Content address of one domain's images (both lists). ``root``: the folder list paths are relative to;
    ``root_label``: the data root as the user named it (or the built-in world's name)."""
    h = hashlib.sha256(f"root {root_label}\nsource {domain.source}\n".encode())
    content = domain.source == "builtin"
    base = os.path.realpath(root) if root else None
    for role, entries in (("adapt", domain.adapt), ("test", domain.test)):
        h.update(f"role {role}\n".encode())
        for line in _entry_lines(entries, base, content):
            h.update(line.encode())
    extra = getattr(domain, "content_id", None)
    if extra:
        h.update(f"content {extra}\n".encode())
    return "sha256:" + h.hexdigest()


def _entry_lines(entries: Iterable[Any], base: str | None, content: bool) -> Iterable[str]:
    for e in entries:
        ref = e.ref
        if isinstance(ref, str) and os.path.isabs(ref):
            # readers give real paths under the real root (lists resolve '..' and symlinks), so a prefix strip
            # is the relative path; anything else falls back to a full resolution
            if base and ref.startswith(base + os.sep):
                rel = ref[len(base) + 1:]
            else:
                ref = os.path.realpath(ref)
                rel = os.path.relpath(ref, base) if base else ref
            try:
                st = os.stat(ref)
                stamp = file_sha256(ref) if content else f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            yield f"{rel}\t{e.label}\t{stamp}\n"
        else:
            yield f"{ref}\t{e.label}\n"
