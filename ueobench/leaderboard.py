"""Leaderboards from stored run records, in every format a paper or a project page needs.

A table is built in three steps: records -> a long frame (one row per run and split; metrics can be
recomputed from the saved predictions with another score or rejection rule) -> cells (mean, std and seed
count of each metric per row and column, averaged over the axes that are not shown, e.g. domains) ->
a renderer (markdown, LaTeX, CSV, JSON, HTML). Rendering is deterministic: same records, same bytes.
"""
from __future__ import annotations

import csv
import fnmatch
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UeobenchError
from .metrics import LOWER_IS_BETTER, METRICS, evaluate
from .records import iter_records, load_predictions
from .registry import suggest
from .scores import how_to_save, score_needs

AXES = ("method", "dataset", "shift", "domain", "backbone")
AXIS_ALIASES = {"protocol": "shift"}
FORMATS = ("md", "markdown", "latex", "csv", "json", "html")
ORACLE_SUFFIX = " (oracle)"


def _axis(name: str) -> str:
    name = AXIS_ALIASES.get(name, name)
    if name not in AXES:
        raise UeobenchError(f"unknown table axis '{name}'{suggest(name, [*AXES, 'protocol'])}")
    return name


# ------------------------------------------------------------------------------------------ the frame


CODE_CHOICES = ("current", "all")


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
    from .fingerprints import code_status

    if code not in CODE_CHOICES:
        raise UeobenchError(f"unknown --code '{code}'; use current or all")
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
                import warnings

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


def _values(rows: list[dict[str, Any]], key: str) -> list[str]:
    return sorted({str(r[key]) for r in rows})


# ------------------------------------------------------------------------------------------ the cells


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
        col = _axis(col)
        pats = [p.strip() for p in pattern.split(",") if p.strip()]

        def matches(v: Any, pats: list[str] = pats) -> bool:
            return any(fnmatch.fnmatchcase(str(v), p) for p in pats)

        # a method's name also selects all of its variants
        kept = [r for r in rows if matches(r[col]) or (col == "method" and matches(r["method_name"]))]
        if not kept:
            present = _values(rows, col)
            raise UeobenchError(f"no records match {col} '{pattern}'" + (f" (have: {', '.join(present)})" if present else ""))
        rows = kept
    return rows


def build_tables(
    results: str | Path = "results",
    metrics: list[str] | None = None,
    rows: str = "method",
    cols: str = "domain",
    split: str = "test",
    filters: dict[str, str | None] | None = None,
    seeds: int | None = None,
    score: str | None = None,
    rule: str | None = None,
    average: bool = True,
    rank_oracle: bool = False,
    reference: str | Path | None = None,
    code: str = "current",
    error: str = "std",
) -> list[Table]:
    """One table per group of records that differ in an axis that is neither shown nor averaged (dataset,
    protocol, backbone, and method when it is not an axis): a results folder holding several datasets, shifts
    and backbones renders as several tables, never an error. Domains that are not shown are averaged."""
    metrics = metrics or ["acc"]
    for m in metrics:
        if m not in METRICS:
            raise UeobenchError(f"unknown metric '{m}'{suggest(m, list(METRICS))}")
    if error not in ERRORS:
        raise UeobenchError(f"unknown --error '{error}'; use std or se")
    rows, cols = _axis(rows), _axis(cols)
    if rows == cols:
        raise UeobenchError("--rows and --cols must differ")
    def selected(row: dict[str, Any]) -> bool:
        try:
            return row["split"] == split and bool(_filter([row], filters or {}))
        except UeobenchError:
            return False

    df, left_out, unreadable = records_frame(results, score, rule, code, selected)
    if not df:
        if left_out:
            raise UeobenchError(f"all {left_out} finished runs under {Path(results) / 'runs'} were made by other code "
                                f"than the installed one; rerun them, or show them with --code all")
        raise UeobenchError(f"no finished runs under {Path(results) / 'runs'}; start one with ueobench run")
    df = _filter([r for r in df if r["split"] == split], filters or {})
    if not df:
        raise UeobenchError(f"no records for split '{split}'")
    without = sorted({r["run_id"] for r in df if r["lacks_evidence"]})
    if without:
        raise UeobenchError(
            f"--score {score} needs evidence that {len(without)} selected run(s) did not save (e.g. {without[0]}): "
            f"{how_to_save(score)}; rerun them so, or leave them out with --method, --backbone, --protocol or --domain")
    df = [{**r, "method": r["method"] + ORACLE_SUFFIX} if r["oracle"] else r for r in df]
    hidden = [a for a in AXES if a not in (rows, cols)]
    group_axes = [a for a in hidden if a != "domain" and len(_values(df, a)) > 1]
    tables = []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in df:
        groups.setdefault(tuple(str(r[a]) for a in group_axes), []).append(r)
    for key, part in sorted(groups.items()):
        t = _one_table(part, metrics, rows, cols, hidden, seeds, score, rule, average, rank_oracle, error)
        t.meta["group"] = {AXIS_ALIASES_OUT.get(a, a): str(v) for a, v in zip(group_axes, key)}
        t.meta["other_code_left_out"] = left_out
        t.meta["unreadable_left_out"] = unreadable
        if reference:
            attach_reference(t, part, reference)
        tables.append(t)
    return tables


