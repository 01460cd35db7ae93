"""A run's identity: the request, resolved into a frozen ``RunPlan`` whose hash is the run id.

The plan holds what determines the numbers: dataset, shift, domain, backbone and its activation, method, the
method's resolved options and code fingerprint, seed, precision *as requested* ("auto" stays "auto"), OOD score,
rejection rule, evaluation batch size, and the checksums of the protocol file and of the images. Nothing about
the machine that plans it (CUDA visibility, device count, workers, paths) enters it, so a sweep planned on a
login node without a GPU has the ids its GPU workers execute. What a machine resolves at execution (device,
autocast dtype, TF32, loader settings, library versions) is recorded in the record, never hashed.

Planning asks each service once, in this order, so that bad names and options are refused before any image is
read: the method class (``ueobench.method``), the score and rule (``ueobench.scoring``), the dataset, the
method's options, the backbone (``ueobench.models``), then the data (``ueobench.data``). A ``Planner`` shares
the expensive parts (image lists, fingerprints, activations) between the requests of one command.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.errors import UeobenchError
from ..data.dataset import DataResolver, ShiftData
from ..data.protocols import Protocol
from ..method.registry import MethodResolver, get_method
from ..models.backbones import BackboneSpec, ResolvedBackbone, resolve_backbone
from ..scoring.scores import canonical_rule, canonical_score, check_request
from .request import PRECISIONS, RunPlan, RunRequest

__all__ = ["Planner", "PlannedRun", "RunPlan", "RunRequest", "plan_run"]

#: the modules that execute a run: their code (and everything they import) is part of every run's fingerprint
EXECUTOR = ("ueobench.runs.runner",)


@dataclass
class PlannedRun:
    """A plan with what executing it needs (loaded once while planning; none of it is hashed)."""

    plan: RunPlan
    request: RunRequest
    method_cls: type
    options: Any
    protocol: Protocol
    shift_data: ShiftData
    spec: BackboneSpec
    code: dict[str, Any]  # the method's code fingerprint with each file's hash, for the record
    label: str
    options_changed: dict[str, Any]
    display_label: str = ""

    @property
    def run_id(self) -> str:
        return self.plan.run_id


class Planner:
    """Turns requests into plans, sharing the expensive parts (image lists, code fingerprints) between them."""

    def __init__(self, progress: Any = None):
        self.data = DataResolver(progress)
        self.methods = MethodResolver(EXECUTOR)
        self._backbones: dict[str, ResolvedBackbone] = {}

    def backbone(self, text: str) -> ResolvedBackbone:
        if text not in self._backbones:
            self._backbones[text] = resolve_backbone(text)
        return self._backbones[text]

    def plan(self, req: RunRequest) -> PlannedRun:
        """Resolve names, options and data (no model is loaded, no device is touched)."""
        method_cls = get_method(req.method)
        check_request(req.score, req.rule, method_cls.name, method_cls.extras)
        if req.precision not in PRECISIONS:
            raise UeobenchError(f"unknown precision '{req.precision}'; use one of {', '.join(PRECISIONS)}")
        proto = self.data.protocol(req.dataset, req.domain, req.data_root)
        proto.split(req.protocol)  # raises with suggestions
        method = self.methods.resolve(req.method, req.options, proto.name)
        backbone = self.backbone(req.backbone or proto.default_backbone)
        data = self.data.resolve(proto, req.domain, req.protocol, req.data_root)
        sd = data.shift
        plan = RunPlan(
            dataset=proto.name, shift=sd.split.shift, domain=sd.domain.domain, backbone=backbone.spec.name,
            activation=backbone.activation, weights=backbone.weights, method=method.cls.name, options=method.resolved,
            method_code=method.code["fingerprint"], seed=req.seed, precision=req.precision,
            eval_batch_size=req.eval_batch_size, score=canonical_score(req.score), rule=canonical_rule(req.rule),
            protocol_checksum=proto.checksum, data_checksum=data.checksum,
        )
        return PlannedRun(plan, req, method.cls, method.options, proto, sd, backbone.spec, method.code, method.label,
                          method.changed, method.display_label)


def plan_run(req: RunRequest, progress: Any = None) -> PlannedRun:
    return Planner(progress).plan(req)
