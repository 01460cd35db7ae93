"""The ``ueobench`` command line: thin wrappers over the Python API.

Starts fast: nothing here imports torch, open_clip or scikit-learn; ``--help``, ``list``, ``show``, ``status``
(of saved sweeps) and ``table`` never load them.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
import warnings
from typing import Any

import click

from . import api
from .errors import UeobenchError
from .metrics import CORE_METRICS, METRICS
from .plan import DEFAULT_DATASET
from .protocols import SHIFTS
from .scores import DEFAULT_RULE, RULES_DOC

DEBUG = {"on": bool(os.environ.get("UEOBENCH_DEBUG"))}


def _plugins_option(f):
    """``--plugins DIR`` is accepted before the subcommand and after it."""
    def add(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
        for folder in value:
            try:
                api.add_plugin_folder(folder)
            except UeobenchError as e:
                raise _UserError(str(e)) from None
        return value

    return click.option("--plugins", multiple=True, type=click.Path(file_okay=False), expose_value=False,
                        is_eager=True, callback=add, help="Folder of method plugin files (repeatable).")(f)


def _debug_option(f):
    def set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        DEBUG["on"] = DEBUG["on"] or value
        return value

    return click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=set_debug,
                        help="Show the full traceback of an unexpected error.")(f)


class _Command(click.Command):
    def __init__(self, *a: Any, **k: Any):
        super().__init__(*a, **k)
        _plugins_option(self)
        _debug_option(self)


class _Group(click.Group):
    """Turns every UeobenchError into a one-line ``Error: ...`` and exit status 2; anything unexpected into one
    line naming where its traceback was written (``--debug`` prints it), exit status 1."""

    command_class = _Command

    def invoke(self, ctx: click.Context) -> Any:
        warnings.formatwarning = lambda message, *a, **k: f"warning: {message}\n"
        try:
            return super().invoke(ctx)
        except UeobenchError as e:
            raise _UserError(str(e)) from None
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - the last-resort net; each known fault has its own fix
            if DEBUG["on"]:
                raise
            fd, path = tempfile.mkstemp(prefix="ueobench-traceback-", suffix=".txt")
            with os.fdopen(fd, "w") as f:
                f.write(" ".join(sys.argv) + "\n\n" + traceback.format_exc())
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            click.echo(f"Error: unexpected {type(e).__name__}{': ' + first if first else ''} "
                       f"(full traceback in {path}; rerun with --debug to see it)", err=True)
            ctx.exit(1)


class _UserError(click.ClickException):
    exit_code = 2


def _parse_sets(values: tuple[str, ...], flag: str = "--set", axis: bool = False) -> dict[str, str]:
    """``key=value`` pairs; a key given twice is an error (in a sweep, ``key=a,b`` makes the values an axis)."""
    out: dict[str, str] = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key.strip():
            raise UeobenchError(f"{flag} expects key=value, got {v!r}")
        key = key.strip()
        if key in out:
            hint = f"; give several values as {flag} {key}=a,b to sweep over them" if axis else "; give it once"
            raise UeobenchError(f"{flag} {key} is given twice ({out[key]!r} and {val.strip()!r}){hint}")
        out[key] = val.strip()
    return out


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@_plugins_option
@_debug_option
@click.version_option(package_name="ueobench")
def cli() -> None:
    """Benchmark unsupervised CLIP fine-tuning under category shift."""


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


@cli.command()
@click.option("--method", required=True, help="Method name (ueobench list methods).")
@click.option("--protocol", required=True, type=click.Choice(SHIFTS), help="Category shift.")
@click.option("--domain", required=True, help="Target domain, e.g. clipart.")
@click.option("--dataset", default=None, help="Dataset; needed only when several configured datasets share the domain.")
@click.option("--backbone", default=None, help="ARCH:WEIGHTS, e.g. ViT-B-16:openai; default: the dataset's.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1))
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="Shorthand for --set epochs=N.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Shorthand for --set batch_size=N (adaptation batch).")
@click.option("--eval-batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a method option (repeatable).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--data-root", default=None, help="Folder holding the datasets (else $UEOBENCH_DATA, else ueobench.toml).")
@click.option("--results", default="results", show_default=True, help="Run store.")
@click.option("--score", default="mcm", show_default=True, help="OOD score (ueobench list scores).")
@click.option("--rule", default=DEFAULT_RULE, show_default=True, help="Label-free H-score rejection rule: nent:TAU or kmeans2.")
@click.option("--workers", default=None, type=click.IntRange(min=0), help="Data loader workers (default 0 on CPU, 4 on CUDA).")
@click.option("--force", is_flag=True, help="Rerun even if an identical finished run exists.")
@click.option("--no-cache", is_flag=True, help="Do not read or write the shared image-feature cache.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Autocast dtype of the forward pass (auto: fp32 on CPU, bf16 on CUDA); trainable weights stay fp32.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
def run(method: str, protocol: str, domain: str, dataset: str | None, backbone: str | None, seed: int,
        epochs: int | None, batch_size: int | None, eval_batch_size: int, sets: tuple[str, ...], device: str,
        data_root: str | None, results: str, score: str, rule: str, workers: int | None, force: bool,
        no_cache: bool, precision: str, as_json: bool) -> None:
    """Adapt one method on one target domain and record its metrics."""
    options = _parse_sets(sets)
    if epochs is not None:
        options["epochs"] = str(epochs)
    if batch_size is not None:
        options["batch_size"] = str(batch_size)
    res = api.run(method=method, protocol=protocol, domain=domain, dataset=dataset, backbone=backbone, seed=seed,
                  options=options, eval_batch_size=eval_batch_size, device=device, data_root=data_root,
                  results=results, score=score, rule=rule, workers=workers, force=force, cache=not no_cache, precision=precision)
    rec = res.record
    if as_json:
        click.echo(json.dumps(rec.raw, indent=1, sort_keys=True))
        return
    if rec.raw.get("backbone", {}).get("random_weights"):
        click.echo("warning: random backbone weights: these numbers measure nothing but the harness", err=True)
    state = "already done, reused (pass --force to rerun)" if res.skipped else "done"
    click.echo(f"{rec.label} | {rec.dataset}/{rec.shift}/{rec.domain} | {rec.backbone} | seed {rec.seed}: {state}")
    click.echo(f"record: {res.path}")
    for split in ("test", "target"):
        m = rec.metrics.get(split, {})
        parts = "  ".join(f"{k} {_fmt(m.get(k))}" for k in CORE_METRICS)
        click.echo(f"  {split:<6} {parts}   (n={int(m.get('n') or 0)}, unknown={int(m.get('n_unknown') or 0)})")


def _filters(f):
    """Glob filters shared by table and plot."""
    for name in ("method", "dataset", "protocol", "domain", "backbone"):
        f = click.option(f"--{name}", default=None, help=f"Keep {name}s matching these globs (comma-separated).")(f)
    return f


@cli.command()
@click.option("--results", default="results", show_default=True)
@click.option("--metric", "metrics", default="acc", show_default=True,
              help=f"Metric, or several joined by commas for 'a / b' cells: {', '.join(METRICS)}.")
@click.option("--rows", default="method", show_default=True, help="Row axis: method, dataset, protocol, domain, backbone.")
@click.option("--cols", default="domain", show_default=True, help="Column axis; axes not shown are averaged or must be filtered.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "target"]))
@_filters
@click.option("--seeds", default=None, type=int, help="Expected seeds per cell; cells with fewer are flagged with †.")
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
          seeds: int | None, score: str | None, rule: str | None, no_average: bool, rank_oracle: bool,
          reference: str | None, fmt: str, error: str, output: str | None, code: str) -> None:
    """Render a leaderboard from the stored runs."""
    from pathlib import Path

    if output and not Path(output).parent.is_dir():
        raise UeobenchError(f"folder {Path(output).parent} does not exist; create it or pass another --output")
    text = api.table(results=results, metric=metrics, rows=rows, cols=cols, split=split, method=method,
                     dataset=dataset, protocol=protocol, domain=domain, backbone=backbone, seeds=seeds, score=score,
                     rule=rule, average=not no_average, rank_oracle=rank_oracle, reference=reference, fmt=fmt,
                     code=code, error=error)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.argument("kind", type=click.Choice(["scatter", "bars", "curves"]))
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="A .pdf, .png or .svg file.")
@click.option("--results", default="results", show_default=True)
@click.option("--metric", default="acc", show_default=True, type=click.Choice(METRICS), help="For bars.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "target"]))
@click.option("--run", default=None, help="For curves: a run id or a unique prefix of one.")
@_filters
def plot(kind: str, output: str, results: str, metric: str, split: str, run: str | None, method, dataset, protocol,
         domain, backbone) -> None:
    """Plot accuracy vs AUROC (scatter), per-domain bars, or one run's training curves."""
    from . import plots

    filters = {"method": method, "dataset": dataset, "protocol": protocol, "domain": domain, "backbone": backbone}
    if kind == "curves":
        if not run:
            raise UeobenchError("plot curves needs --run RUN_ID")
        path = plots.curves(output, run, results)
    elif kind == "scatter":
        path = plots.scatter(output, results, split, filters)
    else:
        path = plots.bars(output, metric, results, split, filters)
    click.echo(f"wrote {path}")


