"""How a sweep runs, as a table of plain functions (``LAUNCHERS``): sequentially here, in N local worker
processes pulling from the same saved plan, or as one SLURM array job through submitit. ueobench has no
scheduler of its own; what to run (the saved plan, claims, records) is kept apart from how.

Workers never share anything but the results folder, so any number of processes, on one host or several
hosts sharing a filesystem, can work through the same grid.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.errors import UeobenchError
from ..runs.request import RunRequest
from ..store.claims import state
from ..store.layout import failure_path, submitit_dir
from ..store.records import find_record
from .jobs import run_job
from .spec import SweepRequest


@dataclass
class Launched:
    """What a launcher did: counts of what happened to the runs, workers that died, or array tasks submitted."""

    outcome: dict[str, int] = field(default_factory=dict)
    workers_failed: int = 0
    submitted: bool = False


def _finished_line(results: str | Path, name: str, what: str, i: int, n: int) -> str:
    """One line per finished run, for logs: what happened, the run, its headline metrics or its failure."""
    head = f"[{i}/{n}] {what:<17} {name}"
    if what in ("done", "skipped"):
        rec = find_record(results, name)
        m = rec.metrics.get("test", {}) if rec is not None else {}
        parts = [f"{k} {100 * m[k]:.1f}" for k in ("acc", "auroc", "hscore") if m.get(k) is not None]
        return head + ("  test " + " ".join(parts) if parts else "")
    if what == "failed":
        path = failure_path(results, name)
        try:
            err = json.loads(path.read_text())["error"]
        except (OSError, ValueError, KeyError):
            err = "see the failure record"
        return f"{head}  {err.splitlines()[0][:200]} ({path})"
    return head


def run_local(jobs: list[RunRequest], names: list[str], retry_failed: bool, force: bool, progress=None,
              echo=None) -> dict[str, int]:
    outcome: dict[str, int] = {}
    states = {} if force else {x: state(req.results, x) for req, x in zip(jobs, names)}
    todo = _to_run(names, states, retry_failed, force)
    task = progress.add_task(_sweep_label("sweep", len(names) - len(todo)), total=len(todo)) if progress is not None \
        else None
    from ..runs.plan import Planner

    planner = Planner()
    for i, (req, name) in enumerate(zip(jobs, names), 1):
        what = run_job(req, name, retry_failed, force, planner)
        outcome[what] = outcome.get(what, 0) + 1
        if echo is not None:
            echo(_finished_line(req.results, name, what, i, len(jobs)))
        if task is not None and name in todo:
            progress.advance(task)
    return outcome


def _to_run(names: list[str], states: dict[str, str], retry_failed: bool, force: bool) -> set[str]:
    """The runs a sweep will actually execute, from their ``state`` at its start: progress, rate and ETA count
    these only, so that resuming a sweep whose runs are mostly done does not report the skipped ones as work done
    in no time."""
    if force:
        return set(names)
    settled = {"done"} | (set() if retry_failed else {"failed"})
    return {x for x in names if states.get(x) not in settled}


def _sweep_label(label: str, settled: int) -> str:
    return f"{label}, {settled} already settled" if settled else label


def run_workers(plan_path: Path, n: int, retry_failed: bool, force: bool, names: list[str], results: str,
                progress=None, echo=None) -> list[int]:
    """N worker processes over one plan; on GPUs each is pinned to one device via CUDA_VISIBLE_DEVICES."""
    import torch

    gpus = torch.cuda.device_count()
    before = {} if force else {x: state(results, x) for x in names}  # to tell skipped runs from new ones
    settled = {"done": "skipped", **({} if retry_failed else {"failed": "failed-before"})}
    procs = []
    for i in range(n):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        else:
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
        env["UEOBENCH_NO_PROGRESS"] = "1"
        cmd = [sys.executable, "-m", "ueobench.sweeps.worker", str(plan_path)] + (["--retry-failed"] if retry_failed else []) + (
            ["--force"] if force else [])
        procs.append(subprocess.Popen(cmd, env=env))
    todo = _to_run(names, before, retry_failed, force)
    task = progress.add_task(_sweep_label(f"sweep ({n} workers)", len(names) - len(todo)), total=len(todo)) \
        if progress is not None else None
    reported: set[str] = set()
    while True:
        alive = any(p.poll() is None for p in procs)
        for x in names:
            st = state(results, x) if x not in reported else None
            if st in ("done", "failed"):
                reported.add(x)
                if echo is not None:
                    what = settled.get(before.get(x, ""), st)
                    echo(_finished_line(results, x, what, len(reported), len(names)))
        if task is not None:
            progress.update(task, completed=len(reported & todo))
        if not alive:
            break
        time.sleep(1.0)
    return [p.returncode for p in procs]


def _submitit_job(req_dict: dict[str, Any], name: str, retry_failed: bool, force: bool, plugins: list[str]) -> str:
    from ..method.plugins import add_plugin_folder

    for folder in plugins:
        add_plugin_folder(folder)
    return run_job(RunRequest(**req_dict), name, retry_failed, force)


def run_submitit(jobs: list[RunRequest], names: list[str], retry_failed: bool, force: bool, cluster: str,
                 slurm: dict[str, Any], plugins: list[str] | None = None) -> list[str]:
    """Submit one array job through submitit; ``cluster`` is "slurm" or "local" (submitit's local executor)."""
    try:
        import submitit
    except ImportError:
        raise UeobenchError("the slurm launcher needs submitit: pip install 'ueobench[slurm]'") from None
    folder = submitit_dir(jobs[0].results) / "%j"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = {"timeout_min": slurm.get("time", 60)}
    if cluster == "slurm":
        params.update(slurm_partition=slurm.get("partition"), gpus_per_node=slurm.get("gpus", 1),
                      slurm_array_parallelism=slurm.get("array_parallelism", 64),
                      slurm_additional_parameters=slurm.get("sbatch", {}))
        params = {k: v for k, v in params.items() if v is not None}
    executor.update_parameters(**params)
    todo = [(j, n) for j, n in zip(jobs, names) if force or state(j.results, n) != "done"]
    if not todo:
        return []
    submitted = executor.map_array(_submitit_job, [asdict(j) for j, _ in todo], [n for _, n in todo],
                                   [retry_failed] * len(todo), [force] * len(todo), [list(plugins or [])] * len(todo))
    return [r.result() for r in submitted] if cluster == "local" else [s.job_id for s in submitted]



# ------------------------------------------------------------------------------------------ the table


def _local(req: SweepRequest, jobs: list[RunRequest], names: list[str], plan_path: Path, progress, echo) -> Launched:
    if req.workers <= 1:
        return Launched(run_local(jobs, names, req.retry_failed, req.force, progress, echo))
    codes = run_workers(plan_path, req.workers, req.retry_failed, req.force, names, req.spec.results, progress, echo)
    return Launched(workers_failed=sum(c != 0 for c in codes))


def _slurm(req: SweepRequest, jobs: list[RunRequest], names: list[str], plan_path: Path, progress, echo) -> Launched:
    ids = run_submitit(jobs, names, req.retry_failed, req.force, "slurm", asdict(req.slurm), req.spec.plugins)
    return Launched({"submitted": len(ids)}, submitted=True)


def _submitit_local(req: SweepRequest, jobs: list[RunRequest], names: list[str], plan_path: Path, progress,
                    echo) -> Launched:
    done = run_submitit(jobs, names, req.retry_failed, req.force, "local", asdict(req.slurm), req.spec.plugins)
    return Launched({k: done.count(k) for k in sorted(set(done))})


LAUNCHERS: dict[str, Callable[..., Launched]] = {"local": _local, "slurm": _slurm, "submitit-local": _submitit_local}
