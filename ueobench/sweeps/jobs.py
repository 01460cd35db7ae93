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


def job_names(jobs: list[RunRequest], planner=None) -> list[str]:
    """The run id of every job, planned with one shared planner (each image list is read once)."""
    from ..runs.plan import Planner

    planner = planner or Planner()
    return [planner.plan(j).run_id for j in jobs]


def run_job(req: RunRequest, name: str | None = None, retry_failed: bool = False, force: bool = False,
            planner=None) -> str:
    """Claim and run one job under its planned id ``name``; returns what happened: done, skipped,
    running-elsewhere, failed, failed-before."""
    from ..runs.plan import Planner
    from ..runs.runner import execute_planned

    planner = planner or Planner()
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
        result = execute_planned(planned, wait=False)  # records its own failures once the run has started
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
    doc = json.loads(Path(path).read_text())
    return SweepSpec(**doc["spec"]), [RunRequest(**j) for j in doc["jobs"]], doc["names"]


def saved_sweeps(results: str | Path) -> Iterator[Path]:
    d = sweeps_dir(results)
    if d.is_dir():
        yield from sorted(d.glob("*.json"))
