"""Leaderboards from stored run records: methods x domains for one dataset, shift, backbone and metric."""
from __future__ import annotations

from typing import Any

import pandas as pd

from .errors import UeobenchError
from .metrics import METRICS
from .records import iter_records
from .registry import suggest


def records_frame(results: str) -> pd.DataFrame:
    """One row per (run, split): the identity columns plus every metric."""
    rows: list[dict[str, Any]] = []
    for rec in iter_records(results):
        cfg = rec["config"]
        for split, m in rec.get("metrics", {}).items():
            row = {k: cfg[k] for k in ("method", "dataset", "shift", "domain", "backbone", "seed")}
            row["split"] = split
            row["oracle"] = bool(rec.get("method", {}).get("oracle", False))
            row["run_id"] = rec["run_id"]
            row.update({k: m.get(k) for k in METRICS})
            rows.append(row)
    cols = ["method", "dataset", "shift", "domain", "backbone", "seed", "split", "oracle", "run_id", *METRICS]
    return pd.DataFrame(rows, columns=cols)


def _pick(df: pd.DataFrame, column: str, value: str | None, what: str) -> tuple[pd.DataFrame, str]:
    present = sorted(df[column].unique())
    if value is None:
        if len(present) == 1:
            return df, present[0]
        raise UeobenchError(f"records hold several {what}s ({', '.join(present)}); pick one with --{what}")
    if value not in present:
        raise UeobenchError(f"no records for {what} '{value}'{suggest(value, present)}")
    return df[df[column] == value], value


def leaderboard(
    results: str = "results",
    metric: str = "acc",
    dataset: str | None = None,
    protocol: str | None = None,
    backbone: str | None = None,
    split: str = "test",
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Mean over seeds, in percent; rows are methods, columns domains plus their average."""
    if metric not in METRICS:
        raise UeobenchError(f"unknown metric '{metric}'{suggest(metric, list(METRICS))}")
    df = records_frame(results)
    if df.empty:
        raise UeobenchError(f"no finished runs under {results}/runs; start one with ueobench run")
    df = df[df["split"] == split]
    df, dataset = _pick(df, "dataset", dataset, "dataset")
    df, protocol = _pick(df, "shift", protocol, "protocol")
    df, backbone = _pick(df, "backbone", backbone, "backbone")
    df = df.assign(method=df["method"].where(~df["oracle"], df["method"] + " (oracle)"))
    values = pd.to_numeric(df[metric], errors="coerce") * 100
    cells = df.assign(value=values).groupby(["method", "domain"])["value"].mean().unstack("domain")
    cells = cells.reindex(sorted(cells.columns, key=str.lower), axis=1)
    cells["avg"] = cells.mean(axis=1, skipna=False)
    seeds = df.groupby("method")["seed"].nunique()
    cells.insert(0, "seeds", seeds)
    meta = {"dataset": dataset, "protocol": protocol, "backbone": backbone, "metric": metric, "split": split}
    return cells.sort_index(), meta


def render_markdown(cells: pd.DataFrame, meta: dict[str, str]) -> str:
    fmt = cells.copy()
    for c in fmt.columns:
        if c != "seeds":
            fmt[c] = fmt[c].map(lambda v: "–" if pd.isna(v) else f"{v:.1f}")
    title = (f"{meta['metric']} (%) on {meta['dataset']} / {meta['protocol']} / {meta['backbone']}, "
             f"{meta['split']} split; mean over seeds; – = undefined or missing")
    return title + "\n\n" + fmt.reset_index().to_markdown(index=False, tablefmt="github", disable_numparse=True) + "\n"
