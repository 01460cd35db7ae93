"""How a sweep runs, as a table of plain functions (``LAUNCHERS``): sequentially here, in N local worker
processes pulling from the same saved plan, or as one SLURM array job through submitit. ueobench has no
scheduler of its own; what to run (the saved plan, claims, records) is kept apart from how.

Workers never share anything but the results folder, so any number of processes, on one host or several
hosts sharing a filesystem, can work through the same grid.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.errors import UeobenchError
from ..core.text import printable
from ..runs.request import RunRequest
from ..store.claims import state
from ..store.layout import failure_path, run_dir, submitit_dir
from ..store.records import failure_reason, find_record
from .jobs import run_job
from .spec import SweepRequest


@dataclass
class Launched:
    """What a launcher did: counts of what happened to the runs, workers that died, or array tasks submitted."""

    outcome: dict[str, int] = field(default_factory=dict)
    workers_failed: int = 0
    submitted: bool = False
    gpus: int = 0  # per SLURM task


def _finished_line(results: str | Path, name: str, what: str, i: int, n: int) -> str:
    """One line per finished run, for logs: what happened, the run, its headline metrics or its failure."""
    head = f"[{i}/{n}] {what:<17} {name}"
    if what in ("done", "skipped"):
        rec = find_record(results, name)
        m = rec.metrics.get("test", {}) if rec is not None else {}
        parts = [f"{k} {100 * m[k]:.1f}" for k in ("acc", "auroc", "hscore") if m.get(k) is not None]
        return head + ("  test " + " ".join(parts) if parts else "")
    if what == "failed":
        return f"{head}  {failure_reason(results, name)} ({failure_path(results, name)})"
    return head


def run_local(jobs: list[RunRequest], names: list[str], retry_failed: bool, force: bool, progress=None,
              echo=None, work: dict[str, float] | None = None) -> dict[str, int]:
    """Every job in this process, one after another. Progress counts ``work`` (each run's estimated images
    through the image tower), so that the ETA is not that of the cheap runs that happen to finish first."""
    outcome: dict[str, int] = {}
    states = {} if force else {x: state(req.results, x) for req, x in zip(jobs, names)}
    todo = _to_run(names, states, retry_failed, force)
    work = work or {}
    task = progress.add_task(_sweep_label("sweep", len(names) - len(todo), len(todo)),
                             total=sum(work.get(x, 1.0) for x in todo)) if progress is not None else None
    from ..runs.plan import Planner

    planner = Planner()
    for i, (req, name) in enumerate(zip(jobs, names), 1):
        what = run_job(req, name, retry_failed, force, planner)
        outcome[what] = outcome.get(what, 0) + 1
        if echo is not None:
            echo(_finished_line(req.results, name, what, i, len(jobs)))
        if task is not None and name in todo:
            progress.advance(task, work.get(name, 1.0))
    return outcome


def _to_run(names: list[str], states: dict[str, str], retry_failed: bool, force: bool) -> set[str]:
    """The runs a sweep will actually execute, from their ``state`` at its start: progress, rate and ETA count
    these only, so that resuming a sweep whose runs are mostly done does not report the skipped ones as work done
    in no time."""
    if force:
        return set(names)
    settled = {"done"} | (set() if retry_failed else {"failed"})
    return {x for x in names if states.get(x) not in settled}


def _sweep_label(label: str, settled: int, runs: int) -> str:
    label = f"{label}, {runs} runs to do (progress in estimated images processed)"
    return f"{label}, {settled} already settled" if settled else label


def run_workers(plan_path: Path, n: int, retry_failed: bool, force: bool, names: list[str], results: str,
                progress=None, echo=None, work: dict[str, float] | None = None) -> list[int]:
    """N worker processes over one plan (never more than there are runs to do); on GPUs each is pinned to one
    device via CUDA_VISIBLE_DEVICES. The workers end with the sweep: SIGTERM, SIGINT and SIGHUP are passed on
    to them, and interrupted runs are simply not done (the next sweep redoes them)."""
    import signal

    import torch

    started = time.time()
    before = {} if force else {x: state(results, x) for x in names}  # to tell skipped runs from new ones
    settled = {"done": "skipped", **({} if retry_failed else {"failed": "failed-before"})}
    todo = _to_run(names, before, retry_failed, force)
    n = max(1, min(n, len(todo)))
    gpus = torch.cuda.device_count()
    procs: list[subprocess.Popen] = []
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

    def stop(signum, frame):  # pass the signal on, then leave as the signal asks
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)
        raise SweepInterrupted(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    work = work or {}
    task = progress.add_task(_sweep_label(f"sweep ({n} workers)", len(names) - len(todo), len(todo)),
                             total=sum(work.get(x, 1.0) for x in todo)) if progress is not None else None
    reported: set[str] = set()
    try:
        while True:
            alive = any(p.poll() is None for p in procs)
            for x in names:
                st = state(results, x) if x not in reported else None
                if st in ("done", "failed") and not (force and not _newer(results, x, st, started)):
                    reported.add(x)
                    if echo is not None:
                        what = settled.get(before.get(x, ""), st)
                        echo(_finished_line(results, x, what, len(reported), len(names)))
            if task is not None:
                progress.update(task, completed=sum(work.get(x, 1.0) for x in reported & todo))
            if not alive:
                break
            time.sleep(1.0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    return [p.returncode for p in procs]


class SweepInterrupted(Exception):
    """The sweep got a signal; its workers were told to stop. Rerunning the same sweep resumes it."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _newer(results: str, name: str, st: str, since: float) -> bool:
    """With --force, a run counts as finished only once this sweep has written it again."""
    path = run_dir(results, name) if st == "done" else failure_path(results, name)
    try:
        return path.stat().st_mtime >= since
    except OSError:
        return False


