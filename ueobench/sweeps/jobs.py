"""The jobs of a sweep: their run ids (planned once and saved with the sweep), and executing one job.

Every job is identified by the id of its run plan, computed once when the sweep is planned and stored in
``<results>/sweeps/<key>.json``; workers, SLURM array tasks and ``status`` use the stored ids and never
recompute different ones. A worker that finds a job's code or data changed since planning (its plan would now
hash differently) fails that job with the reason instead of running it under the old id.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from ..core.errors import UeobenchError
from ..core.files import atomic_write_text
from ..runs.request import RunRequest
from ..store.claims import Timeout, state
from ..store.layout import failure_path, sweep_path, sweeps_dir
from ..store.records import record_failure
from .spec import SweepSpec


def plan_jobs(jobs: list[RunRequest], planner=None) -> list:
    """The plan of every job, with one shared planner (each image list is read once)."""
    from ..runs.plan import Planner

    planner = planner or Planner()
    return [planner.plan(j) for j in jobs]


def job_names(jobs: list[RunRequest], planner=None) -> list[str]:
    """The run id of every job."""
    return [p.run_id for p in plan_jobs(jobs, planner)]


def unique_jobs(jobs: list[RunRequest], plans: list) -> tuple[list[RunRequest], list]:
    """One job per run id: spellings of one value (``0.1,0.10,1e-1``, ``clipart,Clipart``) are one run."""
    seen: set[str] = set()
    keep = []
    for i, p in enumerate(plans):
        if p.run_id not in seen:
            seen.add(p.run_id)
            keep.append(i)
    return [jobs[i] for i in keep], [plans[i] for i in keep]


def run_job(req: RunRequest, name: str | None = None, retry_failed: bool = False, force: bool = False,
            planner=None, progress=None) -> str:
    """Claim and run one job under its planned id ``name``; returns what happened: done, skipped,
    running-elsewhere, failed, failed-before."""
    from ..runs.plan import Planner
    from ..runs.runner import execute_planned

    planner = planner or Planner(progress)
    req = dataclasses.replace(req, force=force)
    results = req.results

    def settled(run_id: str) -> str | None:  # what makes planning and running unnecessary
        if force:
            return None
        if state(results, run_id) == "done":
            return "skipped"
        if not retry_failed and failure_path(results, run_id).is_file():
            return "failed-before"
        return None

    if name is not None and settled(name):
        return settled(name)  # type: ignore[return-value]
    try:
        planned = planner.plan(req)
    except Exception as e:  # noqa: BLE001 - it failed before starting (a plugin, the data): recorded, sweep goes on
        if name is not None:
            record_failure(results, name, e, asdict(req))
        return "failed"
    if name is None:
        name = planned.run_id
        if settled(name):
            return settled(name)  # type: ignore[return-value]
    elif planned.run_id != name:
        err = UeobenchError(f"the method's code or the data changed since this sweep was planned (planned run "
                            f"{name}, now {planned.run_id}); plan the sweep again with the same ueobench sweep command")
        record_failure(results, name, err, asdict(req))
        return "failed"
    try:
        result = execute_planned(planned, progress, wait=False)  # records its own failures once it has started
    except Timeout:
        return "running-elsewhere"
    except Exception as e:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
        if not failure_path(results, name).is_file():
            record_failure(results, name, e, asdict(req))
        return "failed"
    return "skipped" if result.skipped else "done"  # skipped: another worker finished it before our claim


# ------------------------------------------------------------------------------------------ saved sweeps


def save_sweep(spec: SweepSpec, jobs: list[RunRequest], names: list[str]) -> Path:
    """``<results>/sweeps/<key>.json``: the spec and its run names, so ``ueobench status`` can report the grid."""
    path = sweep_path(spec.results, spec.key())
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"key": spec.key(), "spec": asdict(spec), "jobs": [asdict(j) for j in jobs], "names": names}
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return path


def load_sweep(path: str | Path) -> tuple[SweepSpec, list[RunRequest], list[str]]:
    """A saved sweep; a damaged or foreign file is one ``UeobenchError`` naming it."""
    path = Path(path)
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
        spec = SweepSpec(**doc["spec"])
        jobs = [RunRequest(**j) for j in doc["jobs"]]
        names = doc["names"]
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and len(names) == len(jobs)):
            raise ValueError("names do not match the jobs")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise UeobenchError(f"{path}: not a readable saved sweep ({type(e).__name__}: {str(e)[:200]}); remove it, "
                            f"or plan the sweep again with its ueobench sweep command") from None
    return spec, jobs, names


def saved_sweeps(results: str | Path) -> Iterator[Path]:
    d = sweeps_dir(results)
    if d.is_dir():
        yield from sorted(d.glob("*.json"))
