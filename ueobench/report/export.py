"""``ueobench export``: the long table, one row per run, with every plan field, each option as its own column
(``option.<name>``), the label, and every metric of both splits (``test.<metric>``, ``target.<metric>``)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..core.errors import UeobenchError
from ..scoring.metrics import METRICS
from ..store.provenance import code_status
from ..store.records import RunRecord, iter_records
from .render import csv_cell
from .requests import ExportRequest


def records(results: str | Path = "results", code: str = "current") -> list[RunRecord]:
    """Every readable ``RunRecord`` under ``results``; ``code="current"`` keeps those made by the installed code."""
    if code not in ("current", "all"):
        raise UeobenchError(f"unknown code filter '{code}'; use current or all")
    return [r for r in iter_records(results) if code == "all" or code_status(r.code) != "changed"]


def export(req: ExportRequest) -> str | Path:
    """The text (CSV/JSONL) or, with ``req.output``, the written path (parquet needs ``output``)."""
    rows = []
    for r in records(req.results, req.code):
        row: dict[str, Any] = {"run_id": r.run_id, "label": r.label, "display_label": r.display_label,
                               "oracle": r.oracle, "schema": r.schema}
        row.update({k: v for k, v in r.raw.get("config", {}).items() if k != "options"})
        row.update({f"option.{k}": v for k, v in sorted(r.options.items())})
        for split in ("test", "target"):
            for m in METRICS:
                row[f"{split}.{m}"] = r.metrics.get(split, {}).get(m)
        rows.append(row)
    rows = [{k: _finite(v) for k, v in row.items()} for row in rows]
    if req.fmt == "jsonl":  # NaN and infinities are not JSON: null
        text = "".join(json.dumps(row, sort_keys=True, allow_nan=False) + "\n" for row in rows)
    else:
        import pandas as pd

        if req.fmt == "parquet":
            if req.output is None:
                raise UeobenchError("parquet is binary: pass --output FILE.parquet")
            df = pd.DataFrame(rows)
            for col in df.columns:  # one type per column: a plugin's option of another type under a shared name
                kinds = {type(v).__name__ for v in df[col] if v is not None and v == v}
                if len(kinds) > 1 or kinds & {"dict", "list"}:
                    df[col] = [None if v is None else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
                               for v in df[col]]
            try:
                df.to_parquet(req.output, index=False)
            except ImportError as e:
                raise UeobenchError(f"parquet export needs pyarrow ({e}); pip install pyarrow, or use csv") from None
            except OSError as e:
                raise UeobenchError(f"cannot write {req.output} ({e}); pass another --output") from None
            return Path(req.output)
        text = pd.DataFrame([{k: csv_cell(v) for k, v in row.items()} for row in rows]).to_csv(index=False)
    if req.output is not None:
        try:
            Path(req.output).write_text(text, encoding="utf-8")
        except OSError as e:
            raise UeobenchError(f"cannot write {req.output} ({e.strerror}); pass another --output") from None
        return Path(req.output)
    return text


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v