def _submitit_job(req_dict: dict[str, Any], name: str, retry_failed: bool, force: bool, plugins: list[str]) -> str:
    """One array task: its log (the job's stderr) gets the plain progress lines and a last line saying what
    happened; a failed run makes the task fail, so the scheduler reports it."""
    from ..core.progress import make_progress
    from ..method.plugins import add_plugin_folder

    for folder in plugins:
        add_plugin_folder(folder)
    req = RunRequest(**req_dict)

    def log(line: str) -> None:  # always, even with progress silenced: the task's log says what it did
        print(printable(line), file=sys.stderr, flush=True)

    log(f"ueobench: run {name}")
    with make_progress() as progress:
        what = run_job(req, name, retry_failed, force, progress=progress)
    log(_finished_line(req.results, name, what, 1, 1))
    if what == "failed":
        raise UeobenchError(f"run {name} failed: {failure_reason(req.results, name)}")
    return what


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
        params.update(slurm_partition=slurm.get("partition"), gpus_per_node=slurm.get("gpus"),
                      slurm_array_parallelism=slurm.get("array_parallelism", 64),
                      slurm_additional_parameters=slurm.get("sbatch", {}))
        params = {k: v for k, v in params.items() if v is not None}
    executor.update_parameters(**params)
    todo = [(j, n) for j, n in zip(jobs, names) if force or state(j.results, n) != "done"]
    if not todo:
        return []
    submitted = executor.map_array(_submitit_job, [asdict(j) for j, _ in todo], [n for _, n in todo],
                                   [retry_failed] * len(todo), [force] * len(todo), [list(plugins or [])] * len(todo))
    if cluster != "local":
        return [s.job_id for s in submitted]
    outcomes = []
    for job in submitted:
        try:
            outcomes.append(job.result())
        except Exception:  # noqa: BLE001 - the task failed; its failure record says why
            outcomes.append("failed")
    return outcomes



# ------------------------------------------------------------------------------------------ the table


def _local(req: SweepRequest, jobs: list[RunRequest], names: list[str], plan_path: Path, progress, echo,
           work=None) -> Launched:
    if req.workers <= 1:
        return Launched(run_local(jobs, names, req.retry_failed, req.force, progress, echo, work))
    codes = run_workers(plan_path, req.workers, req.retry_failed, req.force, names, req.spec.results, progress, echo,
                        work)
    return Launched(workers_failed=sum(c != 0 for c in codes))


def slurm_gpus(req: SweepRequest) -> int:
    """GPUs per task: as asked, else what the runs' --device needs (auto: 1 only if this machine sees a GPU)."""
    if req.slurm.gpus is not None:
        return req.slurm.gpus
    device = req.spec.device
    if device == "cpu":
        return 0
    if device.startswith("cuda"):
        return 1
    import torch

    return 1 if torch.cuda.is_available() else 0


def _slurm(req: SweepRequest, jobs: list[RunRequest], names: list[str], plan_path: Path, progress, echo,
           work=None) -> Launched:
    options = {**asdict(req.slurm), "gpus": slurm_gpus(req)}
    ids = run_submitit(jobs, names, req.retry_failed, req.force, "slurm", options, req.spec.plugins)
    return Launched({"submitted": len(ids)}, submitted=True, gpus=options["gpus"])


def _submitit_local(req: SweepRequest, jobs: list[RunRequest], names: list[str], plan_path: Path, progress,
                    echo, work=None) -> Launched:
    done = run_submitit(jobs, names, req.retry_failed, req.force, "local", asdict(req.slurm), req.spec.plugins)
    return Launched({k: done.count(k) for k in sorted(set(done))})


LAUNCHERS: dict[str, Callable[..., Launched]] = {"local": _local, "slurm": _slurm, "submitit-local": _submitit_local}
