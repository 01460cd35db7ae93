"""Records to a long frame: one row per (run, split) with identity columns and metrics in percent, optionally
recomputed from the saved predictions with another score or rejection rule (with the current scoring code)."""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UeobenchError
from ..core.registry import suggest
from ..scoring.metrics import METRICS, evaluate
from ..scoring.scores import DEFAULT_RULE, score_needs
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


@dataclass
class Frame:
    """The long frame: ``rows`` (one per run and split); ``other_code`` (identity rows of the runs left out as
    made by other code, so each table can count its own); ``unreadable`` (paths of records or predictions that
    could not be read)."""

    rows: list[dict[str, Any]]
    other_code: list[dict[str, Any]]
    unreadable: list[str]


def records_frame(results: str | Path, score: str | None = None, rule: str | None = None,
                  code: str = "current", selected: Any = None) -> Frame:
    """One row per (run, split) with identity columns and metrics (percent), optionally recomputed, beside the
    runs left out because they were made by other code than the installed one (``code="current"``) and because
    their record or saved predictions could not be read.

    Row labels come from the records themselves (``method.label``), never from the plugins loaded now. With
    ``code="all"``, runs of other code keep their own rows, marked with their code fingerprint.

    Runs whose plans differ only in the score or rule they were made with (a GL-MCM run beside an MCM one)
    count once: the run made with the asked score (else with MCM) stands for them.

    ``selected(row) -> bool`` names the rows a table will show: only those are recomputed (a recomputation
    reads the predictions and may cluster them); the others keep their stored metrics."""
    rows: list[dict[str, Any]] = []
    other_code: list[dict[str, Any]] = []
    unreadable: list[str] = []
    twins: dict[tuple, list[tuple[int, Any, str]]] = {}
    for order, rec in enumerate(iter_records(results, unreadable)):
        label = rec.display_label
        status = code_status(rec.code)
        if status != "current":  # "unknown" (a file it ran is nowhere to be found) is not current either
            if code == "current":
                other_code.extend({"dataset": rec.dataset, "shift": rec.shift, "domain": rec.domain,
                                   "backbone": rec.backbone, "method": rec.display_label, "method_name": rec.method,
                                   "label": rec.label,
                                   "split": split, "run_id": rec.run_id} for split in rec.metrics)
                continue
            short = rec.code_fingerprint[-8:] if rec.code_fingerprint else "v1"
            label = f"{label} [code {short}{', source not found' if status == 'unknown' else ''}]"
        config = {k: v for k, v in (rec.raw.get("config") or {}).items() if k not in ("score", "rule")}
        twins.setdefault((json.dumps(config, sort_keys=True, default=str), label, rec.oracle), []).append(
            (order, rec, label))
    chosen = [c for group in twins.values() for c in _standing_for(group, score, rule)]
    for _, rec, label in sorted(chosen, key=lambda c: c[0]):
        recompute = bool((score and score != rec.score) or (rule and rule != rec.rule))
        needs = score_needs(score or rec.score) if recompute else ()
        preds: dict[str, Any] = {}
        if recompute:
            try:
                preds = load_predictions(rec.path)
                scale = float(preds["logit_scale"])
                missing = [k for sp in rec.metrics for k in (f"{sp}_logits", f"{sp}_labels") if k not in preds]
                if missing:
                    raise KeyError(", ".join(missing))
            except Exception as e:  # noqa: BLE001 - a damaged file of one run never stops a table
                _leave_out(rec, f"its saved predictions cannot be read ({type(e).__name__}: {e})", unreadable)
                continue
            lacking = [k for sp in rec.metrics for k in needs if f"{sp}_{k}" not in preds]
        else:
            lacking = []
        config = rec.raw.get("config") or {}
        part = []
        for split, m in sorted(rec.metrics.items()):
            row = {"dataset": rec.dataset, "shift": rec.shift, "domain": rec.domain, "backbone": rec.backbone,
                   "seed": rec.seed, "method_name": rec.method, "label": rec.label, "method": label, "split": split,
                   "oracle": rec.oracle, "run_id": rec.run_id, "lacks_evidence": bool(lacking),
                   "folder": rec.path.name if rec.path is not None else rec.run_id,
                   "score": score or rec.score, "rule": rule or rec.rule, "recomputed": recompute,
                   "options": json.dumps(rec.options, sort_keys=True, default=str), "track": track_of(rec),
                   **{k: str(config.get(k)) for k in VARIANT_FIELDS}}
            if lacking:  # never fall back to another score: build_tables refuses these rows if they are selected
                m = {}
            elif recompute and (selected is None or selected(row)):
                try:
                    extras = {k: preds[f"{split}_{k}"] for k in needs}
                    m = evaluate(preds[f"{split}_logits"], preds[f"{split}_labels"], rec.num_known,
                                 logit_scale=scale, score=score or rec.score,
                                 rule=DEFAULT_RULE if split == "source_val" else rule or rec.rule, extras=extras,
                                 reference_scores=_reference(preds, rec, score or rec.score, scale, needs))
                except Exception as e:  # noqa: BLE001 - wrong shapes, a record without known classes, ...
                    _leave_out(rec, f"its saved predictions do not match the record ({type(e).__name__}: {e})",
                               unreadable)
                    part = []
                    break
            for k in METRICS:
                v = m.get(k)
                row[k] = None if v is None or not math.isfinite(v) else 100.0 * v
            part.append(row)
        rows.extend(part)
    return Frame(rows, other_code, unreadable)


