"""What a sweep is asked for: its axes (comma lists, ``all``, seed ranges, option values that become an axis),
as a typed ``SweepSpec``, and ``expand``, which turns it into run requests in a stable order."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from itertools import product

from ..core.errors import UeobenchError
from ..core.hashing import canonical_json
from ..data.protocols import SHIFTS, load_protocol
from ..runs.request import RunRequest
from ..scoring.scores import DEFAULT_RULE

# ------------------------------------------------------------------------------------------------ axes


def parse_list(value: str | None, all_values: list[str] | None = None, what: str = "value") -> list[str]:
    """``a,b``, ``all`` (when the axis has a known set of values)."""
    if value is None:
        return []
    items = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if items == ["all"]:
        if all_values is None:
            raise UeobenchError(f"'all' is not available for {what}")
        return list(all_values)
    return items


MAX_SEED = 2**32 - 1
MAX_SEEDS = 1000


def parse_shots(value: str | None) -> list[int | None]:
    """``--shots 1,16,32`` -> [1, 16, 32]; None -> [None] (every source image)."""
    if value is None:
        return [None]
    try:
        out = [int(v) for v in parse_list(value)]
    except ValueError:
        out = []
    if not out or any(v < 1 for v in out):
        raise UeobenchError(f"bad --shots '{value}'; give positive images per class, e.g. 16 or 1,16,32")
    return list(dict.fromkeys(out))


def parse_streams(value: str | None) -> list[str | None]:
    """``--stream dirichlet:0.01,separate`` -> canonical stream names; None -> [None] (the i.i.d. order)."""
    from ..data.streams import parse_stream

    if value is None:
        return [None]
    out = []
    for v in parse_list(value):
        s = parse_stream(v)
        out.append(None if s is None else s.name)
    return list(dict.fromkeys(out)) or [None]


def parse_seeds(value: str) -> list[int]:
    """``0-2`` -> [0, 1, 2]; ``0,3,5``; or mixes of both. Seeds are integers in [0, 2**32 - 1], at most
    ``MAX_SEEDS`` of them (as ``run --seed``)."""
    bad = f"bad --seed '{value}'; use seeds from 0 to {MAX_SEED} as a list or ranges such as 0-2 or 0,3,5"
    seeds: list[int] = []
    for part in value.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
            elif part:
                lo = hi = int(part)
            else:
                continue
        except ValueError:
            raise UeobenchError(bad) from None
        if lo < 0 or hi > MAX_SEED:
            raise UeobenchError(bad)
        if hi - lo + 1 + len(seeds) > MAX_SEEDS:
            raise UeobenchError(f"--seed '{value}' names more than {MAX_SEEDS} seeds; split the sweep")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise UeobenchError(bad)
    return list(dict.fromkeys(seeds))


@dataclass
class SweepSpec:
    """What ``ueobench sweep`` was asked for; ``expand`` turns it into run requests."""

    methods: list[str]
    protocols: list[str]
    domains: list[str]
    datasets: list[str]
    seeds: list[int]
    backbones: list[str | None]
    options: dict[str, str] = field(default_factory=dict)
    results: str = "results"
    data_root: str | None = None
    device: str = "auto"
    eval_batch_size: int = 256
    score: str = "mcm"
    rule: str = DEFAULT_RULE
    plugins: list[str] = field(default_factory=list)  # --plugins folders, loaded again in every worker
    precision: str = "auto"
    cache: bool = True  # the shared image-feature cache (execution only)
    loader_workers: int | None = None  # data-loader processes per run (execution only)
    #: labeled-source track axes: source domains (``all``: every domain of each dataset) and few-shot sizes;
    #: [None] is the unlabeled-target track
    sources: list[str | None] = field(default_factory=lambda: [None])
    shots: list[int | None] = field(default_factory=lambda: [None])
    #: label-shift streams (``--stream``); [None] is the i.i.d. order
    streams: list[str | None] = field(default_factory=lambda: [None])

    def key(self) -> str:
        d = asdict(self)
        for k in ("sources", "shots", "streams"):  # grids without these axes keep the keys they had
            if d[k] == [None]:
                del d[k]
        return hashlib.sha256(canonical_json(d).encode()).hexdigest()[:12]


def expand(spec: SweepSpec) -> list[RunRequest]:
    """The grid, in a stable order. ``all`` domains are taken per dataset."""
    from dataclasses import fields as dc_fields

    from ..method.options import build_options
    from ..method.registry import get_method

    declared = {m: {f.name for f in dc_fields(get_method(m).Options)} for m in spec.methods}
    axes = {k: [v.strip() for v in str(raw).split(",")] for k, raw in spec.options.items()}  # a=1,2: a grid axis
    for key, values in axes.items():
        if not any(key in d for d in declared.values()):
            build_options(get_method(spec.methods[0]), {key: values[0]})  # raises with a suggestion
        for m in spec.methods:  # every value is validated before anything runs
            if key in declared[m]:
                for v in values:
                    build_options(get_method(m), {key: v})
    jobs = []
    for dataset in spec.datasets:
        proto = load_protocol(dataset)
        domains = [d.name for d in proto.domains] if spec.domains == ["all"] else [proto.domain(d).name for d in spec.domains]
        shifts = spec.protocols
        if shifts == list(SHIFTS):  # "all": the shifts this dataset defines (a cross-dataset suite has csda only)
            shifts = [p for p in SHIFTS if p in proto.splits]
        for p in shifts:
            proto.split(p)
        sources = ([d.name for d in proto.domains] if spec.sources == ["all"]
                   else [None if s is None else proto.domain(s).name for s in spec.sources])
        grid = product(spec.backbones, spec.methods, sources, spec.shots, spec.streams, shifts, domains, spec.seeds)
        for backbone, method, source, shots, stream, shift, domain, seed in grid:
            keys = [k for k in axes if k in declared[method]]
            for values in product(*(axes[k] for k in keys)):
                jobs.append(RunRequest(
                    method=method, protocol=shift, domain=domain, dataset=dataset, backbone=backbone, seed=seed,
                    options=dict(zip(keys, values)), eval_batch_size=spec.eval_batch_size, device=spec.device,
                    data_root=spec.data_root, results=spec.results, score=spec.score, rule=spec.rule,
                    precision=spec.precision, cache=spec.cache, loader_workers=spec.loader_workers,
                    source=source, shots=shots, stream=stream,
                ))
    if not jobs:
        raise UeobenchError("the sweep expands to no runs")
    return jobs



# ------------------------------------------------------------------------------------------ the request


@dataclass
class SlurmOptions:
    """What the ``slurm`` launcher passes to sbatch through submitit."""

    partition: str | None = None
    time: int = 120  # minutes per job
    gpus: int | None = None  # None: what the runs' --device needs
    array_parallelism: int = 64
    sbatch: dict[str, str] = field(default_factory=dict)  # extra sbatch options


LAUNCHER_NAMES = ("local", "slurm", "submitit-local")


@dataclass
class SweepRequest:
    """Everything ``ueobench sweep`` accepts: the grid (``spec``: what to run) and how to run it."""

    spec: SweepSpec
    launcher: str = "local"
    workers: int = 1  # local: worker processes pulling from the same plan
    retry_failed: bool = False
    force: bool = False
    dry_run: bool = False
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHER_NAMES:
            raise UeobenchError(f"unknown launcher '{self.launcher}'; use {', '.join(LAUNCHER_NAMES)}")
        if isinstance(self.slurm, dict):
            self.slurm = SlurmOptions(**self.slurm)
