"""One run, end to end: plan it, claim it (or reuse an identical finished run), execute it, record it.

The pieces live in their own modules: ``plan`` (identity), ``session`` (this machine: device, seeds, backbone,
the method's setup), ``evaluation`` (predictions and metrics), ``record`` (the document) and the store
(``ueobench.store``). A single run takes the same claim a sweep takes, so identical runs started at once compute
once: the others wait for the claim and then reuse the record.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.progress import make_progress
from ..store.claims import claim_or_reuse
from ..store.layout import run_dir
from ..store.records import RunRecord, record_failure, store_sources, write_run
from .plan import PlannedRun, plan_run
from .precision import resolve_precision
from .record import record_document
from .request import RunRequest
from .session import resolve_device, start

__all__ = ["RunRequest", "RunResult", "run", "execute_planned"]


@dataclass
class RunResult:
    record: RunRecord
    path: Path
    skipped: bool  # True when an identical finished run was found and reused


def run(req: RunRequest, progress: Any = None) -> RunResult:
    """Run one configuration, or return the finished record of an identical one (unless ``force``)."""
    with make_progress(progress) as progress:
        planned = plan_run(req, progress)
        return execute_planned(planned, progress, wait=True)


def execute_planned(planned: PlannedRun, progress: Any = None, wait: bool = True) -> RunResult:
    """Claim the plan's id and execute it under that id (never under a recomputed one)."""
    req, name = planned.request, planned.run_id

    def runnable_here() -> None:
        resolve_precision(planned.plan.precision, resolve_device(req.device))

    with claim_or_reuse(req.results, name, req.force, wait, before_claim=runnable_here) as existing:
        if existing is not None:
            return RunResult(existing, run_dir(req.results, name), skipped=True)
        log = getattr(progress, "log", lambda message: None)
        p = planned.plan
        log(f"run {name}: started ({planned.label}, {p.dataset}/{p.shift}/{p.domain}, {p.backbone}, seed {p.seed})")
        try:
            record = _execute(planned, progress)
        except Exception as e:  # KeyboardInterrupt and kills leave the run simply not done
            path = record_failure(req.results, name, e, asdict(req))
            log(f"run {name}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (record: {path})")
            raise
        m = record.metrics.get("test", {})
        shown = " ".join(f"{k} {100 * m[k]:.1f}" for k in ("acc", "auroc", "hscore") if m.get(k) is not None)
        log(f"run {name}: done in {record.raw['timings']['total_s']:.1f}s; test {shown}")
        return RunResult(record, run_dir(req.results, name), skipped=False)


def _execute(planned: PlannedRun, progress: Any) -> RunRecord:
    t0 = time.perf_counter()
    session = start(planned, progress)
    t_adapt = time.perf_counter()
    history = session.method.adapt(session.context) or []
    t_eval = time.perf_counter()
    metrics, preds = session.evaluate_splits()
    t_end = time.perf_counter()
    timings = {"setup_s": t_adapt - t0, "adapt_s": t_eval - t_adapt, "eval_s": t_end - t_eval, "total_s": t_end - t0}
    doc = record_document(planned, session, history, metrics, timings)
    store_sources(planned.request.results, planned.code)  # before the record that names them
    return write_run(planned.request.results, planned.run_id, doc, preds, force=planned.request.force)
