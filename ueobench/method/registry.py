"""The method registry: ``@register_method``, lookups with "did you mean" errors, and what a request resolves to.

The registry fills lazily, on first lookup: the built-in ``methods/`` folder, installed packages' entry points,
then every ``--plugins`` folder (a folder added later is loaded at the next lookup). ``resolve_method`` turns a
request's method name and ``--set`` overrides into everything planning needs: the class, the validated
options, those that differ from the defaults for the dataset, the row label and the code fingerprint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import pkgutil
import re
import sys
import types
import typing
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from ..core.errors import UeobenchError
from ..core.registry import Registry, suggest
from .base import Method
from .fingerprint import method_code
from .options import build_options, options_dict
from .plugins import BUILTIN_PACKAGE, PLUGIN_DIRS, external_entry_points, plugin_files

_LOADED = {"builtins": False}


def _load_plugins() -> None:
    if not _LOADED["builtins"]:
        _LOADED["builtins"] = True
        builtin = importlib.import_module(BUILTIN_PACKAGE)  # a file dropped there appears without reinstalling
        for info in pkgutil.iter_modules(builtin.__path__):
            importlib.import_module(f"{BUILTIN_PACKAGE}.{info.name}")
        for ep in external_entry_points():
            try:
                ep.load()
            except UeobenchError:
                raise
            except Exception as e:  # noqa: BLE001 - one broken plugin must not break every command
                warnings.warn(f"method plugin '{ep.name}' ({ep.value}) failed to load: {e}", stacklevel=2)
    for d in list(PLUGIN_DIRS):
        try:
            _load_folder(d)
        except UeobenchError:
            PLUGIN_DIRS.remove(d)  # reported once; the rest of this process goes on without the broken folder
            raise


def _load_folder(folder: Path) -> None:
    """Load the files of a plugin folder that are not loaded yet (a file dropped in later appears too)."""
    if not folder.is_dir():
        raise UeobenchError(f"plugin folder {folder} does not exist")
    for f in plugin_files(folder):
        key = hashlib.sha256(str(f).encode()).hexdigest()[:8]
        mod_name = f"ueobench_plugins.{f.stem}_{key}"  # one module per file: same-named files in two folders differ
        if mod_name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(mod_name, f)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except UeobenchError:
            del sys.modules[mod_name]
            raise
        except BaseException as e:  # noqa: BLE001 - SystemExit included: a plugin never ends the CLI silently
            del sys.modules[mod_name]
            what = f"called sys.exit({e.code})" if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"
            raise UeobenchError(f"plugin {f} failed to load ({what})") from None


METHODS: Registry[type[Method]] = Registry("method", loader=_load_plugins)


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: ``@register_method("ueo")``."""

    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UeobenchError(f"method name {name!r} is not allowed: 1 to 64 letters, digits or _ . + -, starting with a "
                            f"letter or digit")

    def deco(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method('{name}') must decorate a Method subclass")
        if not dataclasses.is_dataclass(cls.Options):
            raise TypeError(f"{cls.__qualname__}.Options must be a dataclass")
        _check_option_types(name, cls)
        valid = {f.name for f in fields(cls.Options)}
        for dataset, overrides in cls.dataset_defaults.items():
            bad = sorted(set(overrides) - valid)
            if bad:
                raise UeobenchError(
                    f"method '{name}' ({cls.__module__}): dataset_defaults['{dataset}'] names unknown option(s) "
                    f"{', '.join(bad)}{suggest(bad[0], sorted(valid))}"
                )
        cls.name = name
        module = sys.modules.get(cls.__module__)
        METHODS.register(name, cls, origin=getattr(module, "__file__", None) or cls.__module__)
        return cls

    return deco


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
OPTION_TYPES = (bool, int, float, str)


def _check_option_types(name: str, cls: type[Method]) -> None:
    """Options are what ``--set`` can write and a record can store: bool, int, float or str, optionally None."""
    where = f"method '{name}' ({getattr(sys.modules.get(cls.__module__), '__file__', cls.__module__)})"
    try:
        hints = typing.get_type_hints(cls.Options)
    except Exception as e:  # noqa: BLE001 - an annotation that does not resolve
        raise UeobenchError(f"{where}: its options' type annotations do not resolve ({e})") from None
    for f in fields(cls.Options):
        typ = hints.get(f.name, f.type)
        args = [a for a in typing.get_args(typ) if a is not type(None)] if typing.get_origin(typ) in (
            typing.Union, types.UnionType) else [typ]
        optional = len(args) < len(typing.get_args(typ)) if typing.get_origin(typ) else False
        if len(args) != 1 or args[0] not in OPTION_TYPES:
            raise UeobenchError(f"{where}: option '{f.name}' has type {typ}; options are bool, int, float or str "
                                f"(or one of them | None)")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UeobenchError(f"{where}: option '{f.name}' has no default; every option needs one")
        ok = (default is None and optional) or (type(default) is args[0]) or (args[0] is float and type(default) is int)
        if not ok:
            raise UeobenchError(f"{where}: option '{f.name}' defaults to {default!r}, not a {args[0].__name__}")


def get_method(name: str) -> type[Method]:
    return METHODS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()


# ----------------------------------------------------------------------------------------------- resolving


def option_label(method: str, changed: dict[str, Any]) -> str:
    """``ueo``, or ``ueo (epochs=10, lr_prompt=0.01)``: the options that differ from the method's defaults for
    the dataset. Stored in the record, so tables never depend on which plugins are loaded."""
    return method if not changed else f"{method} ({', '.join(f'{k}={v}' for k, v in sorted(changed.items()))})"


@dataclass(frozen=True)
class ResolvedMethod:
    cls: type[Method]
    options: Any  # the Options instance
    resolved: dict[str, Any]  # every option, resolved
    changed: dict[str, Any]  # those that differ from the defaults for the dataset
    label: str  # the registered name with the changed options
    code: dict[str, Any]  # the code fingerprint with each file's hash
    display_label: str = ""  # the display name with the changed options (what tables and figures show)


class MethodResolver:
    """``resolve(name, overrides, dataset)`` for many requests: each class's code is fingerprinted once."""

    def __init__(self, roots: Iterable[str] = ()):
        self.roots = tuple(roots)
        self._code: dict[type, dict[str, Any]] = {}

    def resolve(self, name: str, overrides: dict[str, str] | None, dataset: str) -> ResolvedMethod:
        cls = get_method(name)
        options = build_options(cls, overrides, dataset)
        resolved = options_dict(options)
        defaults = options_dict(build_options(cls, {}, dataset))
        changed = {k: v for k, v in resolved.items() if defaults.get(k) != v}
        if cls not in self._code:
            self._code[cls] = method_code(cls, self.roots)
        return ResolvedMethod(cls, options, resolved, changed, option_label(cls.name, changed), self._code[cls],
                              option_label(cls.display_name or cls.name, changed))
