"""``list``, ``show``, ``data check`` and ``pretrain``: what ueobench knows, what is on disk, the built-in models."""
from __future__ import annotations

import json
import sys

import click

from .. import api
from ..core.errors import UeobenchError
from ..scoring.scores import RULES_DOC
from .common import Command, Group, say


@click.group(name="list", cls=Group)
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
        kind = "labeled-source" if m.get("track") == "labeled-source" else m["adaptation"]
        say(f"{name:<12} {kind:<14} {m['summary']}")


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
        say(f"{r['backbone']:<48} {r['source']}")
    if not show_all:
        say(f"... and {len(rows) - len(ours)} open_clip pretrained backbones "
                   f"(ARCH:TAG, e.g. ViT-B-16:openai, RN50:openai); see them with --all or a PATTERN")


@list_.command("datasets")
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
def list_datasets(as_json: bool) -> None:
    """Datasets (protocol files), their classes and domains."""
    rows = []
    for name in api.list_datasets():
        p = api.load_protocol(name)
        rows.append({"dataset": name, "classes": len(p.classes), "domains": [d.name for d in p.domains],
                     "protocols": list(p.splits) + list(p.compositions), "title": p.title, "source": p.source,
                     "checksum": p.checksum})
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    width = max(len(r["dataset"]) for r in rows)
    for r in rows:
        say(f"{r['dataset']:<{width}} {r['classes']:>5} classes  domains: {', '.join(r['domains'])}  "
            f"protocols: {', '.join(r['protocols'])}")


@list_.command("scores")
def list_scores() -> None:
    """OOD scores (--score) and H-score rejection rules (--rule)."""
    for name in api.SCORES.names():
        s = api.SCORES.get(name)
        say(f"{name:<9} T={s.temperature:<28} {s.doc}")
    click.echo("\nH-score rejection rules (--rule):")
    for k, v in RULES_DOC.items():
        say(f"{k:<9} {v}")


@click.group(cls=Group)
def show() -> None:
    """Show a protocol's class roles or a method's options."""


@show.command("protocol")
@click.argument("dataset")
@click.argument("shift")
@click.option("--json", "as_json", is_flag=True)
def show_protocol(dataset: str, shift: str, as_json: bool) -> None:
    """The classes of each role (known, target, unknown, absent) under a shift: one of cda, pda, oda, opda,
    csda, a composition the dataset's file names, or ood:DATASET/DOMAIN@RATIO."""
    roles = api.show_protocol(dataset, shift)
    if as_json:
        click.echo(json.dumps(roles, indent=1))
        return
    say(f"{roles['dataset']} / {shift}: {roles['num_classes']} classes")
    for role, doc in (("known", "prompted"), ("target", "present in the adaptation data"),
                      ("unknown", "present but not known"), ("absent", "known but not present")):
        names = roles[role]
        say("", f"{role} ({doc}): {len(names)}")
        click.echo("  " + (", ".join(names) if names else "(none)"))
    comp = roles.get("composition")
    if comp:
        say("", f"composition on {comp['base']} (draw seed {comp['seed']}): OOD parts, as OOD images per ID image "
                f"(xR, each split) or per OOD class (N each)")
        for part in comp["ood"]:
            size = f"{part['per_class']} each" if part.get("per_class") else f"x{part['ratio']:g}"
            click.echo(f"  {part['dataset']}/{part['domain']} {size}: {', '.join(part['classes'])}")


@show.command("run")
@click.argument("run_id")
@click.option("--results", default="results", show_default=True)
@click.option("--code", "show_code", is_flag=True, help="Print the method's source as it was when the run was made.")
@click.option("--module", default=None, help="With --code: another module of the run's code (e.g. ueobench.adapt.losses).")
@click.option("--json", "as_json", is_flag=True, help="The whole record as JSON.")
def show_run(run_id: str, results: str, show_code: bool, module: str | None, as_json: bool) -> None:
    """One stored run: what produced it and its metrics; --code prints the source that ran."""
    from ..store.records import iter_records, stored_source

    matches = [r for r in iter_records(results) if r.run_id.startswith(run_id)]
    if len(matches) != 1:
        names = ", ".join(r.run_id for r in matches[:5])
        raise UeobenchError(f"run '{run_id}' matches {len(matches)} records under {results}"
                            + (f" ({names})" if names else "") + "; give a longer prefix of the run id")
    rec = matches[0]
    if show_code:
        name, source = stored_source(results, rec, module)
        click.echo(f"# {name} ({(rec.code or {})['files'][name]['sha256'][:12]}) as run {rec.run_id} ran it", err=True)
        click.echo(source, nl=False)
        return
    if as_json:
        click.echo(json.dumps(rec.raw, indent=1, sort_keys=True))
        return
    cfg = rec.raw.get("config", {})
    say(f"{rec.run_id}: {rec.display_label}",
        f"  {rec.dataset}/{rec.shift}/{rec.domain}, {rec.backbone} (weights {cfg.get('weights')}), seed {rec.seed}",
        f"  data {cfg.get('data_checksum')}, protocol {cfg.get('protocol_checksum')}",
        f"  code {rec.code_fingerprint} ({len((rec.code or {}).get('files') or {})} files; --code shows the method's)",
        f"  score {rec.score}, rule {rec.rule}, precision {cfg.get('precision')}")
    for split in ("test", "target"):
        m = rec.metrics.get(split, {})
        say(f"  {split:<6} " + "  ".join(f"{k} {100 * v:.2f}" for k in ("acc", "auroc", "fpr95", "hscore")
                                         if (v := m.get(k)) is not None))


