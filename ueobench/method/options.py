"""Method options: a dataclass per method, checked against declared ranges and choices, built from ``--set``.

Kept free of torch: option checks run before any model or data is loaded.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

from ..core.errors import UeobenchError
from ..core.registry import suggest


@dataclass
class Options:
    """Base of every method's hyperparameters. Subclass it as a dataclass with typed defaults; declare each
    with ``option(default, "help", min=..., max=..., choices=...)`` so ``show method`` can explain it and
    ``--set`` values out of range are refused before any model or data is loaded."""


def option(default: Any, help: str = "", *, min: float | None = None, max: float | None = None,
           min_exclusive: bool = False, choices: tuple[Any, ...] | None = None, contains: str | None = None) -> Any:
    """A dataclass field with its one-line help and its valid values: a range (inclusive unless
    ``min_exclusive``), a set of ``choices``, or a text it must ``contain`` (a prompt template's ``{}``)."""
    meta = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive, "choices": choices,
            "contains": contains}
    return dataclasses.field(default=default, metadata=meta)


def check_option(method: str, f: dataclasses.Field, value: Any) -> None:
    """Range, choice and finiteness checks of one option value; raises a one-line UeobenchError."""
    meta = f.metadata or {}
    where = f"{method} option '{f.name}'"
    if isinstance(value, float) and not math.isfinite(value):
        raise UeobenchError(f"bad value for {where}: {value} is not a finite number")
    if meta.get("contains") and isinstance(value, str):
        ok = meta["contains"] in value
        if ok and meta["contains"] == "{}":  # a template: it must format with one class name, nothing else
            try:
                value.format("x")
            except (IndexError, KeyError, ValueError):
                ok = False
        if not ok:
            raise UeobenchError(f"bad value for {where}: {value!r} must contain {meta['contains']} and nothing "
                                f"else in braces (e.g. 'a photo of a {{}}.')")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise UeobenchError(f"bad value for {where}: {value!r}; choose from {', '.join(map(str, choices))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
            bound = f"greater than {lo}" if meta.get("min_exclusive") else f"at least {lo}"
            raise UeobenchError(f"bad value for {where}: {value}; it must be {bound}")
        if hi is not None and value > hi:
            raise UeobenchError(f"bad value for {where}: {value}; it must be at most {hi}")


def _coerce(value: str, typ: Any, name: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value.lower() in ("none", "null"):
            return None
        typ = args[0]
    if typ is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false for '{name}', got {value!r}")
    if typ in (int, float, str):
        return typ(value)
    raise ValueError(f"option '{name}' has a type ({typ}) that cannot be set from the command line")


def build_options(method_cls: type, overrides: dict[str, str] | None, dataset: str | None = None) -> Any:
    """Method defaults, then the method's reference defaults for ``dataset``, then validated ``--set`` overrides."""
    opts_cls = method_cls.Options
    hints = typing.get_type_hints(opts_cls)
    valid = {f.name: f for f in fields(opts_cls)}
    kwargs: dict[str, Any] = dict(method_cls.dataset_defaults.get(dataset or "", {}))
    for key, raw in (overrides or {}).items():
        if key not in valid:
            raise UeobenchError(
                f"method '{method_cls.name}' has no option '{key}'{suggest(key, list(valid))}"
                if valid else f"method '{method_cls.name}' takes no options (got '{key}')"
            )
        try:
            kwargs[key] = _coerce(str(raw), hints[key], key)
        except (ValueError, OverflowError) as e:
            raise UeobenchError(f"bad value for {method_cls.name} option '{key}': {e}") from None
    options = opts_cls(**kwargs)
    for f in fields(opts_cls):
        check_option(method_cls.name, f, getattr(options, f.name))
    return options


def options_dict(options: Any) -> dict[str, Any]:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}


