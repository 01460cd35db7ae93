"""Leaderboards from stored run records: the frame's rows grouped into cells.

A table is built in three steps: records -> a long frame (``frame.py``) -> cells (mean, spread and seed count
of each metric per row and column, averaged over the axes that are not shown, e.g. domains; this module) -> a
renderer (``render.py``: markdown, LaTeX, CSV, JSON, HTML). Rendering is deterministic: same records, same bytes.
Tables come from records alone, never from loaded plugins.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UeobenchError
from ..core.registry import suggest
from ..scoring.metrics import LOWER_IS_BETTER, METRICS
from ..scoring.scores import how_to_save
from .frame import AXES, AXIS_ALIASES_OUT, axis, records_frame, values
from .requests import TableRequest

ORACLE_SUFFIX = " (oracle)"


@dataclass
class Cell:
    mean: float | None
    std: float | None
    n: int  # seeds
    expected: int | None = None
    rank: int | None = None  # 1 best, 2 second best within its column
    reference: float | None = None

    @property
    def short(self) -> bool:
        return self.expected is not None and self.n < self.expected


@dataclass
class Table:
    rows: list[str]
    cols: list[str]  # includes "avg" when asked for
    metrics: list[str]
    cells: dict[tuple[str, str, str], Cell]  # (row, col, metric)
    meta: dict[str, Any]
    oracle_rows: set[str] = field(default_factory=set)
    citations: list[str] = field(default_factory=list)


def _filter(rows: list[dict[str, Any]], filters: dict[str, str | None]) -> list[dict[str, Any]]:
    for col, pattern in filters.items():
        if not pattern:
            continue
        col = axis(col)
        pats = [p.strip() for p in pattern.split(",") if p.strip()]

        def matches(v: Any, pats: list[str] = pats) -> bool:
            return any(fnmatch.fnmatchcase(str(v), p) for p in pats)

        # a method's name also selects all of its variants
        kept = [r for r in rows if matches(r[col]) or (col == "method" and matches(r["method_name"]))]
        if not kept:
            present = values(rows, col)
            raise UeobenchError(f"no records match {col} '{pattern}'" + (f" (have: {', '.join(present)})" if present else ""))
        rows = kept
    return rows


def build_tables(req: TableRequest) -> list[Table]:
    """One table per group of records that differ in an axis that is neither shown nor averaged (dataset,
    protocol, backbone, and method when it is not an axis): a results folder holding several datasets, shifts
    and backbones renders as several tables, never an error. Domains that are not shown are averaged."""
    metrics = req.metrics or ["acc"]
    for m in metrics:
        if m not in METRICS:
            raise UeobenchError(f"unknown metric '{m}'{suggest(m, list(METRICS))}")
    rows, cols = axis(req.rows), axis(req.cols)
    if rows == cols:
        raise UeobenchError("--rows and --cols must differ")
    split, filters, score, results = req.split, req.filters, req.score, req.results

    def selected(row: dict[str, Any]) -> bool:
        try:
            return row["split"] == split and bool(_filter([row], filters))
        except UeobenchError:
            return False

    df, left_out, unreadable = records_frame(results, score, req.rule, req.code, selected)
    if not df:
        if left_out:
            raise UeobenchError(f"all {left_out} finished runs under {Path(results) / 'runs'} were made by other code "
                                f"than the installed one; rerun them, or show them with --code all")
        raise UeobenchError(f"no finished runs under {Path(results) / 'runs'}; start one with ueobench run")
    df = _filter([r for r in df if r["split"] == split], filters)
    if not df:
        raise UeobenchError(f"no records for split '{split}'")
    without = sorted({r["run_id"] for r in df if r["lacks_evidence"]})
    if without:
        raise UeobenchError(
            f"--score {score} needs evidence that {len(without)} selected run(s) did not save (e.g. {without[0]}): "
            f"{how_to_save(score)}; rerun them so, or leave them out with --method, --backbone, --protocol or --domain")
    df = [{**r, "method": r["method"] + ORACLE_SUFFIX} if r["oracle"] else r for r in df]
    hidden = [a for a in AXES if a not in (rows, cols)]
    group_axes = [a for a in hidden if a != "domain" and len(values(df, a)) > 1]
    tables = []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in df:
        groups.setdefault(tuple(str(r[a]) for a in group_axes), []).append(r)
    for key, part in sorted(groups.items()):
        t = _one_table(part, metrics, rows, cols, hidden, req)
        t.meta["group"] = {AXIS_ALIASES_OUT.get(a, a): str(v) for a, v in zip(group_axes, key)}
        t.meta["other_code_left_out"] = left_out
        t.meta["unreadable_left_out"] = unreadable
        if req.reference:
            attach_reference(t, part, req.reference)
        tables.append(t)
    return tables


def build_table(req: TableRequest) -> Table:
    """The single table of a selection of records; an error naming the options that split it otherwise."""
    tables = build_tables(req)
    if len(tables) > 1:
        axes = sorted(tables[0].meta["group"])
        raise UeobenchError(f"the records form {len(tables)} tables (they differ in {', '.join(axes)}); "
                            f"select one with " + ", ".join(f"--{a}" for a in axes))
    return tables[0]


def _one_table(df: list[dict[str, Any]], metrics: list[str], rows: str, cols: str, hidden: list[str],
               req: TableRequest) -> Table:
    seeds, score, rule, average, rank_oracle, error = req.seeds, req.score, req.rule, req.average, req.rank_oracle, \
        req.error
    averaged = [a for a in hidden if len(values(df, a)) > 1]
    # one value per seed: the mean over the averaged axes; then mean, spread and count over seeds. A cell is
    # complete when it has every averaged combination its column has (judged within the column, so a shift or
    # dataset with fewer domains never voids another's cells)
    by_seed: dict[tuple[str, str, Any], list[dict[str, Any]]] = {}
    expected: dict[str, set[tuple]] = {}
    for r in df:
        by_seed.setdefault((str(r[rows]), str(r[cols]), r["seed"]), []).append(r)
        expected.setdefault(str(r[cols]), set()).add(tuple(str(r[a]) for a in averaged))
    row_labels = sorted(values(df, rows), key=str.lower)
    col_labels = sorted(values(df, cols), key=str.lower)
    oracle_rows = {r for r in row_labels if r.endswith(ORACLE_SUFFIX)} if rows == "method" else set()
    oracle_cols = {c for c in col_labels if c.endswith(ORACLE_SUFFIX)} if cols == "method" else set()
    per_cell: dict[tuple[str, str, str], list[float]] = {}
    for (r, c, _seed), group in sorted(by_seed.items(), key=lambda kv: str(kv[0])):
        complete = {tuple(str(x[a]) for a in averaged) for x in group} >= expected[c]
        for m in metrics:
            vals = [x[m] for x in group if x[m] is not None]
            if complete and vals and len(vals) == len(group):
                per_cell.setdefault((r, c, m), []).append(float(np.mean(vals)))
            else:
                per_cell.setdefault((r, c, m), [])
    cells: dict[tuple[str, str, str], Cell] = {k: _cell(np.array(v, dtype=float), seeds, error) for k, v in per_cell.items()}
    if average and len(col_labels) > 1 and cols != "method":
        for r in row_labels:
            for m in metrics:
                parts = [cells.get((r, c, m)) for c in col_labels]
                ok = all(p is not None and p.mean is not None for p in parts)
                vals = np.array([p.mean for p in parts], dtype=float) if ok else np.array([])
                n = min((p.n for p in parts if p is not None), default=0) if ok else 0
                cells[(r, "avg", m)] = Cell(float(vals.mean()) if ok else None, None, n, seeds)
        col_labels = [*col_labels, "avg"]
    if rows == "method":
        _rank(cells, row_labels, col_labels, metrics, exclude=set() if rank_oracle else oracle_rows, along="rows")
    elif cols == "method":
        _rank(cells, row_labels, col_labels, metrics, exclude=set() if rank_oracle else oracle_cols, along="cols")
    meta = {"rows": rows, "cols": cols, "metrics": metrics, "split": df[0]["split"], "averaged_over": averaged,
            "seeds_expected": seeds, "score": score, "rule": rule, "error": error, "ranked": "method" in (rows, cols),
            **{a: values(df, a) for a in hidden if len(values(df, a)) == 1}}
    return Table(row_labels, col_labels, metrics, cells, meta, oracle_rows | oracle_cols)


def _cell(vals: np.ndarray, expected: int | None, error: str = "std") -> Cell:
    if len(vals) == 0:
        return Cell(None, None, 0, expected)
    spread = None
    if len(vals) > 1:
        spread = float(vals.std(ddof=1))
        if error == "se":
            spread /= math.sqrt(len(vals))
    return Cell(float(vals.mean()), spread, len(vals), expected)


def _rank(cells, rows, cols, metrics, exclude: set[str], along: str) -> None:
    """Best and second best among the methods, on the values as displayed (two cells showing 76.6 tie).
    ``along="rows"``: methods are rows, ranked within each column; ``"cols"``: within each row."""
    lines, others = (cols, rows) if along == "rows" else (rows, cols)
    for line in lines:
        for m in metrics:
            sign = 1 if m in LOWER_IS_BETTER else -1

            def key(o, line=line, m=m):
                return (o, line, m) if along == "rows" else (line, o, m)

            shown = {o: round(cells[key(o)].mean, 1) for o in others
                     if o not in exclude and key(o) in cells and cells[key(o)].mean is not None}
            distinct = sorted(set(shown.values()), key=lambda v: sign * v)
            for o, v in shown.items():
                pos = distinct.index(v) + 1
                cells[key(o)].rank = pos if pos <= 2 and len(distinct) > 1 else None




def attach_reference(table: Table, df: list[dict[str, Any]], path: str | Path) -> None:
    """Reported numbers beside ours: each cell gets the published value of its (row, column, metric)."""
    from .reference import read_reference

    ref = read_reference(path)
    rows, cols = table.meta["rows"], table.meta["cols"]
    key_of = {"shift": "protocol", "domain": "domain_key"}
    fixed = {a: df[0][a] for a in AXES if a not in (rows, cols) and len(values(df, a)) == 1}
    for a, v in fixed.items():
        ref = ref[ref[key_of.get(a, a)] == v]
    for _, r in ref.iterrows():
        cell = table.cells.get((str(r[key_of.get(rows, rows)]), str(r[key_of.get(cols, cols)]), r["metric"]))
        if cell is not None:
            cell.reference = float(r["value"])
            if r["citation"] not in table.citations:
                table.citations.append(r["citation"])
