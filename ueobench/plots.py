"""Figures from stored runs (matplotlib, PNG or SVG): accuracy vs AUROC, per-domain bars, training curves."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import UeobenchError
from .leaderboard import build_table
from .records import iter_records


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "ueobench"  # deterministic SVG ids
    return plt


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg"):
        raise UeobenchError(f"plot output must end in .png or .svg, got {out.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"Date": None} if out.suffix.lower() == ".svg" else {}
    fig.savefig(out, dpi=150, bbox_inches="tight", metadata=meta)
    return out


def scatter(out: str | Path, results: str = "results", split: str = "test", filters: dict | None = None) -> Path:
    """Accuracy vs AUROC, one point per method (mean over domains and seeds), one panel per protocol."""
    t = build_table(results, ["acc", "auroc"], rows="method", cols="shift", split=split, filters=filters, average=False)
    protocols = [c for c in t.cols if any(t.cells.get((r, c, "auroc")) and t.cells[(r, c, "auroc")].mean is not None
                                          for r in t.rows)]
    if not protocols:
        raise UeobenchError("no open-set runs (AUROC needs unknown samples): run oda or opda first")
    plt = _figure()
    fig, axes = plt.subplots(1, len(protocols), figsize=(4.2 * len(protocols), 4), squeeze=False)
    for ax, proto in zip(axes[0], protocols):
        for r in t.rows:
            a, u = t.cells.get((r, proto, "acc")), t.cells.get((r, proto, "auroc"))
            if a is None or u is None or a.mean is None or u.mean is None:
                continue
            ax.scatter(a.mean, u.mean, marker="x" if r in t.oracle_rows else "o")
            ax.annotate(r, (a.mean, u.mean), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_title(proto)
        ax.set_xlabel("ACC (%)")
        ax.set_ylabel("AUROC (%)")
        ax.grid(alpha=0.3)
    return _save(fig, out)


def bars(out: str | Path, metric: str = "acc", results: str = "results", split: str = "test",
         filters: dict | None = None) -> Path:
    """Grouped bars: one group per domain, one bar per method."""
    t = build_table(results, [metric], rows="method", cols="domain", split=split, filters=filters, average=False)
    plt = _figure()
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(t.cols) * max(1, len(t.rows)) / 3), 4))
    width = 0.8 / max(1, len(t.rows))
    x = np.arange(len(t.cols))
    for i, r in enumerate(t.rows):
        cells = [t.cells.get((r, c, metric)) for c in t.cols]
        means = [c.mean if c is not None and c.mean is not None else np.nan for c in cells]
        errs = [c.std if c is not None and c.std is not None else 0.0 for c in cells]
        ax.bar(x + i * width, means, width, yerr=errs, label=r)
    ax.set_xticks(x + width * (len(t.rows) - 1) / 2, t.cols)
    ax.set_ylabel(f"{metric} (%)")
    ax.legend(fontsize=8, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out)


def curves(out: str | Path, run: str, results: str = "results") -> Path:
    """Loss and metrics by epoch for one run (its id or a unique prefix)."""
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
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    trained = [h for h in hist if "loss" in h]
    ax1.plot([h["epoch"] for h in trained], [h["loss"] for h in trained], marker=".")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    points = [(h["epoch"], h["metrics"]) for h in hist if "metrics" in h]
    points.append((max(h["epoch"] for h in hist), rec.metrics))
    for split in ("test", "target"):
        for m in ("acc", "auroc", "hscore"):
            ys = [p[1][split].get(m) for p in points]
            if any(y is not None for y in ys):
                ax2.plot([p[0] for p in points], [100 * y if y is not None else np.nan for y in ys], marker=".",
                         label=f"{m} ({split})", linestyle="-" if split == "test" else "--")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("%")
    ax2.legend(fontsize=7)
    fig.suptitle(f"{rec.label}: {rec.dataset} / {rec.shift} / {rec.domain} / {rec.backbone}, seed {rec.seed}", fontsize=8)
    return _save(fig, out)
