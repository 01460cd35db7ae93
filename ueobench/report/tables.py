"""Leaderboards from stored run records: the frame's rows grouped into cells.

A table is built in three steps: records -> a long frame (``frame.py``) -> cells (mean, spread and seed count
of each metric per row and column, averaged over the axes that are not shown, e.g. domains; this module) -> a
renderer (``render.py``: markdown, LaTeX, CSV, JSON, HTML). Rendering is deterministic: same records, same bytes.
Tables come from records alone, never from loaded plugins.
"""
from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UeobenchError
from ..data.protocols import SHIFTS
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
    partial: bool = False  # averaged over fewer domains than its dataset has

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
    runs: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (row, col) -> its runs' folders


def _filter(rows: list[dict[str, Any]], filters: dict[str, str | None], strict: bool = True) -> list[dict[str, Any]]:
    """Rows matching every filter's globs; ``strict``: an error (naming what there is) when none match."""
    for col, pattern in filters.items():
        if not pattern:
            continue
        col = axis(col)
        pats = [p.strip() for p in pattern.split(",") if p.strip()]

        def matches(v: Any, pats: list[str] = pats) -> bool:
            return any(fnmatch.fnmatchcase(str(v), p) for p in pats)

        # a method's name also selects all of its variants
        # a method filter matches the shown name, the registered name and the registered label
        kept = [r for r in rows if matches(r[col]) or (col == "method" and (matches(r["method_name"])
                                                                           or matches(r.get("label", ""))))]
        if not kept and strict:
            present = values(rows, col)
            raise UeobenchError(f"no records match {col} '{pattern}'" + (f" (have: {', '.join(present)})" if present else ""))
        rows = kept
    return rows


METRIC_AXIS = "metric"


def _metrics_as_columns(t: Table) -> Table:
    """The table of one constant column, reshaped so that each metric is a column (ranked within itself)."""
    cells = {(r, m, m): t.cells[(r, "", m)] for r in t.rows for m in t.metrics if (r, "", m) in t.cells}
    t.meta["cols"] = METRIC_AXIS
    t.meta["metric_columns"] = True
    runs = {(r, m): t.runs.get((r, ""), []) for r in t.rows for m in t.metrics}
    return Table(t.rows, list(t.metrics), t.metrics, cells, t.meta, t.oracle_rows, t.citations, runs)


#: metrics whose value depends on the OOD score, and those that depend on the rejection rule
SCORE_METRICS = frozenset({"auroc", "fpr95", "aupr_in", "aupr_out", "auroc_idval", "fpr95_idval"})
RULE_METRICS = frozenset({"hscore", "os_star", "unknown_recall"})


