"""Published numbers to compare against: a CSV (``reference/README.md``), validated row by row."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import UeobenchError
from ..data.protocols import SHIFTS, load_protocol
from ..scoring.metrics import METRICS

REFERENCE_COLUMNS = ("dataset", "protocol", "domain", "backbone", "method", "metric", "value", "citation")


def read_reference(path: str | Path) -> Any:
    """Load and validate a file of published numbers (CSV, see ``reference/README.md``) as a DataFrame."""
    import pandas as pd

    p = Path(path)
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False, comment="#")
    except (OSError, pd.errors.ParserError) as e:
        raise UeobenchError(f"{p}: cannot read reference numbers ({e})") from None
    missing = [c for c in REFERENCE_COLUMNS if c not in df.columns]
    if missing:
        raise UeobenchError(f"{p}: missing column(s) {missing}; expected {', '.join(REFERENCE_COLUMNS)}")
    for i, row in df.iterrows():
        where = f"{p}:{i + 2}"
        try:
            proto = load_protocol(row["dataset"])
        except UeobenchError as e:
            raise UeobenchError(f"{where}: {e}") from None
        if row["protocol"] not in SHIFTS:
            raise UeobenchError(f"{where}: protocol '{row['protocol']}' is not one of {', '.join(SHIFTS)}")
        if row["domain"] != "avg" and not proto.has_domain(row["domain"]):
            raise UeobenchError(f"{where}: dataset '{row['dataset']}' has no domain '{row['domain']}'")
        if row["metric"] not in METRICS:
            raise UeobenchError(f"{where}: metric '{row['metric']}' is not one of {', '.join(METRICS)}")
        try:
            v = float(row["value"])
        except ValueError:
            raise UeobenchError(f"{where}: value {row['value']!r} is not a number") from None
        if not 0 <= v <= 100:
            raise UeobenchError(f"{where}: value {v} is not a percentage in [0, 100]")
        if not row["citation"].strip():
            raise UeobenchError(f"{where}: every reported number needs a citation")
    df["value"] = df["value"].astype(float)
    df["domain_key"] = [
        "avg" if d == "avg" else load_protocol(ds).domain(d).name for ds, d in zip(df["dataset"], df["domain"])
    ]
    return df