@cli.group(cls=_Group)
def reference() -> None:
    """Published numbers to compare against."""


@reference.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def reference_check(path: str) -> None:
    """Validate a CSV of reported numbers."""
    from .leaderboard import read_reference

    df = read_reference(path)
    click.echo(f"{path}: {len(df)} reported numbers from {df['citation'].nunique()} source(s), all valid")


def _grid(method_required: bool):
    """The grid axes shared by sweep and status (status may leave out --method)."""
    options = [
        click.option("--method", required=method_required, default=None, help="Comma-separated methods."),
        click.option("--protocol", default="all", show_default=True, help="Comma-separated shifts, or all."),
        click.option("--domain", default="all", show_default=True, help="Comma-separated domains, or all (per dataset)."),
        click.option("--dataset", default=DEFAULT_DATASET, show_default=True, help="Comma-separated datasets."),
        click.option("--seed", "seeds", default="0", show_default=True, help="Seeds: 0-2, or 0,3,5."),
        click.option("--backbone", default=None, help="Comma-separated backbones (default: each dataset's)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Method option for every run (repeatable)."),
        click.option("--epochs", default=None, type=int),
        click.option("--score", default="mcm", show_default=True,
                     help="OOD score of every run (ueobench list scores); glmcm also saves local features."),
        click.option("--device", default="auto", show_default=True),
        click.option("--data-root", default=None),
        click.option("--results", default="results", show_default=True),
    ]

    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