def build_table(results: str | Path = "results", metrics: list[str] | None = None, rows: str = "method",
                cols: str = "domain", split: str = "test", filters: dict[str, str | None] | None = None,
                seeds: int | None = None, score: str | None = None, rule: str | None = None, average: bool = True,
                rank_oracle: bool = False, reference: str | Path | None = None, code: str = "current",
                error: str = "std") -> Table:
    """The single table of a selection of records; an error naming the options that split it otherwise."""
    tables = build_tables(results, metrics, rows, cols, split, filters, seeds, score, rule, average, rank_oracle,
                          reference, code, error)
    if len(tables) > 1:
        axes = sorted(tables[0].meta["group"])
        raise UeobenchError(f"the records form {len(tables)} tables (they differ in {', '.join(axes)}); "
                            f"select one with " + ", ".join(f"--{a}" for a in axes))
    return tables[0]


def _one_table(df: list[dict[str, Any]], metrics: list[str], rows: str, cols: str, hidden: list[str], seeds: int | None,
               score: str | None, rule: str | None, average: bool, rank_oracle: bool, error: str) -> Table:
    averaged = [a for a in hidden if len(_values(df, a)) > 1]
    # one value per seed: the mean over the averaged axes; then mean, spread and count over seeds. A cell is
    # complete when it has every averaged combination its column has (judged within the column, so a shift or
    # dataset with fewer domains never voids another's cells)
    by_seed: dict[tuple[str, str, Any], list[dict[str, Any]]] = {}
    expected: dict[str, set[tuple]] = {}
    for r in df:
        by_seed.setdefault((str(r[rows]), str(r[cols]), r["seed"]), []).append(r)
        expected.setdefault(str(r[cols]), set()).add(tuple(str(r[a]) for a in averaged))
    row_labels = sorted(_values(df, rows), key=str.lower)
    col_labels = sorted(_values(df, cols), key=str.lower)
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
            **{a: _values(df, a) for a in hidden if len(_values(df, a)) == 1}}
    return Table(row_labels, col_labels, metrics, cells, meta, oracle_rows | oracle_cols)


ERRORS = ("std", "se")
AXIS_ALIASES_OUT = {"shift": "protocol"}


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


# -------------------------------------------------------------------------------------- reported numbers

REFERENCE_COLUMNS = ("dataset", "protocol", "domain", "backbone", "method", "metric", "value", "citation")


def read_reference(path: str | Path) -> Any:
    """Load and validate a file of published numbers (CSV, see ``reference/README.md``) as a DataFrame."""
    import pandas as pd

    from .protocols import SHIFTS, load_protocol

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


def attach_reference(table: Table, df: list[dict[str, Any]], path: str | Path) -> None:
    ref = read_reference(path)
    rows, cols = table.meta["rows"], table.meta["cols"]
    key_of = {"shift": "protocol", "domain": "domain_key"}
    fixed = {a: df[0][a] for a in AXES if a not in (rows, cols) and len(_values(df, a)) == 1}
    for a, v in fixed.items():
        ref = ref[ref[key_of.get(a, a)] == v]
    for _, r in ref.iterrows():
        cell = table.cells.get((str(r[key_of.get(rows, rows)]), str(r[key_of.get(cols, cols)]), r["metric"]))
        if cell is not None:
            cell.reference = float(r["value"])
            if r["citation"] not in table.citations:
                table.citations.append(r["citation"])


# ------------------------------------------------------------------------------------------ rendering


