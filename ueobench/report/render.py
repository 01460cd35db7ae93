"""Renderers of a ``Table``: markdown, LaTeX (booktabs), CSV, JSON and a self-contained HTML page.

Every name in every format goes through that format's escaping function; output is byte-for-byte deterministic.
"""
from __future__ import annotations

import csv
import html
import io
import json
import re
from typing import Any

from ..core.errors import UeobenchError
from ..core.registry import suggest
from ..core.text import printable
from .frame import AXES, AXIS_ALIASES
from .tables import Cell, Table

FORMATS = ("md", "markdown", "latex", "csv", "json", "html")


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
    if cell.partial:
        text += "$^\\ddagger$" if latex else "‡"
    if cell.reference is not None:
        text += f" (rep. {_num(cell.reference)}, {delta} {cell.mean - cell.reference:+.1f})"
    return text


def caption(t: Table, second: str = "underlined") -> str:
    """What a table holds and how to read it; ``second``: how its format marks the second-best cell."""
    m = t.meta
    fixed = ", ".join(f"{AXIS_ALIASES.get(k, k) if k != 'shift' else 'protocol'} {v[0]}" for k, v in m.items()
                      if k in AXES and isinstance(v, list) and len(v) == 1)
    parts = [" / ".join(t.metrics) + f" (%, {m['split']} split)"]
    if fixed:
        parts.append(fixed)
    if m["averaged_over"]:
        parts.append("averaged over " + ", ".join("protocols" if a == "shift" else a + "s" for a in m["averaged_over"]))
    spread = "standard error" if m.get("error") == "se" else "std"
    if any(c.n > 1 for c in t.cells.values()):
        parts.append(f"mean ± {spread} over seeds where a cell has several; – = undefined or incomplete")
    else:
        parts.append("one seed per cell; – = undefined or incomplete")
    if m["seeds_expected"]:
        parts.append(f"† fewer than {m['seeds_expected']} seeds")
    if any(c.partial for c in t.cells.values()):
        parts.append("‡ averaged over fewer domains than the dataset has")
    variant = m.get("variant", {})
    track = m.get("group", {}).get("track") or variant.get("track")
    if track and track != "unlabeled target":  # the unlabeled-target track is what a table holds unless it says
        parts.insert(1, f"{track} (methods trained on its labeled images, never on target images)")
    if variant.get("stream") not in (None, "None"):
        parts.insert(1, f"adaptation stream {variant['stream']} (a label-shift order of the adaptation data)")
    said = [f"{k} {variant[k]}" for k in ("score", "rule") if k in variant]  # what AUROC and H-score mean here
    said += [f"{k.replace('_', ' ')} {variant[k]}" for k in ("precision", "eval_batch_size") if k in m.get("group", {})]
    if m.get("recomputed"):
        parts.append(f"recomputed with {', '.join(said)} from the saved predictions by the installed scoring code")
    elif said:
        parts.append(", ".join(said))
    if m.get("ranked", True):
        who = "rows" if m["rows"] == "method" else "columns"
        parts.append(f"best method in bold, second {second}" +
                     (f"; oracle {who} (target labels) unranked" if t.oracle_rows else ""))
    if m.get("unreadable_left_out"):
        n = m["unreadable_left_out"]
        parts.append(f"{n} unreadable run{'s' if n != 1 else ''} left out (of the whole results folder; named in "
                     f"the warnings; rerun to redo)")
    if m.get("other_code_left_out"):
        n = m["other_code_left_out"]
        parts.append(f"{n} run{'s' if n != 1 else ''} made by other code left out (--code all shows them)")
    return "; ".join(parts)


def _joined(t: Table, r: str, c: str, wrap) -> str:
    if t.meta.get("metric_columns"):  # --cols metric: the column is the metric
        return wrap(t.cells.get((r, c, c)))
    return " / ".join(wrap(t.cells.get((r, c, m))) for m in t.metrics)


def _one_line(s: str) -> str:
    """One line of visible text: runs of spaces collapsed, control and bidirectional characters escaped."""
    return printable(" ".join(str(s).split()))