def _spec(method, protocol, domain, dataset, seeds, backbone, sets, epochs, score, device, data_root, results):
    options = _parse_sets(sets, axis=True)
    if epochs is not None:
        if "epochs" in options:
            raise UeobenchError("--epochs and --set epochs=... both given; give one")
        options["epochs"] = str(epochs)
    return api.sweep_spec(method, protocol, domain, dataset, seeds, backbone, options, device, data_root, results,
                          score=score)


@cli.command()
@_grid(method_required=True)
@click.option("--launcher", default="local", show_default=True, type=click.Choice(["local", "slurm", "submitit-local"]))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="local: worker processes (one per GPU on CUDA).")
@click.option("--partition", default=None, help="slurm: partition.")
@click.option("--time", "time_min", default=120, show_default=True, type=click.IntRange(min=1), help="slurm: minutes per job.")
@click.option("--gpus", default=1, show_default=True, type=click.IntRange(min=0), help="slurm: GPUs per job.")
@click.option("--array-parallelism", default=64, show_default=True, type=click.IntRange(min=1), help="slurm: array jobs at once.")
@click.option("--sbatch", multiple=True, metavar="KEY=VALUE", help="slurm: extra sbatch options (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the plan and the state of each run; run nothing.")
@click.option("--retry-failed", is_flag=True, help="Rerun runs that failed before.")
@click.option("--force", is_flag=True, help="Rerun finished runs too.")
def sweep(method: str, protocol: str, domain: str, dataset: str, seeds: str, backbone: str | None,
          sets: tuple[str, ...], epochs: int | None, score: str, device: str, data_root: str | None, results: str,
          launcher: str,
          workers: int, partition: str | None, time_min: int, gpus: int, array_parallelism: int,
          sbatch: tuple[str, ...], dry_run: bool, retry_failed: bool, force: bool) -> None:
    """Run or resume a grid of runs; finished runs are skipped, interrupted ones redone.

    --set KEY=a,b,c makes the values a grid axis."""
    from .progress import make_progress

    spec = _spec(method, protocol, domain, dataset, seeds, backbone, sets, epochs, score, device, data_root, results)
    slurm = {"partition": partition, "time": time_min, "gpus": gpus, "array_parallelism": array_parallelism,
             "sbatch": _parse_sets(sbatch, flag="--sbatch")}
    with make_progress() as progress:
        out = api.sweep(spec, launcher, workers, retry_failed, force, dry_run, slurm,
                        None if dry_run else progress, echo=click.echo)
    counts = ", ".join(f"{v} {k}" for k, v in out["states"].items())
    if out.get("dry_run"):
        click.echo(f"{out['runs']} runs: {counts}")
        return
    if out.get("submitted"):
        click.echo(f"submitted {out['outcome']['submitted']} array tasks; follow them with: "
                   f"ueobench status --results {results}")
        return
    if out["workers_failed"]:
        click.echo(f"warning: {out['workers_failed']} of {workers} workers exited abnormally; rerun the same "
                   f"sweep to resume", err=True)
    click.echo(f"sweep {out['key']}: {out['runs']} runs: {counts}")
    if out["outcome"]:
        click.echo("this invocation: " + ", ".join(f"{v} {k}" for k, v in sorted(out["outcome"].items())))
    if out["states"]["failed"]:
        click.echo(f"failed runs keep their error and traceback in {results}/failed/; rerun them with --retry-failed")
        sys.exit(1)


