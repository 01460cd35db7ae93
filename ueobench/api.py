"""The Python API; every CLI command is a thin wrapper over one of these functions."""
from __future__ import annotations

import sys
from typing import Any

from . import data as data_mod
from .backbones import builtin_architectures, list_backbones
from .method import METHODS, add_plugin_folder, get_method, list_methods
from .protocols import list_datasets, load_protocol
from .plan import RunRequest
from .runner import RunResult
from .runner import run as _run
from .scores import SCORES
from .leaderboard import build_tables, render_many

__all__ = [
    "run", "table", "show_protocol", "check_data", "describe_methods", "list_methods", "list_backbones",
    "list_datasets", "load_protocol", "add_plugin_folder", "get_method", "SCORES", "builtin_architectures",
]


def run(progress: Any = None, **kwargs: Any) -> RunResult:
    """``ueobench run``: e.g. ``run(method="zeroshot", protocol="opda", domain="clipart")``."""
    return _run(RunRequest(**kwargs), progress=progress)


def table(results: str = "results", metric: str | list[str] = "acc", rows: str = "method", cols: str = "domain",
          split: str = "test", method: str | None = None, dataset: str | None = None, protocol: str | None = None,
          domain: str | None = None, backbone: str | None = None, seeds: int | None = None, score: str | None = None,
          rule: str | None = None, average: bool = True, rank_oracle: bool = False, reference: str | None = None,
          fmt: str = "md", code: str = "current", error: str = "std") -> str:
    """``ueobench table``: leaderboards as markdown, LaTeX, CSV, JSON or HTML; one table per group of records
    that differ in an axis that is neither shown nor averaged (dataset, protocol, backbone)."""
    metrics = metric.split(",") if isinstance(metric, str) else list(metric)
    filters = {"method": method, "dataset": dataset, "shift": protocol, "domain": domain, "backbone": backbone}
    tables = build_tables(results, [m.strip() for m in metrics], rows, cols, split, filters, seeds, score, rule,
                          average, rank_oracle, reference, code, error)
    return render_many(tables, fmt)


def plugin_folders() -> list:
    """Folders given with ``--plugins`` in this process."""
    from .method import _plugin_dirs

    return list(_plugin_dirs)


def show_protocol(dataset: str, shift: str) -> dict[str, Any]:
    return load_protocol(dataset).roles(shift)


def describe_methods() -> dict[str, dict[str, Any]]:
    out = {}
    for name in METHODS.names():
        cls = METHODS.get(name)
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        out[name] = {"adaptation": cls.adaptation, "summary": doc[0] if doc else "",
                     "origin": METHODS.origin(name), "oracle": cls.uses_target_labels}
    return out


def check_data(dataset: str, domain: str | None = None, protocol: str = "opda", data_root: str | None = None,
               verify: bool = True) -> list[dict[str, Any]]:
    """``ueobench data check``: per split and role counts, missing and unreadable files."""
    from .progress import make_progress

    proto = load_protocol(dataset)
    domains = [proto.domain(domain).name] if domain else [d.name for d in proto.domains]
    reports = []
    with make_progress() as progress:
        for d in domains:
            dd = data_mod.load_domain(proto, d, data_root, progress)
            reports.append(data_mod.check_domain(proto, protocol, dd, verify=verify, progress=progress))
    return reports
