"""Grids of runs: expansion, a dry-run plan, claims that keep a run from executing twice, failure records,
status, and launchers (local, local worker processes, SLURM through submitit).

Every job is identified by the id of its run plan (``plan.RunPlan.run_id``), computed once when the sweep is
planned and stored in ``<results>/sweeps/<key>.json``; workers, SLURM array tasks and ``status`` use the stored
ids and never recompute different ones. A worker that finds a job's code or data changed since planning (its
plan would now hash differently) fails that job with the reason instead of running it under the old id. A job is

- *done* when its run folder holds a readable record (written atomically by the runner; a damaged one counts as
  not done and is redone);
- *running* while some process holds its claim: an exclusive ``filelock`` lock on
  ``<results>/claims/<run>.lock``. The operating system drops the lock when the holder dies, even by SIGKILL,
  so a killed worker's run becomes claimable again;
- *failed* when ``<results>/failed/<run>.json`` holds its error and traceback (and it is not done);
- *pending* otherwise.

Workers never share anything but the results folder, so any number of processes, on one host or several
hosts sharing a filesystem, can work through the same grid.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

from .errors import UeobenchError
from .protocols import load_protocol
from .plan import Planner, RunRequest
from .records import atomic_write_text, canonical_json, failed_dir, record_failure

STATES = ("done", "running", "failed", "pending")


# ------------------------------------------------------------------------------------------------ axes


def parse_list(value: str | None, all_values: list[str] | None = None, what: str = "value") -> list[str]:
    """``a,b``, ``all`` (when the axis has a known set of values)."""
    if value is None:
        return []
    items = [v.strip() for v in value.split(",") if v.strip()]
    if items == ["all"]:
        if all_values is None:
            raise UeobenchError(f"'all' is not available for {what}")
        return list(all_values)
    return items


def parse_seeds(value: str) -> list[int]:
    """``0-2`` -> [0, 1, 2]; ``0,3,5``; or mixes of both."""
    seeds: list[int] = []
    for part in value.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            elif part:
                seeds.append(int(part))
        except ValueError:
            raise UeobenchError(f"bad --seed '{value}'; use a list or ranges such as 0-2 or 0,3,5") from None
    return list(dict.fromkeys(seeds))


@dataclass
class SweepSpec:
    """What ``ueobench sweep`` was asked for; ``expand`` turns it into run requests."""

    methods: list[str]
    protocols: list[str]
    domains: list[str]
    datasets: list[str]
    seeds: list[int]
    backbones: list[str | None]
    options: dict[str, str] = field(default_factory=dict)
    results: str = "results"
    data_root: str | None = None
    device: str = "auto"
    eval_batch_size: int = 256
    score: str = "mcm"
    rule: str = "nent:0.5"
    plugins: list[str] = field(default_factory=list)  # --plugins folders, loaded again in every worker

    def key(self) -> str:
        return hashlib.sha256(canonical_json(asdict(self)).encode()).hexdigest()[:12]


def expand(spec: SweepSpec) -> list[RunRequest]:
    """The grid, in a stable order. ``all`` domains are taken per dataset."""
    from dataclasses import fields as dc_fields

    from .method import build_options, get_method

    declared = {m: {f.name for f in dc_fields(get_method(m).Options)} for m in spec.methods}
    axes = {k: [v.strip() for v in str(raw).split(",")] for k, raw in spec.options.items()}  # a=1,2: a grid axis
    for key, values in axes.items():
        if not any(key in d for d in declared.values()):
            build_options(get_method(spec.methods[0]), {key: values[0]})  # raises with a suggestion
        for m in spec.methods:  # every value is validated before anything runs
            if key in declared[m]:
                for v in values:
                    build_options(get_method(m), {key: v})
    jobs = []
    for dataset in spec.datasets:
        proto = load_protocol(dataset)
        domains = [d.name for d in proto.domains] if spec.domains == ["all"] else [proto.domain(d).name for d in spec.domains]
        for p in spec.protocols:
            proto.split(p)
        for backbone, method, shift, domain, seed in product(spec.backbones, spec.methods, spec.protocols, domains, spec.seeds):
            keys = [k for k in axes if k in declared[method]]
            for values in product(*(axes[k] for k in keys)):
                jobs.append(RunRequest(
                    method=method, protocol=shift, domain=domain, dataset=dataset, backbone=backbone, seed=seed,
                    options=dict(zip(keys, values)), eval_batch_size=spec.eval_batch_size, device=spec.device,
                    data_root=spec.data_root, results=spec.results, score=spec.score, rule=spec.rule,
                ))
    if not jobs:
        raise UeobenchError("the sweep expands to no runs")
    return jobs


# ------------------------------------------------------------------------------------------- job state


def claims_dir(results: str | Path) -> Path:
    return Path(results) / "claims"


def job_names(jobs: list[RunRequest], planner: Planner | None = None) -> list[str]:
    """The run id of every job, planned with one shared planner (each image list is read once)."""
    planner = planner or Planner()
    return [planner.plan(j).run_id for j in jobs]


def job_name(req: RunRequest) -> str:
    return job_names([req])[0]


def is_running(results: str | Path, name: str) -> bool:
    lock_path = claims_dir(results) / f"{name}.lock"
    if not lock_path.exists():
        return False
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def state(results: str | Path, name: str) -> str:
    from .records import find_record

    if find_record(results, name) is not None:  # a damaged record is reported and counts as not done
        return "done"
    if is_running(results, name):
        return "running"
    if (failed_dir(results) / f"{name}.json").is_file():
        return "failed"
    return "pending"


def execute(req: RunRequest, name: str | None = None, retry_failed: bool = False, force: bool = False,
            planner: Planner | None = None) -> str:
    """Claim and run one job under its planned id ``name``; returns what happened: done, skipped,
    running-elsewhere, failed, failed-before."""
    from .runner import execute_planned

    planner = planner or Planner()
    req = dataclasses.replace(req, force=force)
    results = req.results

    def settled(run_id: str) -> str | None:  # what makes planning and running unnecessary
        if force:
            return None
        if state(results, run_id) == "done":
            return "skipped"
        if not retry_failed and (failed_dir(results) / f"{run_id}.json").is_file():
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
        if not (failed_dir(results) / f"{name}.json").is_file():
            record_failure(results, name, e, asdict(req))
        return "failed"
    return "skipped" if result.skipped else "done"  # skipped: another worker finished it before our claim


# ----------------------------------------------------------------------------------------------- plans


def save_plan(spec: SweepSpec, jobs: list[RunRequest], names: list[str]) -> Path:
    """``<results>/sweeps/<key>.json``: the spec and its run names, so ``ueobench status`` can report the grid."""
    path = Path(spec.results) / "sweeps" / f"{spec.key()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"key": spec.key(), "spec": asdict(spec), "jobs": [asdict(j) for j in jobs], "names": names}
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return path


def load_plan(path: str | Path) -> tuple[SweepSpec, list[RunRequest], list[str]]:
    doc = json.loads(Path(path).read_text())
    return SweepSpec(**doc["spec"]), [RunRequest(**j) for j in doc["jobs"]], doc["names"]


def plans(results: str | Path) -> Iterator[Path]:
    d = Path(results) / "sweeps"
    if d.is_dir():
        yield from sorted(d.glob("*.json"))


def grid_status(results: str | Path, names: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for n in names:
        counts[state(results, n)] += 1
    return counts


# ------------------------------------------------------------------------------------------- launchers


def _finished_line(results: str | Path, name: str, what: str, i: int, n: int) -> str:
    """One line per finished run, for logs: what happened, the run, its headline metrics or its failure."""
    from .records import find_record

    head = f"[{i}/{n}] {what:<17} {name}"
    if what in ("done", "skipped"):
        rec = find_record(results, name)
        m = rec.metrics.get("test", {}) if rec is not None else {}
        parts = [f"{k} {100 * m[k]:.1f}" for k in ("acc", "auroc", "hscore") if m.get(k) is not None]
        return head + ("  test " + " ".join(parts) if parts else "")
    if what == "failed":
        path = failed_dir(results) / f"{name}.json"
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
    planner = Planner()
    for i, (req, name) in enumerate(zip(jobs, names), 1):
        what = execute(req, name, retry_failed, force, planner)
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


def worker_main(plan_path: str, retry_failed: bool = False, force: bool = False) -> dict[str, int]:
    """One worker process: go through the plan, claiming each job that is not done or taken."""
    from .plugins import add_plugin_folder

    spec, jobs, names = load_plan(plan_path)
    for folder in spec.plugins:
        add_plugin_folder(folder)
    return run_local(jobs, names, retry_failed, force)


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
        cmd = [sys.executable, "-m", "ueobench.grid", str(plan_path)] + (["--retry-failed"] if retry_failed else []) + (
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
    from .plugins import add_plugin_folder

    for folder in plugins:
        add_plugin_folder(folder)
    return execute(RunRequest(**req_dict), name, retry_failed, force)


def run_submitit(jobs: list[RunRequest], names: list[str], retry_failed: bool, force: bool, cluster: str,
                 slurm: dict[str, Any], plugins: list[str] | None = None) -> list[str]:
    """Submit one array job through submitit; ``cluster`` is "slurm" or "local" (submitit's local executor)."""
    try:
        import submitit
    except ImportError:
        raise UeobenchError("the slurm launcher needs submitit: pip install 'ueobench[slurm]'") from None
    folder = Path(jobs[0].results) / "submitit" / "%j"
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


if __name__ == "__main__":  # python -m ueobench.grid PLAN [--retry-failed] [--force]: one worker
    worker_main(sys.argv[1], "--retry-failed" in sys.argv, "--force" in sys.argv)