@show.command("method")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def show_method(name: str, as_json: bool) -> None:
    """A method's description, every option (type, default, per-dataset defaults, help)."""
    m = api.describe_method(name)
    if as_json:
        click.echo(json.dumps(m, indent=1, sort_keys=True, default=str))
        return
    kind = ("labeled-source: trains on --source DOMAIN, never reads target images"
            if m.get("track") == "labeled-source" else m["adaptation"])
    say(f"{m['name']} ({kind}{', reads target labels' if m['oracle'] else ''}) from {m['origin']}", "")
    say(*str(m["description"]).splitlines(), "")
    click.echo("options (--set KEY=VALUE):")
    for o in m["options"]:
        per = {ds: d[o["name"]] for ds, d in m["dataset_defaults"].items() if o["name"] in d}
        extra = ("  [" + ", ".join(f"{ds}: {v!r}" for ds, v in per.items()) + "]") if per else ""
        say(f"  {o['name']:<16} {o['type']:<12} default {o['default']!r}{extra}")
        if o["help"]:
            say(f"  {'':<16} {o['help']}")


@click.group(cls=Group)
def data() -> None:
    """Inspect datasets on disk."""


@data.command("check")
@click.option("--dataset", required=True)
@click.option("--domain", default=None, help="One domain (default: every domain).")
@click.option("--protocol", default="opda", show_default=True, help="Shift (or composition) that defines the roles.")
@click.option("--data-root", default=None)
@click.option("--json", "as_json", is_flag=True)
def data_check(dataset: str, domain: str | None, protocol: str, data_root: str | None, as_json: bool) -> None:
    """Count images per split and role, and list missing or unreadable files."""
    reports = api.check_data(dataset, domain=domain, protocol=protocol, data_root=data_root)
    if as_json:
        click.echo(json.dumps(reports, indent=1))
    else:
        for r in reports:
            if r.get("error"):
                say(f"{r['dataset']}/{r['domain']}: not found: {r['error']}")
                continue
            say(f"{r['dataset']}/{r['domain']} ({r['source']}: {r['location']}), roles under {r['shift']}")
            for split, c in r["splits"].items():
                say(f"  {split:<6} {c['images']:>7} images  known {c['known']:>7}  unknown {c['unknown']:>7}  classes {c['classes']}")
            for kind in ("missing", "unreadable"):
                say(f"  {kind}: {len(r[kind])}")
                for f in r[kind][:20]:
                    say(f"    {f}")
                if len(r[kind]) > 20:
                    say(f"    ... and {len(r[kind]) - 20} more")
    if any(r["missing"] or r["unreadable"] or r.get("error") for r in reports):
        sys.exit(1)


def _positive_minutes(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value} is not a positive number of minutes", ctx, param)
    return value


@click.command(cls=Command)
@click.argument("world", type=click.Choice(["shapes", "shapes65"]))
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Where to write the weights (default: ./ARCH-retrained.safetensors).")
@click.option("--install", is_flag=True,
              help="Replace the installed built-in weights (ARCH:builtin) instead; runs made with the old weights "
                   "keep their own identity.")
@click.option("--steps", default=None, type=click.IntRange(min=1), help="Optimiser steps (default: the shipped recipe).")
@click.option("--minutes", default=None, type=float, callback=_positive_minutes,
              help="Stop after this many minutes (default: the shipped recipe's hard stop).")
@click.option("--pool", default=None, type=click.IntRange(min=1),
              help="Image-caption pairs to render (default: the shipped recipe's).")
def pretrain(world: str, out: str | None, install: bool, steps: int | None, minutes: float | None,
             pool: int | None) -> None:
    """Retrain the tiny CLIP of a built-in world from scratch on the CPU (on 2 cores, shapes: about 45 minutes;
    shapes65: about 8 minutes)."""
    from pathlib import Path

    from ..core.errors import UeobenchError
    from ..models.pretrain import installed_output, recipe
    from ..models.pretrain import pretrain as run_pretrain

    cfg = recipe(world)
    if out and install:
        raise UeobenchError("--out and --install both given; give one")
    if steps is not None:
        cfg.steps = steps
    if minutes is not None:
        cfg.minutes = minutes
    if pool is not None:
        cfg.pool = pool
    target = installed_output(world) if install else Path(out or f"{cfg.arch}-retrained.safetensors")
    if not target.parent.is_dir():
        raise UeobenchError(f"folder {target.parent} does not exist; create it or pass another --out")
    summary = run_pretrain(cfg, target, log=lambda m: click.echo(m, err=True))
    if not install:
        summary["use_with"] = f"--backbone {cfg.arch}:{target.resolve()}"
    click.echo(json.dumps(summary, indent=1))


