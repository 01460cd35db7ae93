"""One run, end to end: plan it, claim it (or reuse an identical finished run), execute it, record it.

The pieces live in their own modules: ``plan`` (identity), ``session`` (this machine: device, seeds, backbone,
the method's setup), ``evaluation`` (predictions and metrics), ``record`` (the document) and the store
(``ueobench.store``). A single run takes the same claim a sweep takes, so identical runs started at once compute
once: the others wait for the claim and then reuse the record.
"""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UeobenchError
from ..core.progress import make_progress
from ..store.artifacts import claim_artifact, write_artifact
from ..store.claims import claim_or_reuse
from ..store.layout import run_dir
from ..store.records import RunRecord, record_failure, store_sources, write_run
from .plan import PlannedRun, plan_run
from .precision import resolve_precision
from .env import environment
from .record import json_safe, record_document
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
    artifact = None
    if planned.artifact is not None:
        history, artifact = _train_or_load(planned, session, progress)
    else:
        history = session.method.adapt(session.context) or []
    t_eval = time.perf_counter()
    metrics, preds = session.evaluate_splits()
    t_end = time.perf_counter()
    timings = {"setup_s": t_adapt - t0, "adapt_s": t_eval - t_adapt, "eval_s": t_end - t_eval, "total_s": t_end - t0}
    doc = record_document(planned, session, history, metrics, timings, artifact)
    store_sources(planned.request.results, planned.code)  # before the record that names them
    return write_run(planned.request.results, planned.run_id, doc, preds, force=planned.request.force)


def _train_or_load(planned: PlannedRun, session: Any, progress: Any) -> tuple[list[Any], dict[str, Any]]:
    """A labeled-source method's trained model: loaded when its artifact exists, else trained once (under the
    artifact's claim) and stored for every other target and shift. Returns the training history and what the
    record says about the artifact."""
    assert planned.artifact is not None and planned.source_data is not None
    results, aid = planned.request.results, planned.artifact.artifact_id
    method = session.method
    log = getattr(progress, "log", lambda message: None)
    with claim_artifact(results, aid) as art:
        if art is None:
            log(f"artifact {aid}: training on {planned.source_data.domain.domain} "
                f"({len(planned.source_data.train)} labeled images)")
            t0 = time.perf_counter()
            history = method.adapt(session.context) or []
            train_s = time.perf_counter() - t0
            meta = {
                "plan": planned.artifact.to_dict(),
                "history": json_safe(history),
                "selection": json_safe(method.selection()),
                "extra": json_safe(method.artifact_meta()),
                "info": json_safe(method.info()),
                "source": planned.source_data.summary(),
                "trained_by": planned.run_id,
                "train_s": train_s,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "code": planned.code,
                "environment": environment(session.device),
                "settings": session.settings,
            }
            art = write_artifact(results, aid, meta, method.artifact_state())
            reused = False
        else:
            method.load_artifact_state(art.load_state(), art.meta.get("extra") or {})
            reused = True
        if art.meta.get("plan", {}).get("method") != planned.artifact.method:  # a damaged or foreign artifact
            raise UeobenchError(f"artifact {aid} was trained by '{art.meta.get('plan', {}).get('method')}', not "
                                f"'{planned.artifact.method}'; remove {art.path} and rerun")
    method.finish(session.context)
    meta = art.meta
    info = {"id": aid, "reused": reused, "trained_by": meta.get("trained_by"), "train_s": meta.get("train_s"),
            "state_sha256": meta.get("state_sha256"), "selection": meta.get("selection")}
    return list(meta.get("history") or []), info
