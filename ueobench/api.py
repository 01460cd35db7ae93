"""The Python API; every CLI command is a thin wrapper over one of these functions, each taking one typed request
(``RunRequest``, ``SweepRequest``, ``TableRequest``, ``PlotRequest``, ``ExportRequest``) or the keyword
arguments that build it.

Importing this module is cheap: torch and open_clip load only inside the functions that need a model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .data.protocols import DEFAULT_DATASET, SHIFTS, list_datasets, load_protocol
from .method.plugins import PLUGIN_DIRS, add_plugin_folder
from .report.requests import ExportRequest, PlotRequest, TableRequest
from .runs.request import RunRequest
from .scoring.scores import DEFAULT_RULE, SCORES
from .sweeps.spec import SweepRequest, SweepSpec

__all__ = [
    "run", "sweep", "sweep_spec", "status", "table", "plot", "site", "records", "export", "show_protocol",
    "describe_method", "describe_methods", "check_data", "list_methods", "list_backbones", "list_datasets",
    "load_protocol", "add_plugin_folder", "get_method", "builtin_architectures", "SCORES", "plugin_folders",
    "RunRequest", "SweepRequest", "SweepSpec", "TableRequest", "PlotRequest", "ExportRequest",
]


def run(request: RunRequest | None = None, progress: Any = None, **kwargs: Any):
    """``ueobench run``: e.g. ``run(method="zeroshot", protocol="opda", domain="clipart")`` -> ``RunResult``
    (``.record`` is the stored ``RunRecord``, ``.skipped`` says whether an identical run was reused)."""
    from .runs.runner import run as _run

    return _run(request if request is not None else RunRequest(**kwargs), progress=progress)


def sweep_spec(method: str, protocol: str = "all", domain: str = "all", dataset: str = DEFAULT_DATASET,
               seed: str = "0", backbone: str | None = None, options: dict[str, str] | None = None,
               device: str = "auto", data_root: str | None = None, results: str = "results",
               score: str = "mcm", rule: str | None = None, precision: str = "auto", eval_batch_size: int = 256,
               cache: bool = True, loader_workers: int | None = None, source: str | None = None,
               shots: str | None = None, stream: str | None = None) -> SweepSpec:
    """A grid from the CLI's spelling: comma-separated lists or ``all``, seed ranges (``0-2``), and option
    values ``key=a,b`` that become an axis."""
    from .sweeps.spec import parse_list, parse_seeds, parse_shots, parse_streams

    return SweepSpec(
        methods=parse_list(method, list_methods(), "--method"),
        protocols=parse_list(protocol, list(SHIFTS), "--protocol"),
        domains=parse_list(domain, ["all"], "--domain"),
        datasets=parse_list(dataset, list_datasets(), "--dataset"),
        seeds=parse_seeds(seed), backbones=parse_list(backbone) or [None], options=dict(options or {}),
        results=results, data_root=data_root, device=device, plugins=[str(p) for p in PLUGIN_DIRS], score=score,
        rule=rule or DEFAULT_RULE, precision=precision, eval_batch_size=eval_batch_size, cache=cache,
        loader_workers=loader_workers, sources=parse_list(source, ["all"], "--source") or [None],
        shots=parse_shots(shots), streams=parse_streams(stream),
    )


def sweep(request: SweepRequest | SweepSpec, progress: Any = None, echo: Callable[[str], None] = lambda s: None,
          **how: Any) -> dict[str, Any]:
    """``ueobench sweep``: plan the grid (ids computed once and stored), then run or resume it. ``request`` is a
    ``SweepRequest``, or a ``SweepSpec`` with ``how`` (``launcher``, ``workers``, ``retry_failed``, ``force``,
    ``dry_run``, ``slurm``) as keywords.

    Returns ``{"key", "runs", "states": {state: count}, "outcome": {what happened: count}, "workers_failed"}``;
    ``echo`` receives one line per finished run (and the dry-run listing)."""
    from .store.claims import STATES, grid_status, state
    from .store.records import check_writable
    from .runs.plan import Planner
    from .sweeps.jobs import plan_jobs, save_sweep, unique_jobs
    from .sweeps.launchers import LAUNCHERS
    from .sweeps.spec import expand

    req = request if isinstance(request, SweepRequest) else SweepRequest(request, **how)
    spec = req.spec
    jobs = expand(spec)
    if req.dry_run:
        echo(f"planning {len(jobs)} runs (reads every image list once; a built-in world is generated on first use)")
    jobs, plans = unique_jobs(jobs, plan_jobs(jobs, Planner(progress)))
    names = [p.run_id for p in plans]
    if req.dry_run:
        states = [state(spec.results, n) for n in names]
        for p, n, st in zip(plans, names, states):
            echo(f"{st:<8} {n}  {p.label} on {p.plan.backbone}")
        return {"key": spec.key(), "runs": len(jobs), "states": {s: states.count(s) for s in STATES},
                "outcome": {}, "workers_failed": 0, "dry_run": True}
    check_writable(spec.results)  # before the plan is written: a read-only, full or file-valued folder stops here
    plan_path = save_sweep(spec, jobs, names)
    work = {p.run_id: p.method_cls.work(p.options, len(p.shift_data.adapt), len(p.shift_data.test),
                                        p.shift_data.split.num_known) for p in plans}
    launched = LAUNCHERS[req.launcher](req, jobs, names, plan_path, progress, echo, work)
    out = {"key": spec.key(), "runs": len(jobs), "states": grid_status(spec.results, names),
           "outcome": launched.outcome, "workers_failed": launched.workers_failed}
    if launched.submitted:
        out["submitted"] = True
        out["gpus"] = launched.gpus
    return out


def status(results: str = "results", spec: SweepSpec | None = None) -> list[dict[str, Any]]:
    """``ueobench status``: for one grid (``spec``, planned now) or every sweep saved under ``results`` (read
    from their stored plans, without importing any method), the state of each run."""
    from .store.claims import STATES, state
    from .store.records import failure_reason
    from .sweeps.jobs import load_sweep, plan_jobs, saved_sweeps, unique_jobs
    from .sweeps.spec import expand

    grids = []
    if spec is not None:
        jobs = expand(spec)
        grids.append((spec, [p.run_id for p in unique_jobs(jobs, plan_jobs(jobs))[1]]))
    else:
        import warnings

        from .core.errors import UeobenchError

        for path in saved_sweeps(results):
            try:
                saved, _, names = load_sweep(path)
            except UeobenchError as e:  # one damaged plan never hides the others
                warnings.warn(f"{e}; skipping it", stacklevel=2)
                continue
            grids.append((saved, names))
    out = []
    for s, names in grids:
        states = {n: state(results, n) for n in names}
        out.append({"key": s.key(), "methods": s.methods, "protocols": s.protocols, "datasets": s.datasets,
                    "runs": len(names), "counts": {k: list(states.values()).count(k) for k in STATES},
                    "states": states,
                    "failures": {n: failure_reason(results, n) for n, st in states.items() if st == "failed"}})
    return out


def table(request: TableRequest | None = None, **kwargs: Any) -> str:
    """``ueobench table``: leaderboards as markdown, LaTeX, CSV, JSON or HTML; one table per group of records
    that differ in an axis that is neither shown nor averaged (dataset, protocol, backbone)."""
    from .report.render import render_many
    from .report.tables import build_tables

    req = request if request is not None else _table_request(**kwargs)
    return render_many(build_tables(req), req.fmt)


def _table_request(metric: str | list[str] = "acc", method: str | None = None, dataset: str | None = None,
                   protocol: str | None = None, domain: str | None = None, backbone: str | None = None,
                   **kwargs: Any) -> TableRequest:
    filters = {"method": method, "dataset": dataset, "protocol": protocol, "domain": domain, "backbone": backbone}
    return TableRequest(metrics=metric, filters=filters, **kwargs)


def plot(request: PlotRequest | None = None, **kwargs: Any) -> Path:
    """``ueobench plot``: scatter (ACC vs AUROC), bars (per domain) or curves (one run's training)."""
    from .report.plots import plot as _plot

    return _plot(request if request is not None else PlotRequest(**kwargs))


def site(request: Any = None, **kwargs: Any) -> Path:
    """``ueobench site``: a self-contained leaderboard page (index.html and the records its cells link to)."""
    from .report.site import SiteRequest, build_site

    return build_site(request if request is not None else SiteRequest(**kwargs))


def records(results: str = "results", code: str = "current") -> list[Any]:
    """Every readable ``RunRecord`` under ``results``; ``code="current"`` keeps those made by the installed code."""
    from .report.export import records as _records

    return _records(results, code)


def export(request: ExportRequest | str | None = None, fmt: str = "csv", output: str | Path | None = None,
           code: str = "current") -> str | Path:
    """``ueobench export``: one row per run with every plan field, each option as its own column
    (``option.<name>``), the label, and every metric of both splits (``test.<metric>``, ``target.<metric>``).
    Returns the text (CSV/JSONL) or, with ``output``, the written path (parquet needs ``output``)."""
    from .report.export import export as _export

    if not isinstance(request, ExportRequest):
        request = ExportRequest(request or "results", fmt, output, code)
    return _export(request)


def plugin_folders() -> list[Path]:
    """Folders given with ``--plugins`` in this process."""
    return list(PLUGIN_DIRS)


def show_protocol(dataset: str, shift: str) -> dict[str, Any]:
    return load_protocol(dataset).roles(shift)


def describe_methods() -> dict[str, dict[str, Any]]:
    """name -> {summary, description, adaptation, oracle, origin, options, dataset_defaults} (cached catalogue)."""
    from .method import catalog

    return catalog.methods()


def describe_method(name: str) -> dict[str, Any]:
    """``ueobench show method NAME``: description, every option with type, default and help, per-dataset defaults."""
    from .method import catalog

    return catalog.method(name)


def list_methods() -> list[str]:
    return sorted(describe_methods())


def list_backbones() -> list[dict[str, str]]:
    from .models import catalog

    return catalog.backbones()


def get_method(name: str):
    from .method.registry import get_method as _get

    return _get(name)


def builtin_architectures() -> list[str]:
    from .models.configs import builtin_architectures as _names

    return _names()


def check_data(dataset: str, domain: str | None = None, protocol: str = "opda", data_root: str | None = None,
               verify: bool = True) -> list[dict[str, Any]]:
    """``ueobench data check``: per split and role counts, missing and unreadable files."""
    from .core.errors import DataError
    from .core.progress import make_progress
    from .data.check import check_domain
    from .data.dataset import DataResolver, load_domain
    from .data.settings import load

    settings = load()
    proto = load_protocol(dataset)
    domains = [proto.domain(domain).name] if domain else [d.name for d in proto.domains]
    reports = []
    with make_progress() as progress:
        for d in domains:  # every domain is reported: a missing one never hides the others
            try:  # a composition is checked with its OOD images mixed in, as a run would read them
                dd = (load_domain(proto, d, data_root, progress, settings) if proto.composition(protocol) is None
                      else DataResolver(progress, settings).resolve(proto, d, protocol, data_root).domain)
            except DataError as e:
                reports.append({"dataset": proto.name, "domain": d, "shift": protocol, "source": None,
                                "location": None, "splits": {}, "missing": [], "unreadable": [], "error": str(e)})
                continue
            reports.append(check_domain(proto, protocol, dd, verify=verify, progress=progress))
    return reports