def build_tables(req: TableRequest) -> list[Table]:
    """One table per group of records that differ in an axis that is neither shown nor averaged (dataset,
    protocol, backbone, and method when it is not an axis), or in a setting no axis shows (the score or rule of
    the shown metrics, precision, evaluation batch): a results folder holding several of them renders as several
    tables, never an error. Domains that are not shown are averaged. A cell holds only runs that differ by seed."""
    metrics = req.metrics or ["acc"]
    for m in metrics:
        if m not in METRICS:
            raise UeobenchError(f"unknown metric '{m}'{suggest(m, list(METRICS))}")
    if len(set(metrics)) != len(metrics):
        dup = sorted({m for m in metrics if metrics.count(m) > 1})
        raise UeobenchError(f"--metric names {', '.join(dup)} twice; give each metric once")
    if req.rows == "metric":
        raise UeobenchError("metrics can be columns (--cols metric), not rows; pick --rows method, dataset, "
                            "protocol, domain or backbone")
    by_metric = req.cols == "metric"  # one column per metric instead of "a / b" cells
    rows, cols = axis(req.rows), (METRIC_AXIS if by_metric else axis(req.cols))
    if rows == cols:
        raise UeobenchError("--rows and --cols must differ")
    split, filters, score, results = req.split, req.filters, req.score, req.results

    def selected(row: dict[str, Any]) -> bool:
        try:
            return row["split"] == split and bool(_filter([row], filters)) and _version_ok(row, req.data_version)
        except UeobenchError:
            return False

    frame = records_frame(results, score, req.rule, req.code, selected)
    df = frame.rows
    if not df:
        if frame.other_code:
            n = len({r["run_id"] for r in frame.other_code})
            raise UeobenchError(f"all {n} finished runs under {Path(results) / 'runs'} were made by other code "
                                f"than the installed one; rerun them, or show them with --code all")
        raise UeobenchError(f"no finished runs under {Path(results) / 'runs'}; start one with ueobench run")
    df = _filter([r for r in df if r["split"] == split], filters)
    if not df:
        raise UeobenchError(f"no records for split '{split}'")
    df = [r for r in df if _version_ok(r, req.data_version)]
    if not df:
        raise UeobenchError(f"no selected runs were made on data version '{req.data_version}'")
    without = sorted({r["run_id"] for r in df if r["lacks_evidence"]})
    if without:
        raise UeobenchError(
            f"--score {score} needs evidence that {len(without)} selected run(s) did not save (e.g. {without[0]}): "
            f"{how_to_save(score)}; rerun them so, or leave them out with --method, --backbone, --protocol or --domain")
    df = _disambiguate(df)
    if by_metric:
        df = [{**r, METRIC_AXIS: ""} for r in df]
    df = [{**r, "method": r["method"] + ORACLE_SUFFIX} if r["oracle"] else r for r in df]
    hidden = [a for a in AXES if a not in (rows, cols)]
    variants = [v for v in _variant_axes(metrics) if len(values(df, v)) > 1]
    group_axes = [a for a in hidden if a != "domain" and len(values(df, a)) > 1] + variants
    left = [r for r in frame.other_code if r["split"] == split]
    left = _filter(left, filters, strict=False)
    tables = []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in df:
        groups.setdefault(tuple(str(r[a]) for a in group_axes), []).append(r)
    for key, part in sorted(groups.items()):
        t = _one_table(part, metrics, rows, cols, hidden, req)
        if by_metric:
            t = _metrics_as_columns(t)
        t.meta["group"] = {AXIS_ALIASES_OUT.get(a, a): str(v) for a, v in zip(group_axes, key)}
        t.meta["variant"] = {v: str(part[0][v]) for v in _variant_axes(metrics)}
        held = {a: set(values(part, a)) for a in ("dataset", "shift", "backbone") if a not in (rows, cols)}
        t.meta["other_code_left_out"] = len({r["run_id"] for r in left  # only those that would be in this table
                                             if all(str(r[a]) in v for a, v in held.items())})
        t.meta["unreadable_left_out"] = len(frame.unreadable)
        t.meta["recomputed"] = any(r["recomputed"] for r in part)
        if req.reference:
            attach_reference(t, part, req.reference)
        tables.append(t)
    return tables


def _variant_axes(metrics: list[str]) -> list[str]:
    """Settings no axis shows that change the numbers of these metrics: each value gets a table of its own."""
    out = ["track", "stream", "precision", "eval_batch_size"]
    if SCORE_METRICS & set(metrics):
        out.insert(0, "score")
    if RULE_METRICS & set(metrics):
        out.insert(1 if "score" in out else 0, "rule")
    return out


def _version_ok(row: dict[str, Any], version: str | None) -> bool:
    if not version:
        return True
    return any(row["data_checksum"].removeprefix("sha256:").startswith(v.strip().removeprefix("sha256:"))
               for v in version.split(",") if v.strip())


def _short(checksum: str) -> str:
    return str(checksum).removeprefix("sha256:")[:8]


