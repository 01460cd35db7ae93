"""The Python API; every CLI command is a thin wrapper over one of these functions.

Importing this module is cheap: torch and open_clip load only inside the functions that need a model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .errors import UeobenchError
from .plan import DEFAULT_DATASET
from .plugins import PLUGIN_DIRS, add_plugin_folder
from .protocols import SHIFTS, list_datasets, load_protocol
from .scores import SCORES

__all__ = [
    "run", "sweep", "sweep_spec", "status", "table", "records", "export", "show_protocol", "describe_method",
    "describe_methods", "check_data", "list_methods", "list_backbones", "list_datasets", "load_protocol",
    "add_plugin_folder", "get_method", "builtin_architectures", "SCORES", "plugin_folders",
]


def run(progress: Any = None, **kwargs: Any):
    """``ueobench run``: e.g. ``run(method="zeroshot", protocol="opda", domain="clipart")`` -> ``RunResult``
    (``.record`` is the stored ``RunRecord``, ``.skipped`` says whether an identical run was reused)."""
    from .plan import RunRequest
    from .runner import run as _run

    return _run(RunRequest(**kwargs), progress=progress)


def sweep_spec(method: str, protocol: str = "all", domain: str = "all", dataset: str = DEFAULT_DATASET,
               seed: str = "0", backbone: str | None = None, options: dict[str, str] | None = None,
               device: str = "auto", data_root: str | None = None, results: str = "results", score: str = "mcm"):
    """A grid from the CLI's spelling: comma-separated lists or ``all``, seed ranges (``0-2``), and option
    values ``key=a,b`` that become an axis."""
    from . import grid as sw

    return sw.SweepSpec(
        methods=sw.parse_list(method, list_methods(), "--method"),
        protocols=sw.parse_list(protocol, list(SHIFTS), "--protocol"),
        domains=sw.parse_list(domain, ["all"], "--domain"),
        datasets=sw.parse_list(dataset, list_datasets(), "--dataset"),
        seeds=sw.parse_seeds(seed), backbones=sw.parse_list(backbone) or [None], options=dict(options or {}),
        results=results, data_root=data_root, device=device, plugins=[str(p) for p in PLUGIN_DIRS], score=score,
    )


def sweep(spec: Any, launcher: str = "local", workers: int = 1, retry_failed: bool = False, force: bool = False,
          dry_run: bool = False, slurm: dict[str, Any] | None = None, progress: Any = None,
          echo: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """``ueobench sweep``: plan the grid (ids computed once and stored), then run or resume it.

    Returns ``{"key", "runs", "states": {state: count}, "outcome": {what happened: count}, "workers_failed"}``;
    ``echo`` receives one line per finished run (and the dry-run listing)."""
    from . import grid as sw

    jobs = sw.expand(spec)
    names = sw.job_names(jobs)
    if dry_run:
        states = [sw.state(spec.results, n) for n in names]
        for j, n, st in zip(jobs, names, states):
            echo(f"{st:<8} {n}  backbone={j.backbone or 'default'}")
        return {"key": spec.key(), "runs": len(jobs), "states": {s: states.count(s) for s in sw.STATES},
                "outcome": {}, "workers_failed": 0, "dry_run": True}
    from .records import check_writable

    check_writable(spec.results)  # before the plan is written: a read-only, full or file-valued folder stops here
    plan = sw.save_plan(spec, jobs, names)
    outcome: dict[str, int] = {}
    failed_workers = 0
    if launcher == "local" and workers <= 1:
        outcome = sw.run_local(jobs, names, retry_failed, force, progress, echo)
    elif launcher == "local":
        codes = sw.run_workers(plan, workers, retry_failed, force, names, spec.results, progress, echo)
        failed_workers = sum(c != 0 for c in codes)
    elif launcher in ("slurm", "submitit-local"):
        cluster = "slurm" if launcher == "slurm" else "local"
        ids = sw.run_submitit(jobs, names, retry_failed, force, cluster, slurm or {}, spec.plugins)
        if cluster == "slurm":
            return {"key": spec.key(), "runs": len(jobs), "states": sw.grid_status(spec.results, names),
                    "outcome": {"submitted": len(ids)}, "workers_failed": 0, "submitted": True}
        outcome = {k: ids.count(k) for k in sorted(set(ids))}
    else:
        raise UeobenchError(f"unknown launcher '{launcher}'; use local, slurm or submitit-local")
    return {"key": spec.key(), "runs": len(jobs), "states": sw.grid_status(spec.results, names), "outcome": outcome,
            "workers_failed": failed_workers}


def status(results: str = "results", spec: Any = None) -> list[dict[str, Any]]:
    """``ueobench status``: for one grid (``spec``, planned now) or every sweep saved under ``results`` (read
    from their stored plans, without importing any method), the state of each run."""
    from . import grid as sw

    grids = []
    if spec is not None:
        grids.append((spec, sw.job_names(sw.expand(spec))))
    else:
        for path in sw.plans(results):
            saved, _, names = sw.load_plan(path)
            grids.append((saved, names))
    out = []
    for s, names in grids:
        states = {n: sw.state(results, n) for n in names}
        out.append({"key": s.key(), "methods": s.methods, "protocols": s.protocols, "datasets": s.datasets,
                    "runs": len(names), "counts": {k: list(states.values()).count(k) for k in sw.STATES},
                    "states": states})
    return out


def table(results: str = "results", metric: str | list[str] = "acc", rows: str = "method", cols: str = "domain",
          split: str = "test", method: str | None = None, dataset: str | None = None, protocol: str | None = None,
          domain: str | None = None, backbone: str | None = None, seeds: int | None = None, score: str | None = None,
          rule: str | None = None, average: bool = True, rank_oracle: bool = False, reference: str | None = None,
          fmt: str = "md", code: str = "current", error: str = "std") -> str:
    """``ueobench table``: leaderboards as markdown, LaTeX, CSV, JSON or HTML; one table per group of records
    that differ in an axis that is neither shown nor averaged (dataset, protocol, backbone)."""
    from .leaderboard import build_tables, render_many

    metrics = metric.split(",") if isinstance(metric, str) else list(metric)
    filters = {"method": method, "dataset": dataset, "shift": protocol, "domain": domain, "backbone": backbone}
    tables = build_tables(results, [m.strip() for m in metrics], rows, cols, split, filters, seeds, score, rule,
                          average, rank_oracle, reference, code, error)
    return render_many(tables, fmt)


def records(results: str = "results", code: str = "current") -> list[Any]:
    """Every readable ``RunRecord`` under ``results``; ``code="current"`` keeps those made by the installed code."""
    from .fingerprints import code_status
    from .records import iter_records

    if code not in ("current", "all"):
        raise UeobenchError(f"unknown code filter '{code}'; use current or all")
    return [r for r in iter_records(results) if code == "all" or code_status(r.code) != "changed"]


def export(results: str = "results", fmt: str = "csv", output: str | Path | None = None,
           code: str = "current") -> str | Path:
    """``ueobench export``: one row per run with every plan field, each option as its own column
    (``option.<name>``), the label, and every metric of both splits (``test.<metric>``, ``target.<metric>``).
    Returns the text (CSV/JSONL) or, with ``output``, the written path (parquet needs ``output``)."""
    import json

    from .metrics import METRICS

    rows = []
    for r in records(results, code):
        row: dict[str, Any] = {"run_id": r.run_id, "label": r.label, "oracle": r.oracle, "schema": r.schema}
        row.update({k: v for k, v in r.raw.get("config", {}).items() if k != "options"})
        row.update({f"option.{k}": v for k, v in sorted(r.options.items())})
        for split in ("test", "target"):
            for m in METRICS:
                row[f"{split}.{m}"] = r.metrics.get(split, {}).get(m)
        rows.append(row)
    if fmt == "jsonl":
        text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    elif fmt in ("csv", "parquet"):
        import pandas as pd

        df = pd.DataFrame(rows)
        if fmt == "parquet":
            if output is None:
                raise UeobenchError("parquet is binary: pass --output FILE.parquet")
            try:
                df.to_parquet(output, index=False)
            except ImportError as e:
                raise UeobenchError(f"parquet export needs pyarrow ({e}); pip install pyarrow, or use csv") from None
            return Path(output)
        text = df.to_csv(index=False)
    else:
        raise UeobenchError(f"unknown export format '{fmt}'; use csv, parquet or jsonl")
    if output is not None:
        Path(output).write_text(text, encoding="utf-8")
        return Path(output)
    return text


def plugin_folders() -> list[Path]:
    """Folders given with ``--plugins`` in this process."""
    return list(PLUGIN_DIRS)


def show_protocol(dataset: str, shift: str) -> dict[str, Any]:
    return load_protocol(dataset).roles(shift)


def describe_methods() -> dict[str, dict[str, Any]]:
    """name -> {summary, description, adaptation, oracle, origin, options, dataset_defaults} (cached catalogue)."""
    from . import catalog

    return catalog.methods()


def describe_method(name: str) -> dict[str, Any]:
    """``ueobench show method NAME``: description, every option with type, default and help, per-dataset defaults."""
    from . import catalog

    return catalog.method(name)


def list_methods() -> list[str]:
    return sorted(describe_methods())


def list_backbones() -> list[dict[str, str]]:
    from . import catalog

    return catalog.backbones()


def get_method(name: str):
    from .method import get_method as _get

    return _get(name)


def builtin_architectures() -> list[str]:
    from importlib import resources

    return sorted(Path(f.name).stem for f in resources.files("ueobench.model_configs").iterdir()
                  if f.name.endswith(".json"))


def check_data(dataset: str, domain: str | None = None, protocol: str = "opda", data_root: str | None = None,
               verify: bool = True) -> list[dict[str, Any]]:
    """``ueobench data check``: per split and role counts, missing and unreadable files."""
    from . import data as data_mod
    from .progress import make_progress

    proto = load_protocol(dataset)
    domains = [proto.domain(domain).name] if domain else [d.name for d in proto.domains]
    reports = []
    with make_progress() as progress:
        for d in domains:
            dd = data_mod.load_domain(proto, d, data_root, progress)
            reports.append(data_mod.check_domain(proto, protocol, dd, verify=verify, progress=progress))
    return reports