@cli.command()
@_grid(method_required=False)
@click.option("--verbose", "-v", is_flag=True, help="List every run that is not done.")
@click.option("--json", "as_json", is_flag=True, help="Every grid and the state of each run, as JSON.")
def status(method, protocol, domain, dataset, seeds, backbone, sets, epochs, score, device, data_root, results,
           verbose: bool, as_json: bool) -> None:
    """Done, running, failed and pending runs: of one grid (--method ...), or of every sweep saved in a results
    folder (read from the saved plans, without loading any method)."""
    spec = (_spec(method, protocol, domain, dataset, seeds, backbone, sets, epochs, score, device, data_root, results)
            if method else None)
    grids = api.status(results, spec)
    if as_json:
        click.echo(json.dumps(grids, indent=1, sort_keys=True))
        return
    if not grids:
        click.echo(f"no sweeps under {results}/sweeps; pass a grid (--method ...) to check one")
    for g in grids:
        click.echo(f"grid {g['key']} ({', '.join(g['methods'])} x {', '.join(g['protocols'])} x "
                   f"{', '.join(g['datasets'])}, {g['runs']} runs): " + ", ".join(f"{v} {k}" for k, v in g["counts"].items()))
        if verbose:
            for n, st in g["states"].items():
                if st != "done":
                    click.echo(f"  {st:<8} {n}")


@cli.command()
@click.option("--results", default="results", show_default=True)
@click.option("--format", "fmt", default="csv", show_default=True, type=click.Choice(["csv", "parquet", "jsonl"]))
@click.option("--output", default=None, type=click.Path(dir_okay=False), help="Write to this file (needed for parquet).")
@click.option("--code", default="current", show_default=True, type=click.Choice(["current", "all"]),
              help="current: only runs made by the installed code of each method; all: every readable run.")
