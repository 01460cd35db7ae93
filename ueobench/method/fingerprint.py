"""A run's code identity: the source of every module that can change what it computes, hashed.

The set is derived, never listed by hand: the modules of the method's class and its bases, the ueobench (or
plugin) modules they use directly (functions and classes they imported, also through a lazy package face), and
everything those modules import, transitively, found by reading their source (imports inside functions
included), plus the modules of the code that executes a run (``roots``, given by the planner). The set depends
only on source files, never on which modules happen to be imported in the planning process, so a sweep's
workers compute the ids it was planned with. Editing any of
them (a loss, the trainer, a metric, the checkpoint reader) gives the method a new fingerprint, hence new run
ids. The record keeps each file's hash, so ``ueobench.store.provenance.code_status`` can later tell, without
importing anything, whether a stored run was made by the code that is installed now.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import sys
import types
from functools import lru_cache
from typing import Any, Iterable

from ..core.hashing import file_sha256
from ..core.version import __version__

PACKAGE_PREFIXES = ("ueobench",)  # ueobench.* and ueobench_plugins.* (folders given with --plugins)


def _ours(name: str | None) -> bool:
    return bool(name) and name.split(".")[0].startswith(PACKAGE_PREFIXES)  # type: ignore[union-attr]


@lru_cache(maxsize=None)
def _spec(name: str) -> Any:
    """``find_spec`` without importing anything but parent packages (never a module's own code)."""
    parent = name.rpartition(".")[0]
    if parent:
        pspec = _spec(parent)
        if pspec is None or not pspec.submodule_search_locations:
            return None  # ``module.attribute``: not a module
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _source_file(name: str) -> str | None:
    module = sys.modules.get(name)
    if module is not None:
        try:
            return inspect.getsourcefile(module)
        except TypeError:
            return None
    if not name.startswith("ueobench"):
        return None
    spec = _spec(name)
    return spec.origin if spec is not None and spec.origin and spec.origin.endswith(".py") else None


def _is_package(name: str, path: str) -> bool:
    return path.endswith("__init__.py")


@lru_cache(maxsize=None)
def _static_imports(name: str, path: str, digest: str) -> frozenset[str]:
    """Our modules that the source of ``name`` imports anywhere (``digest`` keys the memo by content)."""
    try:
        tree = ast.parse(open(path, encoding="utf-8").read())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return frozenset()
    package = name if _is_package(name, path) else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)  # ``from pkg import module``
    return frozenset(m for m in out if _ours(m) and _source_file(m) is not None)


def _direct_uses(name: str) -> set[str]:
    """Our modules that a method's loaded module refers to at top level (the functions and classes it imported;
    a package's namespace also holds whatever submodules happen to be loaded, so packages are never asked)."""
    module = sys.modules.get(name)
    out = set()
    for value in vars(module).values() if module is not None else ():
        ref = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        if isinstance(ref, str) and _ours(ref) and ref in sys.modules:
            out.add(ref)
    return out


def module_closure(roots: Iterable[str]) -> list[str]:
    """Every module reachable from ``roots`` through the imports in their source, sorted."""
    seen: set[str] = set()
    todo = [r for r in roots if _ours(r)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _source_file(name)
        if path is None:
            continue
        seen.add(name)
        parent = name.rpartition(".")[0]
        nxt = set(_static_imports(name, path, file_sha256(path)))
        if parent and _ours(parent):
            nxt.add(parent)  # importing a module runs its package's __init__
        todo.extend(nxt - seen)
    return sorted(seen)


def method_modules(cls: type, roots: Iterable[str] = ()) -> list[str]:
    """The modules whose source determines what ``cls`` computes when run by the code at ``roots``."""
    core = {c.__module__ for c in cls.__mro__ if _ours(c.__module__)}
    used = set().union(*(_direct_uses(m) for m in core))  # names a plugin took from a lazy face
    return module_closure(core | used | set(roots))


def method_code(cls: type, roots: Iterable[str] = ()) -> dict[str, Any]:
    """``{"fingerprint": "sha256:...", "ueobench": version, "files": {module: {"file", "sha256"}}}``."""
    files = {}
    for name in method_modules(cls, roots):
        path = _source_file(name)
        if path:
            files[name] = {"file": path, "sha256": file_sha256(path)}
    h = hashlib.sha256(f"ueobench {__version__}\n".encode())
    for name, f in sorted(files.items()):
        h.update(f"{name} {f['sha256']}\n".encode())
    return {"fingerprint": "sha256:" + h.hexdigest(), "ueobench": __version__, "files": files}
