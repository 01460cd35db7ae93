"""Published numbers to compare against: a CSV (``reference/README.md``), validated row by row."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import UeobenchError
from ..data.protocols import SHIFTS, load_protocol
from ..scoring.metrics import METRICS

REFERENCE_COLUMNS = ("dataset", "protocol", "domain", "backbone", "method", "metric", "value", "citation")


def read_reference(path: str | Path) -> Any:
    """Load and validate a file of published numbers (CSV, see ``reference/README.md``) as a DataFrame.

    Lines whose first character is ``#`` are comments; a ``#`` inside a field is text. Every row has exactly
    the header's fields, and a cell (dataset, protocol, domain, backbone, method, metric) is reported once."""
    import csv

    import pandas as pd

    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise UeobenchError(f"{p}: cannot read reference numbers ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UeobenchError(f"{p}: not UTF-8 ({e.reason} at byte {e.start}); save the file as UTF-8") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.startswith("#")]
    if not lines:
        raise UeobenchError(f"{p}: no header; the first line must be {','.join(REFERENCE_COLUMNS)}")
    try:
        parsed = list(csv.reader([line for _, line in lines], strict=True))
    except csv.Error as e:
        raise UeobenchError(f"{p}: not valid CSV ({e})") from None
    header = [h.strip() for h in parsed[0]]
    missing = [c for c in REFERENCE_COLUMNS if c not in header]
    if missing:
        raise UeobenchError(f"{p}: missing column(s) {missing}; expected {', '.join(REFERENCE_COLUMNS)}")
    records, seen = [], {}
    for (n, _), fields in zip(lines[1:], parsed[1:]):
        where = f"{p}:{n}"
        if len(fields) != len(header):
            raise UeobenchError(f"{where}: {len(fields)} fields where the header has {len(header)}; quote a field "
                                f"that holds a comma")
        row = dict(zip(header, (f.strip() for f in fields)))
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
        if not 0 <= v <= 100:  # NaN fails this too
            raise UeobenchError(f"{where}: value {v} is not a percentage in [0, 100]")
        if not row["citation"]:
            raise UeobenchError(f"{where}: every reported number needs a citation")
        row["value"] = v
        row["domain_key"] = "avg" if row["domain"] == "avg" else proto.domain(row["domain"]).name
        cell = tuple(row[k] for k in ("dataset", "protocol", "domain_key", "backbone", "method", "metric"))
        if cell in seen:
            raise UeobenchError(f"{where}: this cell was already reported at line {seen[cell]}; keep one number "
                                f"per dataset, protocol, domain, backbone, method and metric")
        seen[cell] = n
        records.append(row)
    return pd.DataFrame(records, columns=[*header, "domain_key"])
