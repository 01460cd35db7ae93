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
from ..data.dataset import DataResolver, ShiftData, without_images
from ..data.protocols import Protocol
from ..data.source_split import SOURCE_VAL_RULE, SourceData
from ..data.streams import parse_stream
from ..method.registry import MethodResolver, get_method
from ..models.backbones import BackboneSpec, ResolvedBackbone, resolve_backbone
from ..scoring.scores import canonical_rule, canonical_score, check_request, rule_needs_source
from .request import PRECISIONS, ArtifactPlan, RunPlan, RunRequest

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
    source_data: SourceData | None = None  # labeled-source track: the source's train/val images
    artifact: ArtifactPlan | None = None  # what training computes (labeled-source methods), shared across targets

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
        check_track(method_cls, req)
        stream = parse_stream(req.stream)
        if stream is not None and not method_cls.streams:
            raise UeobenchError(f"method '{method_cls.name}' does not read its adaptation data as a stream; "
                                f"--stream applies to the online and batched methods "
                                f"({', '.join(streaming_methods())})")
        check_request(req.score, req.rule, method_cls.name, method_cls.extras)
        if req.precision not in PRECISIONS:
            raise UeobenchError(f"unknown precision '{req.precision}'; use one of {', '.join(PRECISIONS)}")
        proto = self.data.protocol(req.dataset, req.domain, req.data_root)
        proto.split(req.protocol)  # raises with suggestions
        method = self.methods.resolve(req.method, req.options, proto.name)
        backbone = self.backbone(req.backbone or proto.default_backbone)
        data = self.data.resolve(proto, req.domain, req.protocol, req.data_root)
        sd = data.shift
        source = None
        if req.source is not None:
            source = self.data.resolve_source(proto, req.source, req.protocol, req.data_root, req.seed, req.shots)
            if source.domain.domain == sd.domain.domain:
                sd = without_images(sd, source.train_refs)
        artifact = None
        if method_cls.track == "labeled-source":
            assert source is not None
            trainer = self._trainer(method, req, proto.name)
            artifact = ArtifactPlan(
                dataset=proto.name, source=source.domain.domain, source_checksum=source.checksum,
                known=tuple(sd.known_names), shots=req.shots, source_val=SOURCE_VAL_RULE, backbone=backbone.spec.name,
                activation=backbone.activation, weights=backbone.weights, method=trainer.cls.name,
                options=trainer.resolved, method_code=trainer.code["fingerprint"], seed=req.seed,
                precision=req.precision, eval_batch_size=req.eval_batch_size, protocol_checksum=proto.checksum)
        plan = RunPlan(
            dataset=proto.name, shift=sd.split.shift, domain=sd.domain.domain, backbone=backbone.spec.name,
            activation=backbone.activation, weights=backbone.weights, method=method.cls.name, options=method.resolved,
            method_code=method.code["fingerprint"], seed=req.seed, precision=req.precision,
            eval_batch_size=req.eval_batch_size, score=canonical_score(req.score), rule=canonical_rule(req.rule),
            protocol_checksum=proto.checksum, data_checksum=data.checksum,
            source=None if source is None else source.domain.domain,
            source_checksum=None if source is None else source.checksum, shots=req.shots,
            artifact=None if artifact is None else artifact.artifact_id,
            stream=None if stream is None else stream.name,
        )
        return PlannedRun(plan, req, method.cls, method.options, proto, sd, backbone.spec, method.code, method.label,
                          method.changed, method.display_label, source, artifact)


    def _trainer(self, method: Any, req: RunRequest, dataset: str) -> Any:
        """The method (and options) whose training produces this method's model: itself without its
        ``eval_options``, or the method it ``trains_as`` (so that WiSE-FT at any alpha shares fine-tuning's)."""
        cls = method.cls
        keep = {k: v for k, v in req.options.items() if k not in cls.eval_options}
        if cls.trains_as is None:
            if not cls.eval_options:
                return method
            return self.methods.resolve(cls.name, keep, dataset)
        base = get_method(cls.trains_as)
        if base.track != "labeled-source" or base.eval_options or base.trains_as:
            raise UeobenchError(f"method '{cls.name}' trains as '{cls.trains_as}', which is not a plain "
                                f"labeled-source method")
        same = ("setup", "trainable_parameters", "adapt", "artifact_state", "artifact_meta", "selection")
        differ = [h for h in same if getattr(cls, h) is not getattr(base, h)]
        if not issubclass(cls, base) or differ:  # else the shared model would depend on who trained it first
            raise UeobenchError(f"method '{cls.name}' trains as '{cls.trains_as}' but is not a subclass that "
                                f"trains as it does (it overrides {', '.join(differ) or 'the class'})")
        return self.methods.resolve(cls.trains_as, keep, dataset)


def check_track(method_cls: type, req: RunRequest) -> None:
    """Refuse a request that mixes the tracks: a labeled-source method without ``--source``, an adapting
    unlabeled-target method with one, ``--shots`` without a source, a source_val rule without source_val."""
    name, track = method_cls.name, method_cls.track
    if track == "labeled-source" and req.source is None:
        raise UeobenchError(f"method '{name}' trains on labeled source images: pass --source DOMAIN (the domain "
                            f"to train on; the same as --domain for in-distribution numbers)")
    if req.source is not None and track != "labeled-source" and method_cls.adaptation != "none":
        raise UeobenchError(f"method '{name}' adapts on unlabeled target data and reads no labeled source; drop "
                            f"--source (ueobench list methods shows the labeled-source methods)")
    if req.shots is not None and req.source is None:
        raise UeobenchError("--shots subsamples the labeled source: use it with --source")
    if req.shots is not None and track != "labeled-source":
        raise UeobenchError(f"method '{name}' reads no labeled source; drop --shots")
    if rule_needs_source(req.rule) and track != "labeled-source":
        raise UeobenchError(f"rule '{req.rule}' fits its threshold on source_val, which only labeled-source runs "
                            f"have; use nent:0.5 or kmeans2")


def streaming_methods() -> list[str]:
    from ..method.registry import list_methods

    return [m for m in list_methods() if get_method(m).streams]


def plan_run(req: RunRequest, progress: Any = None) -> PlannedRun:
    return Planner(progress).plan(req)