def _disambiguate(df: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Make every shown name mean one configuration. A method label that stands for several option sets (a
    plugin that changed a default, say) gets the options that differ; a backbone name with several weights or
    activations gets their short identity; a dataset name with several versions of its protocol file gets the
    file's checksum. Data of one domain in several versions (images replaced, another copy) is refused: no
    name can show which domain a cell averages."""
    out = [dict(r) for r in df]

    def split_name(col: str, fields: tuple[str, ...], fmt) -> None:
        by: dict[str, set[tuple]] = {}
        for r in out:
            by.setdefault(r[col], set()).add(tuple(r[f] for f in fields))
        for r in out:
            if len(by[r[col]]) > 1:
                r[col] = fmt(r, by[r[col]])

    def option_label(r: dict[str, Any], variants: set[tuple]) -> str:
        opts = [json.loads(v[0]) for v in variants]
        keys = sorted({k for o in opts for k in o if len({json.dumps(x.get(k), sort_keys=True) for x in opts}) > 1})
        mine = json.loads(r["options"])
        return f"{r['method']} [{', '.join(f'{k}={mine.get(k)}' for k in keys)}]"

    split_name("method", ("options",), option_label)
    split_name("backbone", ("weights", "activation"), lambda r, v: f"{r['backbone']} [weights {_short(r['weights'])}"
               + (f", {r['activation']}" if len({x[1] for x in v}) > 1 else "") + "]")
    split_name("dataset", ("protocol_checksum",), lambda r, v: f"{r['dataset']} [protocol {_short(r['protocol_checksum'])}]")
    versions: dict[tuple[str, str], dict[str, list[str]]] = {}
    for r in out:
        # a composition's images are its own (the domain's plus the OOD images it draws): versioned apart
        where = r["domain"] if r["shift"] in SHIFTS else f"{r['domain']} under {r['shift']}"
        versions.setdefault((r["dataset"], where), {}).setdefault(r["data_checksum"], []).append(r["run_id"])
        if r["source_checksum"] != "None":  # the images a labeled-source model trained on are data too
            versions.setdefault((r["dataset"], r["track"]), {}).setdefault(r["source_checksum"], []).append(r["run_id"])
    for (dataset, domain), by in sorted(versions.items()):
        if len(by) > 1:
            listed = "; ".join(f"{_short(v)} ({len(set(ids))} runs, e.g. {sorted(ids)[0]})" for v, ids in sorted(by.items()))
            raise UeobenchError(f"the runs of {dataset}/{domain} were made on {len(by)} versions of its images "
                                f"({listed}); a cell never averages different data: pick one with --data-version "
                                f"PREFIX, or move the runs of the other version out of the results folder")
    return out


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
    partial: set[tuple[str, str]] = set()
    domains_of = _dataset_domains(df)
    runs: dict[tuple[str, str], set[str]] = {}
    for (r, c, _seed), group in sorted(by_seed.items(), key=lambda kv: str(kv[0])):
        runs.setdefault((r, c), set()).update(x["folder"] for x in group)
        runs.setdefault((r, "avg"), set()).update(x["folder"] for x in group)
        complete = {tuple(str(x[a]) for a in averaged) for x in group} >= expected[c]
        if "domain" in averaged and _fewer_domains(group, domains_of):
            partial.add((r, c))
        for m in metrics:
            vals = [x[m] for x in group if x[m] is not None]
            if complete and vals and len(vals) == len(group):
                per_cell.setdefault((r, c, m), []).append(float(np.mean(vals)))
            else:
                per_cell.setdefault((r, c, m), [])
    cells: dict[tuple[str, str, str], Cell] = {k: _cell(np.array(v, dtype=float), seeds, error) for k, v in per_cell.items()}
    for (r, c, m), cell in cells.items():
        cell.partial = (r, c) in partial and cell.mean is not None
    if average and len(col_labels) > 1 and cols != "method":
        for r in row_labels:
            shown = [x for x in df if str(x[rows]) == r]
            fewer = cols == "domain" and _fewer_domains(shown, domains_of)
            for m in metrics:
                parts = [cells.get((r, c, m)) for c in col_labels]
                ok = all(p is not None and p.mean is not None for p in parts)
                vals = np.array([p.mean for p in parts], dtype=float) if ok else np.array([])
                n = min((p.n for p in parts if p is not None), default=0) if ok else 0
                cells[(r, "avg", m)] = Cell(float(vals.mean()) if ok else None, None, n, seeds,
                                            partial=ok and (fewer or any(p.partial for p in parts if p is not None)))
        col_labels = [*col_labels, "avg"]
    if rows == "method":
        _rank(cells, row_labels, col_labels, metrics, exclude=set() if rank_oracle else oracle_rows, along="rows")
    elif cols == "method":
        _rank(cells, row_labels, col_labels, metrics, exclude=set() if rank_oracle else oracle_cols, along="cols")
    meta = {"rows": rows, "cols": cols, "metrics": metrics, "split": df[0]["split"], "averaged_over": averaged,
            "seeds_expected": seeds, "score": score, "rule": rule, "error": error, "ranked": "method" in (rows, cols),
            **{a: values(df, a) for a in hidden if len(values(df, a)) == 1}}
    return Table(row_labels, col_labels, metrics, cells, meta, oracle_rows | oracle_cols,
                 runs={k: sorted(v) for k, v in runs.items()})


def _dataset_domains(df: list[dict[str, Any]]) -> dict[str, int]:
    """How many domains each dataset's protocol file has (datasets whose file cannot be read are not judged)."""
    from ..data.protocols import load_protocol

    out = {}
    for name in {str(r["dataset"]) for r in df}:
        try:
            out[name] = len(load_protocol(name.split(" [")[0]).domains)
        except UeobenchError:
            pass
    return out


def _fewer_domains(group: list[dict[str, Any]], domains_of: dict[str, int]) -> bool:
    """True when these runs cover fewer domains of a dataset than its protocol has (an average that claims all)."""
    seen: dict[str, set[str]] = {}
    for x in group:
        seen.setdefault(str(x["dataset"]), set()).add(str(x["domain"]))
    return any(name in domains_of and len(d) < domains_of[name] for name, d in seen.items())


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
