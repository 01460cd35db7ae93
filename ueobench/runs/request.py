"""What a run is asked for (``RunRequest``) and what it computes (``RunPlan``, whose hash is the run id).

Torch-free, so sweeps' saved plans can be read by ``status`` without loading any method. Planning
(``ueobench.runs.plan``) turns the one into the other.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.hashing import canonical_json
from ..scoring.scores import DEFAULT_RULE

#: Bumped whenever the meaning of a plan changes, so ids of older plans never collide with newer ones
#: (2: activation, method code, score and rule entered the identity; precision stays as requested;
#: 3: the weights' content, data by content only, code as the whole import closure).
PLAN_VERSION = 3
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TRACK_FIELDS = ("source", "source_checksum", "shots", "artifact")
#: optional plan fields left out of the identity when unset, so runs without them keep their ids
OPTIONAL_FIELDS = TRACK_FIELDS + ("stream",)


@dataclass
class RunRequest:
    """Everything ``ueobench run`` accepts. ``options`` are the method's ``--set key=value`` overrides.

    ``device``, ``loader_workers``, ``data_root``, ``results``, ``cache`` and ``force`` say how and where to
    execute, not what: they never enter the run's identity."""

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
    loader_workers: int | None = None  # data-loader processes (None: this machine's default)
    cache: bool = True  # share frozen image features through the on-disk cache (results are identical)
    precision: str = "auto"  # autocast dtype of the forward pass: fp32 on CPU, bf16 (or fp16) on CUDA
    #: labeled-source track: the domain whose labeled images (known classes only) a method trains on, and an
    #: optional seeded per-class subsample of them
    source: str | None = None
    shots: int | None = None
    #: the order an online or batched method reads the adaptation data in (``ueobench.data.streams``); None: iid
    stream: str | None = None


@dataclass(frozen=True)
class RunPlan:
    """What a run computes. ``run_id`` is a readable slug plus the first 12 hex digits of its hash."""

    dataset: str
    shift: str
    domain: str
    backbone: str
    activation: str
    weights: str  # sha256 of the checkpoint's bytes, or the name of hub weights (tag:openai, hf-hub:...)
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
    #: the labeled-source track (all None for unlabeled-target runs, and then left out of the identity, so the
    #: ids of that track do not depend on fields it does not have): the source domain, its data's checksum, the
    #: few-shot subsample, and the id of the trained model (``ArtifactPlan``) this run evaluates
    source: str | None = None
    source_checksum: str | None = None
    shots: int | None = None
    artifact: str | None = None
    #: a label-shift stream (``dirichlet:0.01@128``, ...), canonical; None for the default i.i.d. order
    stream: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in OPTIONAL_FIELDS:
            if d[k] is None:
                del d[k]
        return d

    @property
    def digest(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()

    @property
    def run_id(self) -> str:
        where = f"{self.source}-to-{self.domain}" if self.source else self.domain
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join((self.method, self.dataset, self.shift, where)))
        slug = slug.lstrip(".") or "run"  # a leading dot would hide the run folder (temporary folders start so)
        return f"{slug}_s{self.seed}-{self.digest[:12]}"


@dataclass(frozen=True)
class ArtifactPlan:
    """What a labeled-source method's training computes: the model every (target, shift) evaluation of it
    shares. Targets, shifts, scores and rules do not enter it; the known classes do (a method trains on the K
    known classes of the source), so shifts with the same known classes share one model."""

    dataset: str
    source: str
    source_checksum: str
    known: tuple[str, ...]  # the class names the model is trained on, in label order
    shots: int | None
    source_val: str  # how source_val is held out (recorded; changing the rule changes every artifact)
    backbone: str
    activation: str
    weights: str
    method: str
    options: dict[str, Any]
    method_code: str
    seed: int
    precision: str
    eval_batch_size: int  # cached source features are computed at this batch size
    protocol_checksum: str
    plan_version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["known"] = list(self.known)
        return d

    @property
    def digest(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()

    @property
    def artifact_id(self) -> str:
        shots = f"_{self.shots}shot" if self.shots else ""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join((self.method, self.dataset, self.source)))
        slug = slug.lstrip(".") or "model"
        return f"{slug}{shots}_k{len(self.known)}_s{self.seed}-{self.digest[:12]}"
