"""ueobench: benchmark unsupervised CLIP fine-tuning (UEO and baselines) under category shift.

Everything in ``__all__`` is importable from here; the heavy parts (torch, open_clip) load on first use, so
``import ueobench`` and the command line's ``--help``, ``list``, ``show``, ``status`` and ``table`` stay fast.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import UeobenchError

__version__ = "0.2.0"

_WHERE = {
    # the method interface (imports torch)
    "Method": "ueobench.method", "Options": "ueobench.method", "AdaptContext": "ueobench.method",
    "register_method": "ueobench.method", "option": "ueobench.method",
    # the Python API: each CLI command is a thin wrapper over one of these
    "run": "ueobench.api", "sweep": "ueobench.api", "sweep_spec": "ueobench.api", "status": "ueobench.api", "table": "ueobench.api",
    "export": "ueobench.api", "show_protocol": "ueobench.api",
    "describe_method": "ueobench.api", "describe_methods": "ueobench.api", "check_data": "ueobench.api",
    "list_methods": "ueobench.api", "list_backbones": "ueobench.api", "list_datasets": "ueobench.api",
    "load_protocol": "ueobench.api", "add_plugin_folder": "ueobench.api", "get_method": "ueobench.api",
    "builtin_architectures": "ueobench.api", "SCORES": "ueobench.api",
    # the data a run is described by
    "RunRequest": "ueobench.plan", "RunPlan": "ueobench.plan", "RunRecord": "ueobench.records",
}
#: ``ueobench.records`` is the typed-record module (``RunRecord``, ``iter_records``, ``read_record``)
__all__ = ["UeobenchError", "__version__", "records", *_WHERE]


def __getattr__(name: str) -> Any:
    if name == "records":
        return importlib.import_module("ueobench.records")
    if name not in _WHERE:
        raise AttributeError(f"module 'ueobench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
