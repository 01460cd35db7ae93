"""``ueobench site``: a self-contained leaderboard page a group can publish (in the spirit of RobustBench's).

One folder: ``index.html`` (no network at view time: the styles, the script that sorts and filters, and the
figures are inline) and ``runs/<run id>.json``, a copy of every record a cell holds, which each cell links to.
Per group of records (dataset, backbone, track, ...) a methods x protocols table of ACC / AUROC / H-score,
averaged over domains, with mean ± spread and the seed count of every cell, reported numbers beside ours when a
reference file is given. Every name goes through HTML escaping; the page's data travels as JSON in a script
element with ``</`` escaped, so no name can close it.
"""
from __future__ import annotations

import html
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import UeobenchError
from ..core.text import printable
from ..store.layout import RECORD, run_dir
from .render import caption, cell_text
from .requests import TableRequest
from .tables import Table, build_tables

METRICS = ("acc", "auroc", "hscore")


@dataclass
class SiteRequest:
    """``ueobench site``: the records to show and where to write the page."""

    output: str | Path
    results: str | Path = "results"
    title: str = "ueobench leaderboard"
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    reference: str | Path | None = None
    figures: bool = True


def _e(text: Any) -> str:
    return html.escape(printable(text))


def _track(t: Table) -> str:
    return str(t.meta.get("variant", {}).get("track") or t.meta.get("group", {}).get("track")
               or (t.meta.get("track") or ["unlabeled target"])[0])


def _fixed(t: Table, axis: str) -> str:
    v = t.meta.get("group", {}).get("protocol" if axis == "shift" else axis)
    if v is None and isinstance(t.meta.get(axis), list) and t.meta[axis]:
        v = t.meta[axis][0]
    return str(v if v is not None else "")


