"""A run's identity: the request, resolved into a frozen ``RunPlan`` whose hash is the run id.

The plan holds what determines the numbers: dataset, shift, domain, backbone and its activation, method, the
method's resolved options and code fingerprint, seed, precision *as requested* ("auto" stays "auto"), OOD score,
rejection rule, evaluation batch size, and the checksums of the protocol file and of the images. Nothing about
the machine that plans it (CUDA visibility, device count, workers, paths) enters it, so a sweep planned on a
login node without a GPU has the ids its GPU workers execute. What a machine resolves at execution (device,
autocast dtype, TF32, loader settings, library versions) is recorded in the record, never hashed.

Planning is cheap: a ``Planner`` reads each (dataset, domain) once per command and fingerprints each method's
code once, however many runs share them.
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import UeobenchError

#: Bumped whenever the meaning of a plan changes, so ids of older plans never collide with newer ones
#: (2: activation, method code, score and rule entered the identity; precision stays as requested).
PLAN_VERSION = 2
DEFAULT_RULE = "nent:0.5"
#: the built-in demo world: the CLI's and the API's default dataset, and what a bare ``--domain real`` means
DEFAULT_DATASET = "shapes"


@dataclass
class RunRequest:
    """Everything ``ueobench run`` accepts. ``options`` are the method's ``--set key=value`` overrides.

    ``device``, ``workers``, ``results``, ``cache`` and ``force`` say how and where to execute, not what: they
    never enter the run's identity."""

    method: str = "zeroshot"
    protocol: str = "opda"
    domain: str = "clipart"
    dataset: str | None = None
    backbone: str | None = None
    seed: int = 0
    options: dict[str, str] = field(default_factory=dict)
    eval_batch_size: int = 256
    device: str = "auto"
    data_root: str | None = None
    results: str = "results"
    score: str = "mcm"
    rule: str = DEFAULT_RULE
    force: bool = False
    workers: int | None = None
    cache: bool = True  # share frozen image features through the on-disk cache (results are identical)
    precision: str = "auto"  # autocast dtype of the forward pass: fp32 on CPU, bf16 (or fp16) on CUDA


@dataclass(frozen=True)
class RunPlan:
    """What a run computes. ``run_id`` is a readable slug plus the first 12 hex digits of its hash."""

    dataset: str
    shift: str
    domain: str
    backbone: str
    activation: str
    method: str
    options: dict[str, Any]
    method_code: str
    seed: int
    precision: str
    eval_batch_size: int
    score: str
    rule: str
    protocol_checksum: str
    data_checksum: str
    plan_version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def digest(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()

    @property
    def run_id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join((self.method, self.dataset, self.shift, self.domain)))
        slug = slug.lstrip(".") or "run"  # a leading dot would hide the run folder (temporary folders start so)
        return f"{slug}_s{self.seed}-{self.digest[:12]}"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass
class PlannedRun:
    """A plan with what executing it needs (loaded once while planning; none of it is hashed)."""

    plan: RunPlan
    request: RunRequest
    method_cls: type
    options: Any
    protocol: Any
    shift_data: Any
    spec: Any
    code: dict[str, Any]  # the method's code fingerprint with each file's hash, for the record
    label: str
    options_changed: dict[str, Any]

    @property
    def run_id(self) -> str:
        return self.plan.run_id


def option_label(method: str, changed: dict[str, Any]) -> str:
    """``ueo``, or ``ueo (epochs=10, lr_prompt=0.01)``: the options that differ from the method's defaults for
    the dataset. Stored in the record, so tables never depend on which plugins are loaded."""
    return method if not changed else f"{method} ({', '.join(f'{k}={v}' for k, v in sorted(changed.items()))})"


