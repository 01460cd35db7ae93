"""The record document of a finished run, assembled in one place from the plan, the session and the results.

What goes in is described field by field in ``ueobench.store.records``; readers use the typed ``RunRecord``.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..scoring.scores import score_of
from ..store.records import SCHEMA_VERSION
from .env import environment, peak_memory_mb
from .plan import PlannedRun
from .session import Session


def json_safe(obj: Any) -> Any:
    """What a method reports, storable as JSON: NaN and infinities become null, tuples lists, other objects text."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy and torch scalars
        return json_safe(obj.item())
    return str(obj)


def record_document(planned: PlannedRun, session: Session, history: list[Any], metrics: dict[str, Any],
                    timings: dict[str, float], artifact: dict[str, Any] | None = None) -> dict[str, Any]:
    req, plan = planned.request, planned.plan
    method, backbone, groups, device = session.method, session.backbone, session.groups, session.device
    sd, proto = planned.shift_data, planned.protocol
    s = sd.split
    return {
        "schema": SCHEMA_VERSION,
        "run_id": planned.run_id,
        "status": "done",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": plan.to_dict(),
        "request": {k: v for k, v in asdict(req).items() if k not in ("force", "cache")},
        "method": {
            "name": method.name,
            "label": planned.label,
            "display_label": planned.display_label or planned.label,
            "module": type(method).__module__,
            "options": plan.options,
            "options_changed": planned.options_changed,
            "dataset_defaults": type(method).dataset_defaults.get(proto.name, {}),
            "code": planned.code,
            "uses_target_labels": method.is_oracle(),
            "oracle": method.is_oracle(),
            "adaptation": method.adaptation,
            "track": type(method).track,
            "uses_source_labels": artifact is not None,
            "selection": artifact["selection"] if artifact is not None else "last epoch (no label-based selection)",
            "info": json_safe(method.info()),
        },
        "history": json_safe(history),
        "source": None if planned.source_data is None else {
            **planned.source_data.summary(), "read": artifact is not None},
        "artifact": artifact,
        "protocol": {
            "dataset": proto.name,
            "shift": s.shift,
            "file": Path(proto.path).name,
            "checksum": proto.checksum,
            "prompt": method.template or proto.prompt,
            "num_classes": s.num_classes,
            "num_known": s.num_known,
            "known": sd.known_names,
            "unknown": [proto.class_name(i, s.shift) for i in s.unknown],
            "absent": [proto.class_name(i, s.shift) for i in s.absent],
            **({"composition": comp.describe()} if (comp := proto.composition(s.shift)) else {}),
        },
        "data": {
            "source": sd.domain.source,
            "location": sd.domain.location,
            "checksum": plan.data_checksum,
            "n_adapt": len(sd.adapt),
            "n_test": len(sd.test),
            "skipped": sd.domain.skipped,
            "excluded_source_train": sd.excluded_train,
        },
        "backbone": backbone.info,
        "evaluation": {"score": plan.score, "score_temperature": score_of(plan.score).temperature,
                       "hscore_rule": plan.rule, "logit_scale": session.evaluator.logit_scale,
                       "backbone_logit_scale": backbone.logit_scale,
                       "predictions": session.evaluator.paths,
                       "splits": _split_doc(planned)},
        "seed": plan.seed,
        "metrics": metrics,
        "trainable_parameters": sum(p.numel() for ps in groups.values() for p in ps),
        "trainable_groups": {k: sum(p.numel() for p in v) for k, v in groups.items()},
        "feature_cache": {"enabled": req.cache, **session.features.stats},
        "settings": session.settings,
        "timings": timings,
        "peak_memory": peak_memory_mb(device),
        "environment": environment(device),
    }


def _split_doc(planned: PlannedRun) -> dict[str, str]:
    doc = {"test": "held-out test split (all classes)", "target": "the unlabeled adaptation data"}
    if planned.source_data is not None:
        doc = {"test": "the target's held-out test split (all classes)",
               "target": "the target's adaptation list (never read by the method)"}
        if planned.shift_data.excluded_train:
            doc["note"] = (f"{planned.shift_data.excluded_train} images the model trained on (the target is the "
                           f"source domain) are left out of both")
        if planned.artifact is not None:
            doc["source_val"] = "the held-out labeled source images (selection and the idval reference)"
    return doc