def _table_html(i: int, t: Table, reference: bool) -> str:
    head = "".join(f'<th class="sortable" data-col="{j}" tabindex="0">{_e(c)}</th>' for j, c in enumerate(t.cols))
    rows = []
    for r in t.rows:
        tds = []
        for c in t.cols:
            parts, sort_key = [], None
            for m in t.metrics:
                cell = t.cells.get((r, c, m))
                text = _e(cell_text(cell))
                if cell is not None and cell.mean is not None:
                    sort_key = cell.mean if sort_key is None else sort_key
                    rank = ' class="best"' if cell.rank == 1 else ' class="second"' if cell.rank == 2 else ""
                    text = f"<span{rank}>{text}</span>"
                parts.append(text)
            first = t.cells.get((r, c, t.metrics[0]))
            seeds = f" <small>({first.n} seed{'s' if first.n != 1 else ''})</small>" if first and first.n else ""
            runs = t.runs.get((r, c), [])
            links = " ".join(f'<a href="runs/{_e(x)}.json">{k + 1}</a>' for k, x in enumerate(runs[:50]))
            more = f" +{len(runs) - 50}" if len(runs) > 50 else ""
            detail = f'<details><summary>{len(runs)} run{"s" if len(runs) != 1 else ""}</summary>{links}{more}</details>' \
                if runs else ""
            key = "" if sort_key is None else f' data-sort="{sort_key:.6f}"'
            tds.append(f"<td{key}>{' / '.join(parts)}{seeds}{detail}</td>")
        cls = ' class="oracle"' if r in t.oracle_rows else ""
        rows.append(f'<tr{cls}><th scope="row" class="method">{_e(r)}</th>{"".join(tds)}</tr>')
    attrs = " ".join(f'data-{k}="{_e(_fixed(t, k))}"' for k in ("dataset", "backbone"))
    return (f'<section class="board" {attrs} data-track="{_e(_track(t))}" id="table-{i}">\n'
            f'<h2>{_e(_fixed(t, "dataset"))} · {_e(_fixed(t, "backbone"))} · {_e(_track(t))}</h2>\n'
            f'<p class="caption">{_e(caption(t, "in italics"))}</p>\n'
            f'<table><thead><tr><th>method</th>{head}</tr></thead>\n<tbody>\n' + "\n".join(rows)
            + "\n</tbody></table>\n"
            + (f'<p class="cite">Reported numbers: {_e("; ".join(t.citations))}</p>' if reference and t.citations
               else "") + "</section>")


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse}
th,td{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:right;vertical-align:top}
th.method,thead th:first-child{text-align:left}th.sortable{cursor:pointer}th.sortable:after{content:" \\2195";color:#aaa}
.best{font-weight:bold}.second{font-style:italic}tr.oracle{color:#777}details{font-size:.75em;text-align:left}
.caption{color:#555;font-size:.85em}.filters label{margin-right:1.5em}figure svg{max-width:100%;height:auto}"""

_SCRIPT = """(function(){
const boards=[...document.querySelectorAll('section.board')];
function refresh(){const f={};document.querySelectorAll('.filters select').forEach(s=>{f[s.name]=s.value;});
 boards.forEach(b=>{b.hidden=Object.entries(f).some(([k,v])=>v!=='*'&&b.dataset[k]!==v);});}
document.querySelectorAll('.filters select').forEach(s=>s.addEventListener('change',refresh));
document.querySelectorAll('th.sortable').forEach(th=>{const go=()=>{const table=th.closest('table');
 const col=+th.dataset.col+1;const body=table.tBodies[0];const desc=th.dataset.dir!=='desc';
 table.querySelectorAll('th.sortable').forEach(o=>delete o.dataset.dir);th.dataset.dir=desc?'desc':'asc';
 const rows=[...body.rows];const key=r=>{const v=r.cells[col].dataset.sort;return v===undefined?-Infinity:+v;};
 rows.sort((a,b)=>desc?key(b)-key(a):key(a)-key(b));rows.forEach(r=>body.appendChild(r));};
 th.addEventListener('click',go);th.addEventListener('keydown',e=>{if(e.key==='Enter')go();});});
refresh();})();"""


def _select(name: str, values: list[str]) -> str:
    opts = '<option value="*">all</option>' + "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)
    return f'<label>{_e(name)} <select name="{_e(name)}">{opts}</select></label>'


def _figure(results: str | Path) -> str:
    """The ACC vs AUROC scatter as inline SVG (no file the page would have to fetch); empty without open-set runs."""
    from .plots import scatter

    with tempfile.TemporaryDirectory() as d:
        try:
            path = scatter(Path(d) / "scatter.svg", results)
        except UeobenchError:
            return ""
        svg = path.read_text(encoding="utf-8")
    svg = svg[svg.index("<svg"):]  # drop the XML prologue and doctype
    return f'<figure><figcaption>ACC vs AUROC, one point per method, a panel per protocol</figcaption>{svg}</figure>'


def build_site(req: SiteRequest) -> Path:
    out = Path(req.output)
    if out.exists() and not out.is_dir():
        raise UeobenchError(f"{out} is a file; pass a folder to --output")
    tables = build_tables(TableRequest(req.results, list(req.metrics), rows="method", cols="shift",
                                       reference=req.reference))
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)
    for t in tables:
        for ids in t.runs.values():
            for x in ids:
                target = out / "runs" / f"{x}.json"
                if not target.exists():
                    shutil.copyfile(run_dir(req.results, x) / RECORD, target)
    filters = {k: sorted({_fixed(t, k) for t in tables}) for k in ("dataset", "backbone")}
    filters["track"] = sorted({_track(t) for t in tables})
    boards = "\n".join(_table_html(i, t, req.reference is not None) for i, t in enumerate(tables))
    n_runs = len({x for t in tables for ids in t.runs.values() for x in ids})
    data = json.dumps({"tables": len(tables), "runs": n_runs, "title": printable(req.title)}).replace("</", "<\\/")
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_e(req.title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n<h1>{_e(req.title)}</h1>\n"
            f"<p>Made by ueobench from {n_runs} stored runs; every cell links to the records it averages. Click a "
            f"column to sort.</p>\n"
            f'<div class="filters">{"".join(_select(k, v) for k, v in filters.items())}</div>\n'
            f"{boards}\n{_figure(req.results) if req.figures else ''}\n"
            f'<script type="application/json" id="ueobench-data">{data}</script>\n'
            f"<script>{_SCRIPT}</script>\n</body>\n</html>\n")
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"