class Planner:
    """Turns requests into plans, sharing the expensive parts (image lists, code fingerprints) between them."""

    def __init__(self, progress: Any = None):
        self.progress = progress
        self._domains: dict[tuple[str, str, str | None], tuple[Any, str]] = {}
        self._code: dict[type, dict[str, Any]] = {}
        self._activation: dict[str, str] = {}
        self._shifts: dict[tuple, Any] = {}

    def domain(self, proto: Any, domain: str, data_root: str | None) -> tuple[Any, str]:
        from . import data as data_mod
        from .fingerprints import data_fingerprint

        key = (proto.name, domain, data_root)
        if key not in self._domains:
            dd = data_mod.load_domain(proto, domain, data_root, self.progress)
            if dd.source == "hf":
                root, label = None, dd.location
            elif dd.source == "builtin":
                root, label = str(data_mod.dataset_root(proto, data_root)), f"builtin:{proto.name}"
            else:  # the root as the user named it (not resolved): copies of a dataset stay apart
                root = label = str(data_mod.dataset_root(proto, data_root))
            self._domains[key] = (dd, data_fingerprint(dd, root, label))
        return self._domains[key]

    def code(self, cls: type) -> dict[str, Any]:
        from .fingerprints import method_code

        if cls not in self._code:
            self._code[cls] = method_code(cls)
        return self._code[cls]

    def activation(self, backbone: str) -> str:
        from .backbones import activation

        if backbone not in self._activation:
            self._activation[backbone] = activation(backbone)
        return self._activation[backbone]

    def plan(self, req: RunRequest) -> PlannedRun:
        """Resolve names, options and data (no model is loaded, no device is touched)."""
        from . import data as data_mod
        from .backbones import parse_spec
        from .method import build_options, get_method, options_dict
        from .precision import PRECISIONS
        from .scores import SCORES, check_rule, how_to_save

        method_cls = get_method(req.method)
        for kind in SCORES.get(req.score).needs:  # raises with a suggestion for an unknown score
            if kind != "local_mcm" and kind not in method_cls.extras:  # local features: checked on the backbone
                raise UeobenchError(f"score '{req.score}' needs {kind}, which method '{method_cls.name}' does not "
                                    f"give ({how_to_save(req.score)})")
        check_rule(req.rule)
        if req.precision not in PRECISIONS:
            raise UeobenchError(f"unknown precision '{req.precision}'; use one of {', '.join(PRECISIONS)}")
        proto = resolve_dataset(req.domain, req.dataset, req.data_root)
        options = build_options(method_cls, req.options, proto.name)
        split = proto.split(req.protocol)
        dom = proto.domain(req.domain)
        spec = parse_spec(req.backbone or proto.default_backbone)
        domain_data, data_checksum = self.domain(proto, dom.name, req.data_root)
        shift_key = (proto.name, dom.name, req.data_root, req.protocol)
        if shift_key not in self._shifts:
            self._shifts[shift_key] = data_mod.apply_shift(proto, req.protocol, domain_data)
        shift_data = self._shifts[shift_key]
        code = self.code(method_cls)
        resolved = options_dict(options)
        defaults = options_dict(build_options(method_cls, {}, proto.name))
        changed = {k: v for k, v in resolved.items() if defaults.get(k) != v}
        plan = RunPlan(
            dataset=proto.name, shift=split.shift, domain=dom.name, backbone=spec.name,
            activation=self.activation(spec.name), method=method_cls.name, options=resolved,
            method_code=code["fingerprint"], seed=req.seed, precision=req.precision,
            eval_batch_size=req.eval_batch_size, score=req.score, rule=req.rule,
            protocol_checksum=proto.checksum, data_checksum=data_checksum,
        )
        return PlannedRun(plan, req, method_cls, options, proto, shift_data, spec, code,
                          option_label(method_cls.name, changed), changed)


def resolve_dataset(domain: str, dataset: str | None, data_root: str | None):
    """Pick the dataset: the one named, else the only configured dataset that has this domain, else the default
    one (``shapes``) when only built-in worlds share the name (``shapes65`` is asked for by name); a configured
    real dataset beside them makes the name ambiguous."""
    from . import data as data_mod
    from .protocols import list_datasets, load_protocol
    from .registry import suggest

    if dataset:
        proto = load_protocol(dataset)
        proto.domain(domain)  # raises with suggestions
        return proto
    protos = [load_protocol(n) for n in list_datasets()]
    having = [p for p in protos if p.has_domain(domain)]
    if not having:
        all_domains = sorted({d.name for p in protos for d in p.domains})
        raise UeobenchError(f"unknown domain '{domain}'{suggest(domain, all_domains)}")
    configured = [p for p in having if data_mod.is_available(p, data_root)]
    if len(configured) == 1:
        if len(having) > 1:
            others = ", ".join(p.name for p in having if p is not configured[0])
            warnings.warn(f"domain '{domain}' is also in {others} (no data configured); using dataset "
                          f"'{configured[0].name}'; pass --dataset to pick another", stacklevel=2)
        return configured[0]
    default = [p for p in configured if p.name == DEFAULT_DATASET]
    if len(configured) > 1 and default and all(p.builtin for p in configured):  # never over real data
        others = ", ".join(p.name for p in configured if p is not default[0])
        warnings.warn(f"domain '{domain}' is also in {others}; using the default dataset '{DEFAULT_DATASET}'; "
                      f"pass --dataset to pick another", stacklevel=2)
        return default[0]
    if len(configured) > 1:
        names = ", ".join(p.name for p in configured)
        raise UeobenchError(f"domain '{domain}' is in several configured datasets ({names}); pick one with --dataset")
    names = ", ".join(p.name for p in having)
    raise UeobenchError(f"domain '{domain}' belongs to {names}, whose data is not configured; pass --data-root or --dataset")


def plan_run(req: RunRequest, progress: Any = None) -> PlannedRun:
    return Planner(progress).plan(req)
