"""One run, end to end: plan it, claim it, reuse an identical finished run or execute it, and record it.

The pieces live in their own modules: ``plan`` (identity), ``execute`` (this machine), ``evaluation``
(predictions and metrics) and ``records`` (the stored record). A single run takes the same claim a sweep takes,
so identical runs started at once compute once: the others wait for the claim and then reuse the record.
"""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from .env import environment, peak_memory_mb
from .execute import Session, resolve_device, start
from .plan import PlannedRun, Planner, RunRequest, plan_run
from .precision import resolve_precision
from .progress import make_progress
from .records import SCHEMA_VERSION, RunRecord, check_writable, failed_dir, find_record, record_failure, runs_dir, write_run
from .scores import SCORES

__all__ = ["RunRequest", "RunResult", "run", "execute_planned", "start", "plan_run", "Planner", "resolve_device",
           "Session", "claim_path"]


@dataclass
class RunResult:
    record: RunRecord
    path: Path
    skipped: bool  # True when an identical finished run was found and reused


def claim_path(results: str | Path, run_id: str) -> Path:
    return Path(results) / "claims" / f"{run_id}.lock"


def run(req: RunRequest, progress: Any = None) -> RunResult:
    """Run one configuration, or return the finished record of an identical one (unless ``force``)."""
    with make_progress(progress) as progress:
        planned = plan_run(req, progress)
        return execute_planned(planned, progress, wait=True)


def execute_planned(planned: PlannedRun, progress: Any = None, wait: bool = True) -> RunResult:
    """Claim the plan's id and execute it under that id (never under a recomputed one)."""
    req, name = planned.request, planned.run_id
    if not req.force:
        existing = find_record(req.results, name)
        if existing is not None:
            return RunResult(existing, runs_dir(req.results) / name, skipped=True)
    resolve_precision(planned.plan.precision, resolve_device(req.device))  # can this machine run it at all?
    check_writable(req.results)
    lock_file = claim_path(req.results, name)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    log = getattr(progress, "log", lambda message: None)
    with FileLock(str(lock_file), timeout=-1 if wait else 0):
        if not req.force:  # an identical run may have finished while we waited for its claim
            existing = find_record(req.results, name)
            if existing is not None:
                return RunResult(existing, runs_dir(req.results) / name, skipped=True)
        p = planned.plan
        log(f"run {name}: started ({planned.label}, {p.dataset}/{p.shift}/{p.domain}, {p.backbone}, seed {p.seed})")
        try:
            result = _execute(planned, progress)
        except Exception as e:  # KeyboardInterrupt and kills leave the run simply not done
            path = record_failure(req.results, name, e, asdict(req))
            log(f"run {name}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (record: {path})")
            raise
        m = result.record.metrics.get("test", {})
        shown = " ".join(f"{k} {100 * m[k]:.1f}" for k in ("acc", "auroc", "hscore") if m.get(k) is not None)
        log(f"run {name}: done in {result.record.raw['timings']['total_s']:.1f}s; test {shown}")
        return result


def _execute(planned: PlannedRun, progress: Any) -> RunResult:
    t0 = time.perf_counter()
    req, plan, name = planned.request, planned.plan, planned.run_id
    session: Session = start(planned, progress)
    method, backbone, groups, device = session.method, session.backbone, session.groups, session.device
    sd = planned.shift_data
    proto = planned.protocol
    t_adapt = time.perf_counter()
    history = method.adapt(session.context) or []
    t_eval = time.perf_counter()
    metrics, preds = session.evaluate_splits()
    t_end = time.perf_counter()
    s = sd.split
    record = {
        "schema": SCHEMA_VERSION,
        "run_id": name,
        "status": "done",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": plan.to_dict(),
        "request": {k: v for k, v in asdict(req).items() if k not in ("force", "cache")},
        "method": {
            "name": method.name,
            "label": planned.label,
            "options": plan.options,
            "options_changed": planned.options_changed,
            "dataset_defaults": type(method).dataset_defaults.get(proto.name, {}),
            "code": planned.code,
            "uses_target_labels": method.is_oracle(),
            "oracle": method.is_oracle(),
            "adaptation": method.adaptation,
            "selection": "last epoch (no label-based selection)",
            "info": method.info(),
        },
        "history": history,
        "protocol": {
            "dataset": proto.name,
            "shift": s.shift,
            "file": Path(proto.path).name,
            "checksum": proto.checksum,
            "prompt": getattr(method, "template", proto.prompt),
            "num_classes": s.num_classes,
            "num_known": s.num_known,
            "known": sd.known_names,
            "unknown": [proto.classes[i] for i in s.unknown],
            "absent": [proto.classes[i] for i in s.absent],
        },
        "data": {
            "source": sd.domain.source,
            "location": sd.domain.location,
            "checksum": plan.data_checksum,
            "n_adapt": len(sd.adapt),
            "n_test": len(sd.test),
            "skipped": sd.domain.skipped,
        },
        "backbone": backbone.info,
        "evaluation": {"score": plan.score, "score_temperature": SCORES.get(plan.score).temperature,
                       "hscore_rule": plan.rule, "logit_scale": backbone.logit_scale,
                       "predictions": session.evaluator.paths,
                       "splits": {"test": "held-out test split (all classes)", "target": "the unlabeled adaptation data"}},
        "seed": plan.seed,
        "metrics": metrics,
        "trainable_parameters": sum(p.numel() for ps in groups.values() for p in ps),
        "trainable_groups": {k: sum(p.numel() for p in v) for k, v in groups.items()},
        "feature_cache": {"enabled": req.cache, **session.features.stats},
        "settings": session.settings,
        "timings": {"setup_s": t_adapt - t0, "adapt_s": t_eval - t_adapt, "eval_s": t_end - t_eval,
                    "total_s": t_end - t0},
        "peak_memory": peak_memory_mb(device),
        "environment": environment(device),
    }
    damaged = (runs_dir(req.results) / name).exists()  # only a damaged record is there when we got this far
    path = write_run(req.results, name, record, preds, force=req.force or damaged)
    (failed_dir(req.results) / f"{name}.json").unlink(missing_ok=True)
    rec = find_record(req.results, name)
    assert rec is not None
    return RunResult(rec, path, skipped=False)
