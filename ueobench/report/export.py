"""``ueobench export``: the long table, one row per run, with every plan field, each option as its own column
(``option.<name>``), the label, and every metric of both splits (``test.<metric>``, ``target.<metric>``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.errors import UeobenchError
from ..scoring.metrics import METRICS
from ..store.provenance import code_status
from ..store.records import RunRecord, iter_records
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
        row: dict[str, Any] = {"run_id": r.run_id, "label": r.label, "oracle": r.oracle, "schema": r.schema}
        row.update({k: v for k, v in r.raw.get("config", {}).items() if k != "options"})
        row.update({f"option.{k}": v for k, v in sorted(r.options.items())})
        for split in ("test", "target"):
            for m in METRICS:
                row[f"{split}.{m}"] = r.metrics.get(split, {}).get(m)
        rows.append(row)
    if req.fmt == "jsonl":
        text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    else:
        import pandas as pd

        df = pd.DataFrame(rows)
        if req.fmt == "parquet":
            if req.output is None:
                raise UeobenchError("parquet is binary: pass --output FILE.parquet")
            try:
                df.to_parquet(req.output, index=False)
            except ImportError as e:
                raise UeobenchError(f"parquet export needs pyarrow ({e}); pip install pyarrow, or use csv") from None
            return Path(req.output)
        text = df.to_csv(index=False)
    if req.output is not None:
        Path(req.output).write_text(text, encoding="utf-8")
        return Path(req.output)
    return text
