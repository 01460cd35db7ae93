"""The typed requests of ``table``, ``plot`` and ``export``, built by the command line and the Python API alike."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UeobenchError

FILTER_AXES = ("method", "dataset", "protocol", "domain", "backbone")
CODE_CHOICES = ("current", "all")
ERRORS = ("std", "se")


PLOT_KINDS = ("scatter", "bars", "curves", "option")


def _check_filters(filters: dict[str, str | None]) -> dict[str, str | None]:
    bad = sorted(set(filters) - set(FILTER_AXES) - {"shift"})
    if bad:
        raise UeobenchError(f"unknown filter(s) {bad}; use {', '.join(FILTER_AXES)}")
    return {("shift" if k == "protocol" else k): v for k, v in filters.items()}


@dataclass
class TableRequest:
    """``ueobench table``: which records, which cells, which format."""

    results: str | Path = "results"
    metrics: list[str] = field(default_factory=lambda: ["acc"])
    rows: str = "method"
    cols: str = "domain"
    split: str = "test"
    filters: dict[str, str | None] = field(default_factory=dict)  # axis -> comma-separated globs
    seeds: int | None = None  # expected seeds per cell (fewer are flagged)
    score: str | None = None  # recompute AUROC / FPR95 with this score
    rule: str | None = None  # recompute the H-score with this rule
    average: bool = True
    rank_oracle: bool = False
    reference: str | Path | None = None  # CSV of reported numbers
    fmt: str = "md"
    code: str = "current"
    error: str = "std"
    data_version: str | None = None  # keep runs whose data checksum starts with this (comma-separated prefixes)

    def __post_init__(self) -> None:
        if isinstance(self.metrics, str):
            self.metrics = [m.strip() for m in self.metrics.split(",") if m.strip()]
        self.filters = _check_filters(dict(self.filters))
        from ..scoring.scores import canonical_rule, canonical_score

        if self.rule is not None:
            self.rule = canonical_rule(self.rule)
        if self.score is not None:
            self.score = canonical_score(self.score)
        if self.code not in CODE_CHOICES:
            raise UeobenchError(f"unknown --code '{self.code}'; use current or all")
        if self.error not in ERRORS:
            raise UeobenchError(f"unknown --error '{self.error}'; use std or se")


@dataclass
class PlotRequest:
    """``ueobench plot``: a figure kind, where to write it, and the records it draws."""

    kind: str  # scatter, bars, curves or option
    output: str | Path
    results: str | Path = "results"
    metric: str = "acc"  # bars, option
    split: str = "test"
    run: str | None = None  # curves: a run id or a unique prefix
    filters: dict[str, str | None] = field(default_factory=dict)
    option: str | None = None  # option: the method option on the x axis (WiSE-FT's alpha)

    def __post_init__(self) -> None:
        if self.kind not in PLOT_KINDS:
            raise UeobenchError(f"unknown plot '{self.kind}'; use {', '.join(PLOT_KINDS)}")
        if self.kind == "option" and not self.option:
            raise UeobenchError("plot option needs --option NAME (a method option swept over, e.g. alpha)")
        self.filters = _check_filters(dict(self.filters))


@dataclass
class ExportRequest:
    """``ueobench export``: one row per run, in CSV, parquet or JSON lines."""

    results: str | Path = "results"
    fmt: str = "csv"
    output: str | Path | None = None
    code: str = "current"

    def __post_init__(self) -> None:
        if self.fmt not in ("csv", "parquet", "jsonl"):
            raise UeobenchError(f"unknown export format '{self.fmt}'; use csv, parquet or jsonl")
        if self.code not in CODE_CHOICES:
            raise UeobenchError(f"unknown code filter '{self.code}'; use current or all")