# characters that start markup wherever they stand, and patterns that start it in context: a word-boundary
# underscore (an underscore between letters never opens emphasis), a link or image "](", and autolinks
_MD_ALWAYS = re.compile(r"([\\`*~|])")
_MD_CONTEXT = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|\]\(|://|www\.", re.I)


def _md(s: str) -> str:
    """Markdown text, never markup: one line (a newline would split a row), HTML escaped (GitHub renders raw
    HTML inside tables), and everything that could start markup escaped with a backslash: emphasis, code,
    strikethrough, pipes (they would break the column count), links and images, autolinks."""
    text = _MD_ALWAYS.sub(r"\\\1", html.escape(_one_line(s), quote=False))
    return _MD_CONTEXT.sub(lambda m: {"](": "]\\(", "://": ":\\/\\/"}.get(m.group(0), None)
                           or ("www\\." if m.group(0).lower() == "www." else "\\_"), text)


def _marked(cell: Cell | None, text: str, best: str, second: str) -> str:
    """Wrap a cell's text in its format's best / second-best markup."""
    rank = cell.rank if cell is not None else None
    return best.format(text) if rank == 1 else second.format(text) if rank == 2 else text


def _header(t: Table) -> list[str]:
    return [t.meta["rows"] if t.meta["rows"] != "shift" else "protocol", *t.cols]


def render_markdown(t: Table) -> str:
    def wrap(cell: Cell | None) -> str:
        return _marked(cell, cell_text(cell), "**{}**", "*{}*")

    head = _header(t)
    lines = ["| " + " | ".join(_md(h) for h in head) + " |", "|" + "|".join([":---"] + ["---:"] * len(t.cols)) + "|"]
    for r in t.rows:
        lines.append("| " + " | ".join([_md(r), *(_joined(t, r, c, wrap) for c in t.cols)]) + " |")
    out = _md(caption(t, "in italics")) + "\n\n" + "\n".join(lines) + "\n"
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
        "% needs \\usepackage{booktabs}",
        "\\begin{table}[t]",
        "\\centering",
        "\\caption{" + _tex(caption(t)) + "}",
        "\\label{" + latex_label(t) + "}",
        "\\begin{tabular}{l" + "r" * len(t.cols) + "}",
        "\\toprule",
        " & ".join(_tex(h) for h in head) + " \\\\",
        "\\midrule",
    ]
    for r in t.rows:
        lines.append(" & ".join([_tex(r), *(_joined(t, r, c, wrap) for c in t.cols)]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def latex_label(t: Table) -> str:
    """``tab:ueobench-<what the table holds>``: stable, ASCII, unique among the tables of one document."""
    m = t.meta
    held = [str(v[0]) for k, v in m.items() if k in AXES and isinstance(v, list) and len(v) == 1]
    held += [str(v) for v in m.get("group", {}).values()]
    held += [str(m["rows"]), str(m["cols"]), *t.metrics]
    slug = re.sub(r"[^a-z0-9]+", "-", "-".join(held).lower()).strip("-")
    return f"tab:ueobench-{slug}"[:120]


def _records(t: Table) -> list[dict[str, Any]]:
    out = []
    for r in t.rows:
        for c in t.cols:
            for m in t.metrics:
                cell = t.cells.get((r, c, m))
                if cell is None:
                    continue
                where = {t.meta["rows"]: r} if t.meta.get("metric_columns") else {t.meta["rows"]: r, t.meta["cols"]: c}
                out.append({**where, "metric": m, "mean": _round(cell.mean),
                            "std": _round(cell.std), "seeds": cell.n, "rank": cell.rank,
                            "oracle": r in t.oracle_rows, "reported": _round(cell.reference),
                            "partial": cell.partial})
    return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(v: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (=HYPERLINK(...)) is quoted with a leading '."""
    if isinstance(v, str):
        v = _one_line(v)
        return "'" + v if v.startswith(_FORMULA_START) else v
    return v


def render_csv(t: Table) -> str:
    rows = [{k: csv_cell(v) for k, v in r.items()} for r in _records(t)]
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

    def e(text: str) -> str:
        return html.escape(printable(text))

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
        rows = [{**{k: csv_cell(v) for k, v in t.meta["group"].items()}, **{k: csv_cell(v) for k, v in r.items()}}
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
