"""``table``, ``plot``, ``export`` and ``reference check``: reports from the stored records."""
from __future__ import annotations


import click

from .. import api
from ..scoring.metrics import METRICS
from .common import Command, Group, check_output, emit, filters_options


@click.command(cls=Command)
@click.option("--results", default="results", show_default=True)
@click.option("--metric", "metrics", default="acc", show_default=True,
              help=f"Metric, or several joined by commas for 'a / b' cells: {', '.join(METRICS)}.")
@click.option("--rows", default="method", show_default=True, help="Row axis: method, dataset, protocol, domain, backbone.")
@click.option("--cols", default="domain", show_default=True,
              help="Column axis, or metric (one column per metric); axes not shown are averaged or split the table.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "target", "source_val"]))
@filters_options
@click.option("--seeds", default=None, type=click.IntRange(min=1),
              help="Expected seeds per cell; cells with fewer are flagged with †.")
@click.option("--data-version", default=None, metavar="PREFIX",
              help="Keep runs whose data checksum starts with PREFIX (when a domain's images changed between runs).")
@click.option("--score", default=None, help="Recompute AUROC/FPR95 from saved predictions with this OOD score.")
@click.option("--rule", default=None, help="Recompute the H-score with this rejection rule (nent:TAU or kmeans2).")
@click.option("--no-average", is_flag=True, help="Leave out the average column.")
@click.option("--rank-oracle", is_flag=True, help="Rank oracle runs (target labels) together with label-free ones.")
@click.option("--reference", default=None, type=click.Path(dir_okay=False), help="CSV of reported numbers to show beside ours.")
@click.option("--format", "fmt", default="markdown", show_default=True,
              type=click.Choice(["markdown", "md", "latex", "csv", "json", "html"]), help="md is short for markdown.")
@click.option("--error", default="std", show_default=True, type=click.Choice(["std", "se"]),
              help="Spread over seeds: standard deviation, or standard error (DomainBed's).")
@click.option("--output", default=None, type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
@click.option("--code", default="current", show_default=True, type=click.Choice(["current", "all"]),
              help="current: only runs made by the installed code of each method; all: older code too, in rows of their own.")
def table(results: str, metrics: str, rows: str, cols: str, split: str, method, dataset, protocol, domain, backbone,
          seeds: int | None, data_version: str | None, score: str | None, rule: str | None, no_average: bool,
          rank_oracle: bool, reference: str | None, fmt: str, error: str, output: str | None, code: str) -> None:
    """Render a leaderboard from the stored runs."""
    check_output(output)
    filters = {"method": method, "dataset": dataset, "protocol": protocol, "domain": domain, "backbone": backbone}
    text = api.table(api.TableRequest(results, metrics, rows, cols, split, filters, seeds, score, rule, not no_average,
                                      rank_oracle, reference, fmt, code, error, data_version))
    emit(text, output)


@click.command(cls=Command)
@click.argument("kind", type=click.Choice(["scatter", "bars", "curves", "option"]))
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="A .pdf, .png or .svg file.")
@click.option("--results", default="results", show_default=True)
@click.option("--metric", default="acc", show_default=True, type=click.Choice(METRICS), help="For bars and option.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "target", "source_val"]))
@click.option("--run", default=None, help="For curves: a run id or a unique prefix of one.")
@click.option("--option", "option", default=None, help="For option: the method option on the x axis (e.g. alpha).")
@filters_options
def plot(kind: str, output: str, results: str, metric: str, split: str, run: str | None, option: str | None, method,
         dataset, protocol, domain, backbone) -> None:
    """Plot accuracy vs AUROC (scatter), per-domain bars, one run's training curves, or a metric against a method
    option swept over (option: WiSE-FT's alpha curve)."""
    filters = {"method": method, "dataset": dataset, "protocol": protocol, "domain": domain, "backbone": backbone}
    path = api.plot(api.PlotRequest(kind, output, results, metric, split, run, filters, option))
    click.echo(f"wrote {path}")


@click.command(cls=Command)
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Folder of the page (index.html).")
@click.option("--results", default="results", show_default=True)
@click.option("--title", default="ueobench leaderboard", show_default=True)
@click.option("--metric", "metrics", default="acc,auroc,hscore", show_default=True, help="Metrics of every cell.")
@click.option("--reference", default=None, type=click.Path(dir_okay=False), help="CSV of reported numbers to show beside ours.")
@click.option("--no-figures", is_flag=True, help="Leave out the ACC vs AUROC figure.")
def site(output: str, results: str, title: str, metrics: str, reference: str | None, no_figures: bool) -> None:
    """A self-contained leaderboard page: sortable, filterable tables whose cells link to their runs' records."""
    from ..report.site import SiteRequest

    path = api.site(SiteRequest(output, results, title, [m.strip() for m in metrics.split(",") if m.strip()],
                                reference, not no_figures))
    click.echo(f"wrote {path}", err=True)


@click.group(cls=Group)
def reference() -> None:
    """Published numbers to compare against."""


@reference.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def reference_check(path: str) -> None:
    """Validate a CSV of reported numbers."""
    from ..report.reference import read_reference

    df = read_reference(path)
    click.echo(f"{path}: {len(df)} reported numbers from {df['citation'].nunique()} source(s), all valid")


@click.command(cls=Command)
@click.option("--results", default="results", show_default=True)
@click.option("--format", "fmt", default="csv", show_default=True, type=click.Choice(["csv", "parquet", "jsonl"]))
@click.option("--output", default=None, type=click.Path(dir_okay=False), help="Write to this file (needed for parquet).")
@click.option("--code", default="current", show_default=True, type=click.Choice(["current", "all"]),
              help="current: only runs made by the installed code of each method; all: every readable run.")
def export(results: str, fmt: str, output: str | None, code: str) -> None:
    """One row per run: every plan field, each option as a column, every metric of both splits."""
    check_output(output)
    if fmt == "parquet":
        out = api.export(api.ExportRequest(results, fmt, output, code))
        click.echo(f"wrote {out}", err=True)
        return
    emit(api.export(api.ExportRequest(results, fmt, None, code)), output)


