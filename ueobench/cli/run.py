"""``run``, ``sweep`` and ``status``: one run, a grid of runs, and where a grid stands."""
from __future__ import annotations

import json
import sys

import click

from .. import api
from ..core.errors import UeobenchError
from ..data.protocols import DEFAULT_DATASET, SHIFTS
from ..scoring.metrics import CORE_METRICS
from ..scoring.scores import DEFAULT_RULE
from .common import Command, parse_sets, percent


@click.command(cls=Command)
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
    options = parse_sets(sets)
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
        parts = "  ".join(f"{k} {percent(m.get(k))}" for k in CORE_METRICS)
        click.echo(f"  {split:<6} {parts}   (n={int(m.get('n') or 0)}, unknown={int(m.get('n_unknown') or 0)})")


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
    options = parse_sets(sets, axis=True)
    if epochs is not None:
        if "epochs" in options:
            raise UeobenchError("--epochs and --set epochs=... both given; give one")
        options["epochs"] = str(epochs)
    return api.sweep_spec(method, protocol, domain, dataset, seeds, backbone, options, device, data_root, results,
                          score=score)


@click.command(cls=Command)
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
    from ..core.progress import make_progress
    from ..sweeps.spec import SlurmOptions, SweepRequest

    spec = _spec(method, protocol, domain, dataset, seeds, backbone, sets, epochs, score, device, data_root, results)
    slurm = SlurmOptions(partition, time_min, gpus, array_parallelism, parse_sets(sbatch, flag="--sbatch"))
    request = SweepRequest(spec, launcher, workers, retry_failed, force, dry_run, slurm)
    with make_progress() as progress:
        out = api.sweep(request, None if dry_run else progress, echo=click.echo)
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


@click.command(cls=Command)
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


