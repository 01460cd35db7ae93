"""``run``, ``sweep`` and ``status``: one run, a grid of runs, and where a grid stands.

``run`` and ``sweep`` take the same run settings (what each run computes and how it executes); ``status`` takes
those that change a run's identity, so it can name the runs of a grid without launching it.
"""
from __future__ import annotations

import json
import sys

import click

from .. import api
from ..core.errors import UeobenchError
from ..data.protocols import DEFAULT_DATASET
from ..runs.request import PRECISIONS
from ..scoring.metrics import CORE_METRICS
from ..scoring.scores import DEFAULT_RULE
from .common import Command, parse_sets, percent, say


def _options(options):
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


#: what every run computes (part of its identity)
IDENTITY = [
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                 help="Method option (repeatable); in a sweep, KEY=a,b makes the values an axis."),
    click.option("--epochs", default=None, type=click.IntRange(min=1), help="Shorthand for --set epochs=N."),
    click.option("--batch-size", default=None, type=click.IntRange(min=1),
                 help="Shorthand for --set batch_size=N (adaptation batch)."),
    click.option("--eval-batch-size", default=256, show_default=True, type=click.IntRange(min=1)),
    click.option("--score", default="mcm", show_default=True,
                 help="OOD score (ueobench list scores); glmcm also saves local features."),
    click.option("--rule", default=DEFAULT_RULE, show_default=True,
                 help="H-score rejection rule: nent:TAU, kmeans2, or idval:TPR (labeled-source runs: fitted on "
                      "source_val)."),
    click.option("--precision", default="auto", show_default=True, type=click.Choice(PRECISIONS),
                 help="Autocast dtype of the forward pass (auto: fp32 on CPU, bf16 on CUDA); trainable weights stay fp32."),
]
#: how and where runs execute (never part of their identity)
EXECUTION = [
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--data-root", default=None, help="Folder holding the datasets (else $UEOBENCH_DATA, else ueobench.toml)."),
    click.option("--results", default="results", show_default=True, help="Run store."),
    click.option("--no-cache", is_flag=True, help="Do not read or write the shared image-feature cache."),
    click.option("--loader-workers", default=None, type=click.IntRange(min=0),
                 help="Data-loader processes per run (default 0 on a small CPU machine, up to 8 on CUDA)."),
]


def _method_options(sets: tuple[str, ...], epochs: int | None, batch_size: int | None, axis: bool) -> dict[str, str]:
    options = parse_sets(sets, axis=axis)
    for key, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value is not None:
            if key in options:
                raise UeobenchError(f"--{key.replace('_', '-')} and --set {key}=... both given; give one")
            options[key] = str(value)
    return options


@click.command(cls=Command)
@click.option("--method", required=True, help="Method name (ueobench list methods).")
@click.option("--protocol", required=True, help="Category shift: cda, pda, oda, opda or csda; a composition the "
              "dataset names (ueobench show protocol); or ood:DATASET/DOMAIN@RATIO to mix in another dataset's "
              "images as unknowns.")
