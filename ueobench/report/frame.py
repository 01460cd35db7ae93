"""Records to a long frame: one row per (run, split) with identity columns and metrics in percent, optionally
recomputed from the saved predictions with another score or rejection rule (with the current scoring code)."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from ..core.errors import UeobenchError
from ..core.registry import suggest
from ..scoring.metrics import METRICS, evaluate
from ..scoring.scores import score_needs
from ..store.provenance import code_status
from ..store.records import iter_records, load_predictions

AXES = ("method", "dataset", "shift", "domain", "backbone")
AXIS_ALIASES = {"protocol": "shift"}
AXIS_ALIASES_OUT = {"shift": "protocol"}


def axis(name: str) -> str:
    name = AXIS_ALIASES.get(name, name)
    if name not in AXES:
        raise UeobenchError(f"unknown table axis '{name}'{suggest(name, [*AXES, 'protocol'])}")
    return name


def values(rows: list[dict[str, Any]], key: str) -> list[str]:
    return sorted({str(r[key]) for r in rows})


def records_frame(results: str | Path, score: str | None = None, rule: str | None = None,
                  code: str = "current", selected: Any = None) -> tuple[list[dict[str, Any]], int, int]:
    """One row per (run, split) with identity columns and metrics (percent), optionally recomputed, and the
    number of runs left out because they were made by other code than the installed one (``code="current"``)
    and because their record or saved predictions could not be read.

    Row labels come from the records themselves (``method.label``), never from the plugins loaded now. With
    ``code="all"``, runs of other code keep their own rows, marked with their code fingerprint.

    Runs whose plans differ only in the score or rule they were made with (a GL-MCM run beside an MCM one)
    count once: the run made with the asked score (else with MCM) stands for them.

    ``selected(row) -> bool`` names the rows a table will show: only those are recomputed (a recomputation
    reads the predictions and may cluster them); the others keep their stored metrics."""
    rows: list[dict[str, Any]] = []
    left_out = 0
    unreadable: list[str] = []
    chosen: dict[tuple, tuple[int, int, Any, str]] = {}
    for order, rec in enumerate(iter_records(results, unreadable)):
        label = rec.label
        if code_status(rec.code) == "changed":
            if code == "current":
                left_out += 1
                continue
            label = f"{label} [code {rec.code_fingerprint[-8:] if rec.code_fingerprint else 'v1'}]"
        config = {k: v for k, v in (rec.raw.get("config") or {}).items() if k not in ("score", "rule")}
        key = (json.dumps(config, sort_keys=True, default=str), label, rec.oracle)
        rank = 0 if rec.score == (score or "mcm") else 1 if rec.score == "mcm" else 2
        if key not in chosen or (rank, order) < chosen[key][:2]:
            chosen[key] = (rank, order, rec, label)
    for _, _, rec, label in sorted(chosen.values(), key=lambda c: c[1]):
        recompute = (score and score != rec.score) or (rule and rule != rec.rule)
        needs = score_needs(score or rec.score) if recompute else ()
        if recompute:
            try:
                preds = load_predictions(rec.path)
                scale = float(preds["logit_scale"])
                missing = [k for sp in rec.metrics for k in (f"{sp}_logits", f"{sp}_labels") if k not in preds]
                if missing:
                    raise KeyError(", ".join(missing))
            except (OSError, ValueError, KeyError, EOFError, TypeError) as e:
                warnings.warn(f"skipping {rec.path}: its saved predictions cannot be read ({e}); rerun it with "
                              f"--force to recompute scores", stacklevel=2)
                unreadable.append(str(rec.path))
                continue
            lacking = [k for sp in rec.metrics for k in needs if f"{sp}_{k}" not in preds]
        else:
            lacking = []
        for split, m in sorted(rec.metrics.items()):
            row = {"dataset": rec.dataset, "shift": rec.shift, "domain": rec.domain, "backbone": rec.backbone,
                   "seed": rec.seed, "method_name": rec.method, "method": label, "split": split,
                   "oracle": rec.oracle, "run_id": rec.run_id, "lacks_evidence": bool(lacking)}
            if lacking:  # never fall back to another score: build_tables refuses these rows if they are selected
                m = {}
            elif recompute and (selected is None or selected(row)):
                try:
                    extras = {k: preds[f"{split}_{k}"] for k in needs}
                    m = evaluate(preds[f"{split}_logits"], preds[f"{split}_labels"], rec.num_known,
                                 logit_scale=scale, score=score or rec.score, rule=rule or rec.rule, extras=extras)
                except ValueError as e:
                    raise UeobenchError(f"{rec.path}: saved predictions do not match the record ({e}); rerun it "
                                        f"with --force") from None
            for k in METRICS:
                v = m.get(k)
                row[k] = None if v is None or not math.isfinite(v) else 100.0 * v
            rows.append(row)
    return rows, left_out, len(unreadable)