#: plan fields that are neither an axis nor a seed; a cell never holds runs that differ in one of them
VARIANT_FIELDS = ("weights", "activation", "precision", "eval_batch_size", "protocol_checksum", "data_checksum",
                  "source_checksum", "stream")


def track_of(rec: Any) -> str:
    """The track a run belongs to, as tables name it: "unlabeled target", or "labeled source: product" (with
    the few-shot size); runs of different tracks are never ranked together."""
    if rec.source is None:
        return "unlabeled target"
    return f"labeled source: {rec.source}" + (f", {rec.shots}-shot" if rec.shots else "")


def _reference(preds: dict[str, Any], rec: Any, score: str, scale: float, needs: tuple[str, ...]) -> Any:
    """The scores of the correctly classified source_val images (labeled-source runs), recomputed with the
    asked score; None for runs without source_val."""
    if "source_val_logits" not in preds:
        return None
    from ..scoring.scores import compute_score

    cos, labels = preds["source_val_logits"], preds["source_val_labels"]
    extras = {k: preds[f"source_val_{k}"] for k in needs if f"source_val_{k}" in preds}
    return compute_score(score, cos, scale, extras)[cos.argmax(1) == labels]


def _standing_for(group: list[tuple[int, Any, str]], score: str | None, rule: str | None) -> list:
    """Of runs that differ only in the score or rule they were made with, those a table shows: with an asked
    score (rule), one run stands for all (the one made with it, else with the default; the others would be
    recomputed to the same numbers); without, the run made with the default, else one per score (rule), each
    then shown in a table of its own."""
    for field, asked, default in (("score", score, "mcm"), ("rule", rule, DEFAULT_RULE)):
        by = {getattr(rec, field): [] for _, rec, _ in group}
        for item in group:
            by[getattr(item[1], field)].append(item)
        if asked:
            group = by.get(asked) or by.get(default) or next(iter(by.values()))
        elif default in by:
            group = by[default]
    firsts: dict[tuple, tuple] = {}
    for item in group:  # several runs of one score and rule: the first stands for them
        firsts.setdefault((item[1].score, item[1].rule), item)
    return list(firsts.values())


def _leave_out(rec: Any, why: str, unreadable: list[str]) -> None:
    warnings.warn(f"leaving out {rec.path}: {why}; rerun it with --force to recompute it", stacklevel=3)
    unreadable.append(str(rec.path))