@click.option("--domain", required=True, help="Target domain, e.g. clipart.")
@click.option("--dataset", default=None, help="Dataset; needed only when several configured datasets share the domain.")
@click.option("--backbone", default=None, help="ARCH:WEIGHTS, e.g. ViT-B-16:openai; default: the dataset's.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1))
@click.option("--source", default=None, help="Labeled-source track: the domain whose labeled images (known classes) "
              "the method trains on; the same as --domain for in-distribution numbers.")
@click.option("--shots", default=None, type=click.IntRange(min=1),
              help="Labeled-source track: a seeded subsample of N source images per class.")
@click.option("--stream", default=None, help="Order an online or batched method reads the adaptation data in: "
              "iid (default), dirichlet:GAMMA[@B], separate, or keff:LO-HI[@B] (StatA's label-shift streams).")
@_options(IDENTITY)
@_options(EXECUTION)
@click.option("--force", is_flag=True, help="Rerun even if an identical finished run exists (a labeled-source "
              "method's trained model is reused: it is content-addressed).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
def run(method: str, protocol: str, domain: str, dataset: str | None, backbone: str | None, seed: int,
        source: str | None, shots: int | None, stream: str | None, sets: tuple[str, ...], epochs: int | None,
        batch_size: int | None, eval_batch_size: int, score: str, rule: str, precision: str, device: str,
        data_root: str | None, results: str, no_cache: bool, loader_workers: int | None, force: bool,
        as_json: bool) -> None:
    """Adapt one method on one target domain (or train it on a labeled --source) and record its metrics."""
    options = _method_options(sets, epochs, batch_size, axis=False)
    res = api.run(method=method, protocol=protocol, domain=domain, dataset=dataset, backbone=backbone, seed=seed,
                  options=options, eval_batch_size=eval_batch_size, device=device, data_root=data_root,
                  results=results, score=score, rule=rule, loader_workers=loader_workers, force=force,
                  cache=not no_cache, precision=precision, source=source, shots=shots,
                  stream=_canonical_stream(stream))
    rec = res.record
    if as_json:
        click.echo(json.dumps(rec.raw, indent=1, sort_keys=True))
        return
    if rec.raw.get("backbone", {}).get("random_weights"):
        click.echo("warning: random backbone weights: these numbers measure nothing but the harness", err=True)
    state = "already done, reused (pass --force to rerun)" if res.skipped else "done"
    where = f"{rec.source} -> {rec.domain}" if rec.source else rec.domain
    shots = f", {rec.shots}-shot" if rec.shots else ""
    say(f"{rec.label} | {rec.dataset}/{rec.shift}/{where}{shots} | {rec.backbone} | seed {rec.seed}: {state}")
    say(f"record: {res.path}")
    art = rec.raw.get("artifact") or {}
    if art:
        how = "reused" if art.get("reused") else f"trained in {float(art.get('train_s') or 0):.1f}s"
        say(f"model: {art.get('id')} ({how})")
    shown = [s for s in ("test", "target", "source_val") if s in rec.metrics]
    width = max(len(s) for s in shown)
    for split in shown:
        m = rec.metrics.get(split, {})
        parts = "  ".join(f"{k} {percent(m.get(k))}" for k in CORE_METRICS)
        say(f"  {split:<{width}} {parts}   (n={int(m.get('n') or 0)}, unknown={int(m.get('n_unknown') or 0)})")


def _canonical_stream(text: str | None) -> str | None:
    from ..data.streams import parse_stream

    s = parse_stream(text)
    return None if s is None else s.name


GRID = [
    click.option("--protocol", default="all", show_default=True, help="Comma-separated shifts, or all."),
    click.option("--domain", default="all", show_default=True, help="Comma-separated domains, or all (per dataset)."),
    click.option("--dataset", default=DEFAULT_DATASET, show_default=True, help="Comma-separated datasets."),
    click.option("--seed", "seeds", default="0", show_default=True, help="Seeds: 0-2, or 0,3,5."),
    click.option("--backbone", default=None, help="Comma-separated backbones (default: each dataset's)."),
    click.option("--source", default=None, help="Labeled-source track: comma-separated source domains, or all."),
    click.option("--shots", default=None, help="Labeled-source track: comma-separated images per class, e.g. 1,16."),
    click.option("--stream", default=None, help="Comma-separated label-shift streams of the online and batched "
                 "methods: iid, dirichlet:GAMMA[@B], separate, keff:LO-HI[@B]."),
]


def _spec(method, protocol, domain, dataset, seeds, backbone, source, shots, stream, sets, epochs, batch_size,
          eval_batch_size, score, rule, precision, device="auto", data_root=None, results="results", no_cache=False,
          loader_workers=None):
    options = _method_options(sets, epochs, batch_size, axis=True)
    return api.sweep_spec(method, protocol, domain, dataset, seeds, backbone, options, device, data_root, results,
                          score=score, rule=rule, precision=precision, eval_batch_size=eval_batch_size,
                          cache=not no_cache, loader_workers=loader_workers, source=source, shots=shots,
                          stream=stream)


@click.command(cls=Command)
@click.option("--method", required=True, help="Comma-separated methods.")
@_options(GRID)
@_options(IDENTITY)
@_options(EXECUTION)
@click.option("--launcher", default="local", show_default=True, type=click.Choice(["local", "slurm", "submitit-local"]))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="local: sweep worker processes, each running whole runs (one per GPU on CUDA).")
@click.option("--partition", default=None, help="slurm: partition.")
@click.option("--time", "time_min", default=120, show_default=True, type=click.IntRange(min=1), help="slurm: minutes per job.")
@click.option("--gpus", default=None, type=click.IntRange(min=0),
              help="slurm: GPUs per job (default: what --device needs: 0 for cpu, 1 for cuda; auto asks for 1 only "
                   "when this machine sees a GPU).")
@click.option("--array-parallelism", default=64, show_default=True, type=click.IntRange(min=1), help="slurm: array jobs at once.")
@click.option("--sbatch", multiple=True, metavar="KEY=VALUE", help="slurm: extra sbatch options (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the plan and the state of each run; run nothing.")
@click.option("--retry-failed", is_flag=True, help="Rerun runs that failed before.")
@click.option("--force", is_flag=True, help="Rerun finished runs too.")
def sweep(method: str, protocol: str, domain: str, dataset: str, seeds: str, backbone: str | None,
          source: str | None, shots: str | None, stream: str | None, sets: tuple[str, ...], epochs: int | None,
          batch_size: int | None, eval_batch_size: int, score: str,
          rule: str, precision: str, device: str, data_root: str | None, results: str, no_cache: bool,
          loader_workers: int | None, launcher: str, workers: int, partition: str | None, time_min: int,
          gpus: int | None, array_parallelism: int, sbatch: tuple[str, ...], dry_run: bool, retry_failed: bool,
          force: bool) -> None:
    """Run or resume a grid of runs; finished runs are skipped, interrupted ones redone.

    --set KEY=a,b,c makes the values a grid axis."""
    from ..core.progress import make_progress
    from ..sweeps.launchers import SweepInterrupted
    from ..sweeps.spec import SlurmOptions, SweepRequest

    spec = _spec(method, protocol, domain, dataset, seeds, backbone, source, shots, stream, sets, epochs, batch_size,
                 eval_batch_size, score, rule, precision, device, data_root, results, no_cache, loader_workers)
    slurm = SlurmOptions(partition, time_min, gpus, array_parallelism, parse_sets(sbatch, flag="--sbatch"))
    request = SweepRequest(spec, launcher, workers, retry_failed, force, dry_run, slurm)
    resume = "finished runs are kept; rerun the same ueobench sweep command to resume"
    try:
        with make_progress() as progress:
            out = api.sweep(request, progress, echo=say)
    except SweepInterrupted as e:
        say(f"sweep stopped by {e}: its workers were stopped; {resume}", err=True)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        say(f"sweep interrupted; {resume}", err=True)
        sys.exit(130)
    counts = ", ".join(f"{v} {k}" for k, v in out["states"].items())
    if out.get("dry_run"):
        say(f"{out['runs']} runs: {counts}")
        return
    if out.get("submitted"):
        say(f"submitted {out['outcome']['submitted']} array tasks ({out.get('gpus', 0)} GPU(s) each); follow them "
            f"with: ueobench status --results {results} -v (job logs in {results}/submitit/)")
        return
    if out["workers_failed"]:
        say(f"warning: {out['workers_failed']} of {workers} workers exited abnormally; {resume}", err=True)
    say(f"sweep {out['key']}: {out['runs']} runs: {counts}")
    if out["outcome"]:
        say("this invocation: " + ", ".join(f"{v} {k}" for k, v in sorted(out["outcome"].items())))
    if out["states"]["failed"]:
        say(f"failed runs keep their error and traceback in {results}/failed/ (ueobench status -v shows why); "
            f"rerun them with --retry-failed")
        sys.exit(1)


@click.command(cls=Command)
@click.option("--method", default=None, help="Comma-separated methods: the grid to check (default: every saved sweep).")
@_options(GRID)
@_options(IDENTITY)
@click.option("--results", default="results", show_default=True, help="Run store.")
@click.option("--verbose", "-v", is_flag=True, help="List every run that is not done, with why it failed.")
@click.option("--json", "as_json", is_flag=True, help="Every grid and the state of each run, as JSON.")
def status(method, protocol, domain, dataset, seeds, backbone, source, shots, stream, sets, epochs, batch_size,
           eval_batch_size, score, rule, precision, results, verbose: bool, as_json: bool) -> None:
    """Done, running, failed and pending runs: of one grid (--method ...), or of every sweep saved in a results
    folder (read from the saved plans, without loading any method)."""
    spec = (_spec(method, protocol, domain, dataset, seeds, backbone, source, shots, stream, sets, epochs,
                  batch_size, eval_batch_size, score, rule, precision, results=results) if method else None)
    grids = api.status(results, spec)
    if as_json:
        click.echo(json.dumps(grids, indent=1, sort_keys=True))
        return
    if not grids:
        say(f"no sweeps under {results}/sweeps; pass a grid (--method ...) to check one")
    for g in grids:
        say(f"grid {g['key']} ({', '.join(g['methods'])} x {', '.join(g['protocols'])} x "
            f"{', '.join(g['datasets'])}, {g['runs']} runs): " + ", ".join(f"{v} {k}" for k, v in g["counts"].items()))
        if verbose:
            for n, st in g["states"].items():
                if st != "done":
                    why = g.get("failures", {}).get(n)
                    say(f"  {st:<8} {n}" + (f"  {why}" if why else ""))