def _num(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def cell_text(cell: Cell | None, latex: bool = False) -> str:
    """"12.3 ± 0.4†" (fewer seeds than expected), with "(rep. 14.0, Δ -1.7)" when a reported number exists."""
    if cell is None or cell.mean is None:
        return "--" if latex else "–"
    pm, dagger, delta = ("$\\pm$", "$^\\dagger$", "$\\Delta$") if latex else ("±", "†", "Δ")
    text = _num(cell.mean)
    if cell.std is not None:
        text += f" {pm} {_num(cell.std)}"
    if cell.short:
        text += dagger
    if cell.reference is not None:
        text += f" (rep. {_num(cell.reference)}, {delta} {cell.mean - cell.reference:+.1f})"
    return text


def caption(t: Table) -> str:
    m = t.meta
    fixed = ", ".join(f"{AXIS_ALIASES.get(k, k) if k != 'shift' else 'protocol'} {v[0]}" for k, v in m.items()
                      if k in AXES and isinstance(v, list) and len(v) == 1)
    parts = [" / ".join(t.metrics) + f" (%, {m['split']} split)"]
    if fixed:
        parts.append(fixed)
    if m["averaged_over"]:
        parts.append("averaged over " + ", ".join("protocols" if a == "shift" else a + "s" for a in m["averaged_over"]))
    spread = "standard error" if m.get("error") == "se" else "std"
    parts.append(f"mean ± {spread} over seeds; – = undefined or incomplete")
    if m["seeds_expected"]:
        parts.append(f"† fewer than {m['seeds_expected']} seeds")
    if m["score"] or m["rule"]:
        parts.append("recomputed with " + ", ".join(x for x in (m["score"] and f"score {m['score']}", m["rule"] and f"rule {m['rule']}") if x))
    if m.get("ranked", True):
        who = "rows" if m["rows"] == "method" else "columns"
        parts.append("best method in bold, second underlined" +
                     (f"; oracle {who} (target labels) unranked" if t.oracle_rows else ""))
    if m.get("unreadable_left_out"):
        n = m["unreadable_left_out"]
        parts.append(f"{n} unreadable run{'s' if n != 1 else ''} left out (named in the warnings; rerun to redo)")
    if m.get("other_code_left_out"):
        n = m["other_code_left_out"]
        parts.append(f"{n} run{'s' if n != 1 else ''} made by other code left out (--code all shows them)")
    return "; ".join(parts)


def _joined(t: Table, r: str, c: str, wrap) -> str:
    return " / ".join(wrap(t.cells.get((r, c, m))) for m in t.metrics)


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


def _md(s: str) -> str:
    """Markdown text, never markup: one line (a newline would split a row), HTML escaped (GitHub renders raw
    HTML inside tables), pipes escaped (they would break the column count)."""
    return html.escape(_one_line(s), quote=False).replace("|", "\\|")


def _marked(cell: Cell | None, text: str, best: str, second: str) -> str:
    """Wrap a cell's text in its format's best / second-best markup."""
    rank = cell.rank if cell is not None else None
    return best.format(text) if rank == 1 else second.format(text) if rank == 2 else text


def _header(t: Table) -> list[str]:
    return [t.meta["rows"] if t.meta["rows"] != "shift" else "protocol", *t.cols]


def render_markdown(t: Table) -> str:
    def wrap(cell: Cell | None) -> str:
        return _marked(cell, cell_text(cell), "**{}**", "<u>{}</u>")

    head = _header(t)
    lines = ["| " + " | ".join(_md(h) for h in head) + " |", "|" + "|".join([":---"] + ["---:"] * len(t.cols)) + "|"]
    for r in t.rows:
        lines.append("| " + " | ".join([_md(r), *(_joined(t, r, c, wrap) for c in t.cols)]) + " |")
    out = _md(caption(t)) + "\n\n" + "\n".join(lines) + "\n"
    if t.citations:
        out += "\nReported numbers: " + _md("; ".join(t.citations)) + "\n"
    return out


_LATEX_ESC = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
              "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def _tex(s: str) -> str:
    """LaTeX text: specials escaped, on one line (a newline would end a comment and start live LaTeX)."""
    return "".join(_LATEX_ESC.get(ch, ch) for ch in _one_line(s))


def render_latex(t: Table) -> str:
    def wrap(cell: Cell | None) -> str:
        return _marked(cell, cell_text(cell, latex=True), "\\textbf{{{}}}", "\\underline{{{}}}")

    head = _header(t)
    lines = [
        "% " + _tex(caption(t)),
        "\\begin{tabular}{l" + "r" * len(t.cols) + "}",
        "\\toprule",
        " & ".join(_tex(h) for h in head) + " \\\\",
        "\\midrule",
    ]
    for r in t.rows:
        lines.append(" & ".join([_tex(r), *(_joined(t, r, c, wrap) for c in t.cols)]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _records(t: Table) -> list[dict[str, Any]]:
    out = []
    for r in t.rows:
        for c in t.cols:
            for m in t.metrics:
                cell = t.cells.get((r, c, m))
                if cell is None:
                    continue
                out.append({t.meta["rows"]: r, t.meta["cols"]: c, "metric": m, "mean": _round(cell.mean),
                            "std": _round(cell.std), "seeds": cell.n, "rank": cell.rank,
                            "oracle": r in t.oracle_rows, "reported": _round(cell.reference)})
    return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv(v: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (=HYPERLINK(...)) is quoted with a leading '."""
    if isinstance(v, str):
        v = _one_line(v)
        return "'" + v if v.startswith(_FORMULA_START) else v
    return v


def render_csv(t: Table) -> str:
    rows = [{k: _csv(v) for k, v in r.items()} for r in _records(t)]
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def render_json(t: Table) -> str:
    meta = {k: v for k, v in t.meta.items()}
    doc = {"caption": caption(t), "meta": meta, "rows": t.rows, "cols": t.cols, "cells": _records(t),
           "citations": t.citations}
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def render_html(t: Table) -> str:
    def wrap(cell: Cell | None) -> str:
        return _marked(cell, html.escape(cell_text(cell)), "<b>{}</b>", "<u>{}</u>")

    e = html.escape
    head = _header(t)
    body = []
    for r in t.rows:
        cls = ' class="oracle"' if r in t.oracle_rows else ""
        tds = "".join(f"<td>{_joined(t, r, c, wrap)}</td>" for c in t.cols)
        body.append(f"<tr{cls}><th>{e(r)}</th>{tds}</tr>")
    cites = f"<p>Reported numbers: {e('; '.join(t.citations))}</p>" if t.citations else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>ueobench leaderboard</title>\n"
        "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:right}th:first-child{text-align:left}"
        "tr.oracle{color:#777;font-style:italic}caption{caption-side:top;text-align:left;margin-bottom:.5em}</style>\n"
        "</head>\n<body>\n<table>\n"
        f"<caption>{e(caption(t))}</caption>\n"
        "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead>\n"
        "<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>\n" + cites + "\n</body>\n</html>\n"
    )


RENDERERS = {"md": render_markdown, "markdown": render_markdown, "latex": render_latex, "csv": render_csv,
             "json": render_json, "html": render_html}


def render(t: Table, fmt: str = "md") -> str:
    if fmt not in RENDERERS:
        raise UeobenchError(f"unknown format '{fmt}'{suggest(fmt, list(RENDERERS))}")
    return RENDERERS[fmt](t)


def render_many(tables: list[Table], fmt: str = "md") -> str:
    """Several tables in one document: one after another (markdown, LaTeX, HTML), one long table with the
    group's columns (CSV), or ``{"tables": [...]}`` (JSON). A single table renders as ``render`` does."""
    if len(tables) == 1:
        return render(tables[0], fmt)
    if fmt not in RENDERERS:
        raise UeobenchError(f"unknown format '{fmt}'{suggest(fmt, list(RENDERERS))}")
    if fmt == "csv":
        rows = [{**{k: _csv(v) for k, v in t.meta["group"].items()}, **{k: _csv(v) for k, v in r.items()}}
                for t in tables for r in _records(t)]
        fields = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    if fmt == "json":
        return json.dumps({"tables": [json.loads(render_json(t)) for t in tables]}, indent=1, sort_keys=True) + "\n"
    if fmt == "html":
        bodies = [render_html(t) for t in tables]
        head, tail = bodies[0].split("<table>", 1)[0], "\n</body>\n</html>\n"
        inner = ["<table>" + b.split("<table>", 1)[1].split("\n</body>", 1)[0] for b in bodies]
        return head + "\n".join(inner) + tail
    return "\n".join(render(t, fmt) for t in tables)