def export(results: str, fmt: str, output: str | None, code: str) -> None:
    """One row per run: every plan field, each option as a column, every metric of both splits."""
    from pathlib import Path

    if output and not Path(output).parent.is_dir():
        raise UeobenchError(f"folder {Path(output).parent} does not exist; create it or pass another --output")
    out = api.export(results, fmt, output, code)
    if output:
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(out, nl=False)


@cli.group(name="list", cls=_Group)
def list_() -> None:
    """List methods, backbones, datasets or scores."""


@list_.command("methods")
@click.option("--json", "as_json", is_flag=True, help="Every method's description as JSON.")
def list_methods(as_json: bool) -> None:
    """Registered methods: built-ins, entry points and --plugins folders."""
    info = api.describe_methods()
    if as_json:
        click.echo(json.dumps(info, indent=1, sort_keys=True, default=str))
        return
    for name, m in info.items():
        click.echo(f"{name:<12} {m['adaptation']:<13} {m['summary']}")


@list_.command("backbones")
@click.argument("pattern", required=False)
@click.option("--all", "show_all", is_flag=True, help="Also list every open_clip pretrained tag.")
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
def list_backbones(pattern: str | None, show_all: bool, as_json: bool) -> None:
    """Backbones as ARCH:WEIGHTS; PATTERN is a glob (e.g. 'ViT-B-16*')."""
    import fnmatch

    rows = api.list_backbones()
    if pattern:
        rows = [r for r in rows if fnmatch.fnmatchcase(r["backbone"], pattern)]
        show_all = True
    ours = [r for r in rows if r["source"].startswith("ueobench")]
    shown = rows if show_all else ours
    if as_json:
        click.echo(json.dumps(shown, indent=1))
        return
    for r in shown:
        click.echo(f"{r['backbone']:<48} {r['source']}")
    if not show_all:
        click.echo(f"... and {len(rows) - len(ours)} open_clip pretrained backbones "
                   f"(ARCH:TAG, e.g. ViT-B-16:openai, RN50:openai); see them with --all or a PATTERN")


@list_.command("datasets")
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
def list_datasets(as_json: bool) -> None:
    """Datasets (protocol files), their classes and domains."""
    rows = []
    for name in api.list_datasets():
        p = api.load_protocol(name)
        rows.append({"dataset": name, "classes": len(p.classes), "domains": [d.name for d in p.domains]})
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        click.echo(f"{r['dataset']:<11} {r['classes']:>4} classes  domains: {', '.join(r['domains'])}")


@list_.command("scores")
def list_scores() -> None:
    """OOD scores (--score) and H-score rejection rules (--rule)."""
    for name in api.SCORES.names():
        s = api.SCORES.get(name)
        click.echo(f"{name:<9} T={s.temperature:<28} {s.doc}")
    click.echo("\nH-score rejection rules (--rule):")
    for k, v in RULES_DOC.items():
        click.echo(f"{k:<9} {v}")


@cli.group(cls=_Group)
def show() -> None:
    """Show a protocol's class roles or a method's options."""


@show.command("protocol")
@click.argument("dataset")
@click.argument("shift", type=click.Choice(SHIFTS))
@click.option("--json", "as_json", is_flag=True)
def show_protocol(dataset: str, shift: str, as_json: bool) -> None:
    """The classes of each role (known, target, unknown, absent) under a shift."""
    roles = api.show_protocol(dataset, shift)
    if as_json:
        click.echo(json.dumps(roles, indent=1))
        return
    click.echo(f"{roles['dataset']} / {shift}: {roles['num_classes']} classes")
    for role, doc in (("known", "prompted"), ("target", "present in the adaptation data"),
                      ("unknown", "present but not known"), ("absent", "known but not present")):
        names = roles[role]
        click.echo(f"\n{role} ({doc}): {len(names)}")
        click.echo("  " + (", ".join(names) if names else "(none)"))


