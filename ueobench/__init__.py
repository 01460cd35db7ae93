"""ueobench: benchmark unsupervised CLIP fine-tuning (UEO and baselines) under category shift.

Everything in ``__all__`` is importable from here; the heavy parts (torch, open_clip) load on first use, so
``import ueobench`` and the command line's ``--help``, ``list``, ``show``, ``status`` and ``table`` stay fast.

Layout (imports run one way, bottom to top; contracts in ``pyproject.toml``, checked by ``lint-imports``)::

    core < scoring < data | store | method < models < adapt | runs < sweeps | report < api < cli
"""
from __future__ import annotations

import importlib
from typing import Any

from .core.errors import UeobenchError
from .core.version import __version__

_WHERE = {
    # the method interface (imports torch)
    "Method": "ueobench.method.base", "AdaptContext": "ueobench.method.base",
    "Options": "ueobench.method.options", "option": "ueobench.method.options",
    "register_method": "ueobench.method.registry",
    # the Python API: each CLI command is a thin wrapper over one of these
    "run": "ueobench.api", "sweep": "ueobench.api", "sweep_spec": "ueobench.api", "status": "ueobench.api",
    "table": "ueobench.api", "plot": "ueobench.api", "export": "ueobench.api", "show_protocol": "ueobench.api",
    "describe_method": "ueobench.api", "describe_methods": "ueobench.api", "check_data": "ueobench.api",
    "list_methods": "ueobench.api", "list_backbones": "ueobench.api", "list_datasets": "ueobench.api",
    "load_protocol": "ueobench.api", "add_plugin_folder": "ueobench.api", "get_method": "ueobench.api",
    "builtin_architectures": "ueobench.api", "SCORES": "ueobench.api",
    # the typed requests and records
    "RunRequest": "ueobench.runs.request", "RunPlan": "ueobench.runs.request", "SweepRequest": "ueobench.sweeps.spec",
    "SweepSpec": "ueobench.sweeps.spec", "TableRequest": "ueobench.report.requests",
    "PlotRequest": "ueobench.report.requests", "ExportRequest": "ueobench.report.requests",
    "RunRecord": "ueobench.store.records",
}
#: ``ueobench.records`` is the typed-record module (``RunRecord``, ``iter_records``, ``read_record``)
__all__ = ["UeobenchError", "__version__", "records", *_WHERE]


def __getattr__(name: str) -> Any:
    if name == "records":
        return importlib.import_module("ueobench.store.records")
    if name not in _WHERE:
        raise AttributeError(f"module 'ueobench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
