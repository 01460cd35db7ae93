"""Figures from stored runs (matplotlib; PDF, PNG or SVG) sized for a paper column.

- **Stable colours.** Each method label gets one colour and one marker, assigned over every label in the results
  folder (sorted), so the same method looks the same in every figure and panel made from that folder.
- **No overlaps.** Legends sit outside the axes; scatter points are identified by the legend, not by labels
  placed on the data.
- **Honest axes.** Values are in %; bars start at zero (their lengths compare); scatter axes are zoomed to the
  data (a 4-point gap stays visible); missing cells are drawn as missing (an "n/a" mark, never a zero bar), and
  error bars show the spread over seeds where there are several. Titles name dataset, protocol, split and backbone.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UeobenchError
from ..core.text import printable
from ..scoring.metrics import METRICS
from ..store.records import iter_records
from .requests import PlotRequest, TableRequest
from .tables import Table, build_tables

FORMATS = (".pdf", ".png", ".svg")
COLUMN_WIDTH_IN = 3.4  # one column of a two-column paper
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p")


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "ueobench", "font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7,
                         "legend.fontsize": 6, "xtick.labelsize": 6, "ytick.labelsize": 6,
                         "pdf.fonttype": 42,  # deterministic SVG ids; TrueType in PDFs (editable text)
                         "text.parse_math": False, "text.usetex": False})  # a name with $...$ is text, not math
    return plt


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise UeobenchError(f"plot output must end in .pdf, .png or .svg, got {out.name}")
    if not out.parent.is_dir():
        raise UeobenchError(f"folder {out.parent} does not exist; create it or write the figure elsewhere")
    meta = {"Date": None} if out.suffix.lower() == ".svg" else {"CreationDate": None} if out.suffix.lower() == ".pdf" else {}
    fig.savefig(out, dpi=300, bbox_inches="tight", metadata=meta)
    return out


def method_styles(results: str | Path) -> dict[str, tuple[Any, str]]:
    """Label -> (colour, marker), assigned over every label in the results folder (oracle variants included)."""
    import matplotlib

    labels = sorted({r.display_label for r in iter_records(results)})
    labels += [f"{lb} (oracle)" for lb in labels]
    cmap = matplotlib.colormaps["tab10" if len(labels) <= 20 else "tab20"]
    return {lb: (cmap(i % cmap.N), MARKERS[i % len(MARKERS)]) for i, lb in enumerate(sorted(set(labels)))}


def _style(styles, label: str):
    return styles.get(label) or styles.get(label.split(" [code")[0]) or ("0.4", "o")


def _title(t: Table, protocol: str | None = None) -> str:
    """Two short lines: dataset and protocol; backbone and split (long single lines collide across panels)."""
    m = t.meta
    first = [f"{k} {', '.join(v)}" for k, v in (("", m.get("dataset")), ("protocol", [protocol] if protocol else m.get("shift"))) if v]
    second = [f"{', '.join(m['backbone'])}" if m.get("backbone") else "", f"{m['split']} split"]
    return printable(", ".join(x.strip() for x in first)) + "\n" + printable(", ".join(x for x in second if x))


def _zoom(values: list[float], errors: list[float] | None = None, floor: float = 0.0, ceil: float = 100.0):
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return floor, ceil
    errs = [0.0 if e is None or math.isnan(e) else e for e in (errors or [0.0] * len(values))]
    lo = min(v - e for v, e in zip(values, errs) if v is not None and not math.isnan(v))
    hi = max(v + e for v, e in zip(values, errs) if v is not None and not math.isnan(v))
    pad = max(1.0, 0.08 * (hi - lo))
    return max(floor, math.floor(lo - pad)), min(ceil, math.ceil(hi + pad))


def _legend_below(fig, handles, labels) -> None:
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=min(3, len(labels)),
                   frameon=False)


def plot(req: PlotRequest) -> Path:
    """``ueobench plot``: the figure ``req.kind`` of the selected records, written to ``req.output``."""
    if req.kind == "curves":
        if not req.run:
            raise UeobenchError("plot curves needs --run RUN_ID")
        return curves(req.output, req.run, req.results)
    if req.kind == "scatter":
        return scatter(req.output, req.results, req.split, req.filters)
    if req.kind == "option":
        assert req.option is not None
        return option_curve(req.output, req.option, req.metric, req.results, req.split, req.filters)
    return bars(req.output, req.metric, req.results, req.split, req.filters)


def scatter(out: str | Path, results: str | Path = "results", split: str = "test", filters: dict | None = None) -> Path:
    """Accuracy vs AUROC, one point per method (mean over domains and seeds, error bars over seeds), one panel
    per protocol with unknown samples, for every (dataset, backbone) in the selection."""
    tables = build_tables(TableRequest(results, ["acc", "auroc"], rows="method", cols="shift", split=split,
                                       filters=filters or {}, average=False))
    panels = [(t, c) for t in tables for c in t.cols
              if any((t.cells.get((r, c, "auroc")) and t.cells[(r, c, "auroc")].mean is not None) for r in t.rows)]
    if not panels:
        raise UeobenchError("no open-set runs (AUROC needs unknown samples): run oda or opda first")
    styles = method_styles(results)
    plt = _figure()
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH_IN * ncols / 1.4, 2.4 * nrows), squeeze=False)
    seen: dict[str, Any] = {}
    for ax, (t, proto) in zip(axes.flat, panels):
        xs, ys = [], []
        for r in t.rows:
            a, u = t.cells.get((r, proto, "acc")), t.cells.get((r, proto, "auroc"))
            if a is None or u is None or a.mean is None or u.mean is None:
                continue
            colour, marker = _style(styles, r)
            h = ax.errorbar(a.mean, u.mean, xerr=a.std or 0, yerr=u.std or 0, fmt=marker, color=colour, ms=4,
                            capsize=2, mfc="none" if r in t.oracle_rows else colour, label=printable(r))
            seen.setdefault(r, h)
            xs.append(a.mean)
            ys.append(u.mean)
        ax.set_xlim(*_zoom(xs))
        ax.set_ylim(*_zoom(ys))
        ax.set_title(_title(t, proto))
        ax.set_xlabel("ACC (%)")
        ax.set_ylabel("AUROC (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    _legend_below(fig, list(seen.values()), [printable(x) for x in seen])
    return _save(fig, out)


def bars(out: str | Path, metric: str = "acc", results: str | Path = "results", split: str = "test",
         filters: dict | None = None) -> Path:
    """Grouped bars: one group per domain, one bar per method; a panel per (dataset, protocol, backbone)."""
    if metric not in METRICS:
        raise UeobenchError(f"unknown metric '{metric}'; use one of {', '.join(METRICS)}")
    tables = build_tables(TableRequest(results, [metric], rows="method", cols="domain", split=split,
                                       filters=filters or {}, average=False))
    styles = method_styles(results)
    plt = _figure()
    fig, axes = plt.subplots(len(tables), 1, figsize=(COLUMN_WIDTH_IN * 2 / 1.4, 2.2 * len(tables)), squeeze=False)
    seen: dict[str, Any] = {}
    for ax, t in zip(axes[:, 0], tables):
        width = 0.8 / max(1, len(t.rows))
        x = np.arange(len(t.cols))
        allv, alle = [], []
        for i, r in enumerate(t.rows):
            cells = [t.cells.get((r, c, metric)) for c in t.cols]
            means = [c.mean if c is not None and c.mean is not None else np.nan for c in cells]
            errs = [c.std if c is not None and c.std is not None else np.nan for c in cells]
            colour, _ = _style(styles, r)
            pos = x + (i - (len(t.rows) - 1) / 2) * width
            h = ax.bar(pos, means, width, yerr=errs, color=colour, label=printable(r), capsize=2,
                       hatch="//" if r in t.oracle_rows else None, edgecolor="white", linewidth=0.3)
            seen.setdefault(r, h)
            allv += means
            alle += errs
            for p, m in zip(pos, means):
                if np.isnan(m):  # missing is missing, never a zero bar
                    ax.annotate("n/a", (p, 0), xycoords=("data", "axes fraction"), xytext=(0, 2),
                                textcoords="offset points", ha="center", fontsize=5, rotation=90, color="0.4")
        _, hi = _zoom(allv, alle)
        ax.set_ylim(0, hi)  # bars start at zero: their lengths compare honestly
        ax.set_xticks(x, [printable(c) for c in t.cols])
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(_title(t))
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _legend_below(fig, list(seen.values()), [printable(x) for x in seen])
    return _save(fig, out)


def option_curve(out: str | Path, option: str, metric: str = "acc", results: str | Path = "results",
                 split: str = "test", filters: dict | None = None) -> Path:
    """A metric against the value of one method option (WiSE-FT's α curve): one line per (method, domain), the
    mean over seeds with their spread; a panel per (dataset, protocol, backbone, track). Runs that differ in
    anything else than the seed and that option (data, weights, other options) never share a point."""
    import json

    from .frame import VARIANT_FIELDS, records_frame
    from .tables import _filter

    if metric not in METRICS:
        raise UeobenchError(f"unknown metric '{metric}'; use one of {', '.join(METRICS)}")
    rows = _filter([r for r in records_frame(results).rows if r["split"] == split], filters or {})
    lines: dict[tuple, dict[float, list[float]]] = {}
    for r in rows:
        opts = json.loads(r["options"])
        if option not in opts or r.get(metric) is None:
            continue
        try:
            x = float(opts[option])
        except (TypeError, ValueError):
            raise UeobenchError(f"option '{option}' of {r['method_name']} is not a number ({opts[option]!r})") from None
        rest = json.dumps({k: v for k, v in opts.items() if k != option}, sort_keys=True)
        panel = (r["dataset"], r["shift"], r["backbone"], r["track"], r["score"], r["rule"])
        line = (panel, r["method_name"], r["domain"], rest, tuple(r[k] for k in VARIANT_FIELDS))
        lines.setdefault(line, {}).setdefault(x, []).append(r[metric])
    lines = {k: v for k, v in lines.items() if len(v) > 1}
    if not lines:
        raise UeobenchError(f"no method with option '{option}' has runs at two or more of its values; sweep it "
                            f"first, e.g. ueobench sweep --method wiseft --set {option}=0,0.5,1 ...")
    panels = sorted({k[0] for k in lines})
    plt = _figure()
    fig, axes = plt.subplots(len(panels), 1, figsize=(COLUMN_WIDTH_IN, 2.2 * len(panels)), squeeze=False)
    cmap = matplotlib_colours(len({(k[1], k[2]) for k in lines}))
    colour_of = {key: cmap[i] for i, key in enumerate(sorted({(k[1], k[2]) for k in lines}))}
    for ax, panel in zip(axes[:, 0], panels):
        mine = sorted(k for k in lines if k[0] == panel)
        many = len({k[3:] for k in mine if k[1:3] == mine[0][1:3]}) > 1
        for i, key in enumerate(mine):
            pts = sorted(lines[key].items())
            xs = [p[0] for p in pts]
            ys = [float(np.mean(v)) for _, v in pts]
            es = [float(np.std(v)) if len(v) > 1 else 0.0 for _, v in pts]
            label = f"{key[1]} on {key[2]}" + (f" [{i}]" if many else "")
            ax.errorbar(xs, ys, yerr=es, marker=MARKERS[i % len(MARKERS)], ms=3, capsize=2,
                        color=colour_of[(key[1], key[2])], label=printable(label))
        dataset, shift, backbone, track, score, rule = panel
        ax.set_title(printable(f"{dataset}, protocol {shift}, {backbone}, {track}, {split} split"))
        ax.set_xlabel(printable(option))
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.tight_layout()
    return _save(fig, out)


def matplotlib_colours(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(max(n, 1))]


def curves(out: str | Path, run: str, results: str | Path = "results") -> Path:
    """Loss and metrics by epoch for one run (its id or a unique prefix)."""
    from matplotlib.ticker import MaxNLocator

    matches = [r for r in iter_records(results) if r.run_id.startswith(run)]
    if len(matches) != 1:
        names = ", ".join(r.run_id for r in matches[:5])
        raise UeobenchError(f"run '{run}' matches {len(matches)} records" + (f" ({names})" if names else "")
                            + "; give a longer prefix of the run id")
    rec = matches[0]
    hist: list[dict[str, Any]] = [h for h in rec.history if isinstance(h, dict) and "epoch" in h]
    if not hist:
        raise UeobenchError(f"run {rec.run_id} has no training history (method '{rec.label}' does not train)")
    plt = _figure()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(COLUMN_WIDTH_IN * 2 / 1.2, 2.2))
    trained = [h for h in hist if "loss" in h]
    ax1.plot([h["epoch"] for h in trained], [h["loss"] for h in trained], marker=".", color="0.2")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    points = [(h["epoch"], h["metrics"]) for h in hist if "metrics" in h]
    points.append((max(h["epoch"] for h in hist), rec.metrics))
    for split, marker, fill in (("test", "o", True), ("target", "s", False)):  # split told by marker, not line only
        for m, colour in (("acc", "tab:blue"), ("auroc", "tab:orange"), ("hscore", "tab:green")):
            ys = [(p[1].get(split) or {}).get(m) for p in points]
            if any(y is not None for y in ys):
                ax2.plot([p[0] for p in points], [100 * y if y is not None else np.nan for y in ys], marker=marker,
                         ms=4, mfc=colour if fill else "none", color=colour, label=f"{m} ({split})",
                         linestyle="-" if split == "test" else "--")
    epochs = sorted({h["epoch"] for h in hist} | {p[0] for p in points})
    for ax in (ax1, ax2):
        if len(epochs) <= 12:  # few epochs: a tick at each, never several labels on one
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:
            ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
        ax.grid(alpha=0.3)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("%")
    ax2.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle(printable(f"{rec.display_label}: dataset {rec.dataset}, protocol {rec.shift}, domain {rec.domain}, "
                           f"backbone {rec.backbone}, seed {rec.seed}"))
    fig.tight_layout()
    return _save(fig, out)