@show.command("method")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def show_method(name: str, as_json: bool) -> None:
    """A method's description, every option (type, default, per-dataset defaults, help)."""
    m = api.describe_method(name)
    if as_json:
        click.echo(json.dumps(m, indent=1, sort_keys=True, default=str))
        return
    click.echo(f"{m['name']} ({m['adaptation']}{', reads target labels' if m['oracle'] else ''}) from {m['origin']}\n")
    click.echo(m["description"] + "\n")
    click.echo("options (--set KEY=VALUE):")
    for o in m["options"]:
        per = {ds: d[o["name"]] for ds, d in m["dataset_defaults"].items() if o["name"] in d}
        extra = ("  [" + ", ".join(f"{ds}: {v!r}" for ds, v in per.items()) + "]") if per else ""
        click.echo(f"  {o['name']:<16} {o['type']:<12} default {o['default']!r}{extra}")
        if o["help"]:
            click.echo(f"  {'':<16} {o['help']}")


@cli.group(cls=_Group)
def data() -> None:
    """Inspect datasets on disk."""


@data.command("check")
@click.option("--dataset", required=True)
@click.option("--domain", default=None, help="One domain (default: every domain).")
@click.option("--protocol", default="opda", show_default=True, type=click.Choice(SHIFTS), help="Shift that defines the roles.")
@click.option("--data-root", default=None)
@click.option("--json", "as_json", is_flag=True)
def data_check(dataset: str, domain: str | None, protocol: str, data_root: str | None, as_json: bool) -> None:
    """Count images per split and role, and list missing or unreadable files."""
    reports = api.check_data(dataset, domain=domain, protocol=protocol, data_root=data_root)
    if as_json:
        click.echo(json.dumps(reports, indent=1))
    else:
        for r in reports:
            click.echo(f"{r['dataset']}/{r['domain']} ({r['source']}: {r['location']}), roles under {r['shift']}")
            for split, c in r["splits"].items():
                click.echo(f"  {split:<6} {c['images']:>7} images  known {c['known']:>7}  unknown {c['unknown']:>7}  classes {c['classes']}")
            for kind in ("missing", "unreadable"):
                click.echo(f"  {kind}: {len(r[kind])}")
                for f in r[kind][:20]:
                    click.echo(f"    {f}")
                if len(r[kind]) > 20:
                    click.echo(f"    ... and {len(r[kind]) - 20} more")
    if any(r["missing"] or r["unreadable"] for r in reports):
        sys.exit(1)


@cli.command()
@click.argument("world", type=click.Choice(["shapes", "shapes65"]))
@click.option("--out", default=None, help="Where to write the weights (default: the built-in weights file).")
@click.option("--steps", default=None, type=int, help="Optimiser steps (default: the shipped recipe).")
@click.option("--minutes", default=None, type=float, help="Stop after this many minutes.")
@click.option("--pool", default=None, type=click.IntRange(min=1),
              help="Image-caption pairs to render (default: the shipped recipe's).")
def pretrain(world: str, out: str | None, steps: int | None, minutes: float | None, pool: int | None) -> None:
    """Retrain the tiny CLIP of a built-in world from scratch on the CPU (on 2 cores, shapes: about 45 minutes;
    shapes65: about 8 minutes)."""
    from pathlib import Path

    from .pretrain import default_output, pretrain as run_pretrain, recipe

    cfg = recipe(world)
    if steps is not None:
        cfg.steps = steps
    if minutes is not None:
        cfg.minutes = minutes
    if pool is not None:
        cfg.pool = pool
    summary = run_pretrain(cfg, Path(out) if out else default_output(world), log=lambda m: click.echo(m, err=True))
    click.echo(json.dumps(summary, indent=1))


def main() -> None:
    cli(prog_name="ueobench")


if __name__ == "__main__":
    main()
