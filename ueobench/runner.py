"""One run: (method, dataset, shift, domain, backbone, seed) -> a stored record with metrics and predictions."""
from __future__ import annotations

import datetime as _dt
import hashlib
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from .backbones import load_backbone, parse_spec
from .env import environment, peak_memory_mb
from .features import FeatureStore, feature_cache_dir
from .errors import UeobenchError
from .method import AdaptContext, build_options, get_method, options_dict
from .metrics import METRICS, evaluate
from .progress import NullProgress, make_progress
from .protocols import Protocol, list_datasets, load_protocol
from .records import (SCHEMA_VERSION, check_writable, config_hash, failed_dir, find_record, record_failure, run_name,
                      runs_dir, write_run)
from .registry import suggest
from .precision import autocast_dtype, configure_device, default_workers, resolve_precision
from .scores import DEFAULT_RULE, SCORES, accept_known, compute_score

DEFAULT_DATASET = "shapes"


@dataclass
class RunRequest:
    """Everything ``ueobench run`` accepts. ``options`` are the method's ``--set key=value`` overrides."""

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


@dataclass
class RunResult:
    record: dict[str, Any]
    path: Path
    skipped: bool  # True when an identical finished run was found and reused


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UeobenchError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UeobenchError("device 'cuda' asked for but no CUDA GPU is visible; use --device cpu")
    return dev


def resolve_dataset(domain: str, dataset: str | None, data_root: str | None) -> Protocol:
    """Pick the dataset: the one named, else the only configured dataset that has this domain."""
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
        return configured[0]
    if len(configured) > 1:
        names = ", ".join(p.name for p in configured)
        raise UeobenchError(f"domain '{domain}' is in several configured datasets ({names}); pick one with --dataset")
    names = ", ".join(p.name for p in having)
    raise UeobenchError(f"domain '{domain}' belongs to {names}, whose data is not configured; pass --data-root or --dataset")


def freeze_all_but(model: torch.nn.Module, groups: dict[str, list[torch.nn.Parameter]]) -> None:
    """Only the parameters a method declares may receive gradients."""
    model.requires_grad_(False)
    for params in groups.values():
        for p in params:
            p.requires_grad_(True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def data_checksum(domain: data_mod.DomainData, root: Path | None) -> str:
    """Content address of the image lists (paths relative to the dataset root, and labels)."""
    h = hashlib.sha256()
    for role, entries in (("adapt", domain.adapt), ("test", domain.test)):
        h.update(role.encode())
        for e in entries:
            ref = e.ref
            if isinstance(ref, str) and root is not None and ref.startswith(str(root)):
                ref = ref[len(str(root)) :]
            h.update(f"{ref}\t{e.label}\n".encode())
    return "sha256:" + h.hexdigest()


@torch.no_grad()
def predict_split(method, loader, progress, description: str) -> tuple[np.ndarray, np.ndarray]:
    task = progress.add_task(description, total=len(loader.dataset))
    logits, labels = [], []
    for images, y, _ in loader:
        out = method.predict(images)
        logits.append(out.detach().float().cpu())
        labels.append(y)
        progress.advance(task, len(y))
    progress.remove_task(task)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def prepare(req: RunRequest, progress=None) -> dict[str, Any]:
    """Resolve names, options and data into the run's identity (cheap: no model is loaded)."""
    progress = progress or NullProgress()
    method_cls = get_method(req.method)
    if req.score not in SCORES:
        SCORES.get(req.score)  # raises with a suggestion
    accept_known(np.zeros((1, 2)), 1.0, req.rule)  # validates the rule name
    proto = resolve_dataset(req.domain, req.dataset, req.data_root)
    options = build_options(method_cls, req.options, proto.name)
    split = proto.split(req.protocol)
    dom = proto.domain(req.domain)
    backbone = req.backbone or proto.default_backbone
    spec = parse_spec(backbone)
    domain_data = data_mod.load_domain(proto, dom.name, req.data_root, progress)
    shift_data = data_mod.apply_shift(proto, req.protocol, domain_data)
    root = None if domain_data.source == "hf" else data_mod.dataset_root(proto, req.data_root)
    precision = resolve_precision(req.precision, resolve_device(req.device))
    identity = {
        "method": method_cls.name,
        "options": options_dict(options),
        "dataset": proto.name,
        "shift": split.shift,
        "domain": dom.name,
        "backbone": spec.name,
        "seed": req.seed,
        "eval_batch_size": req.eval_batch_size,
        "precision": precision,
        "protocol_checksum": proto.checksum,
        "data_checksum": data_checksum(domain_data, root),
    }
    return {
        "identity": identity,
        "name": run_name(identity),
        "method_cls": method_cls,
        "options": options,
        "protocol": proto,
        "shift_data": shift_data,
        "spec": spec,
    }


def run(req: RunRequest, progress=None) -> RunResult:
    """Run one configuration, or return the finished record of an identical one (unless ``force``)."""
    with make_progress(progress) as progress:
        return _run(req, progress)


@dataclass
class Session:
    """A run between setup and recording: the loaded backbone, the method after ``setup``, its context."""

    plan: dict[str, Any]
    device: torch.device
    backbone: Any
    method: Any
    context: AdaptContext
    evaluate_splits: Any  # () -> (metrics per split, prediction arrays)
    groups: dict[str, list[torch.nn.Parameter]]
    features: Any  # the FeatureStore: counts images encoded and reused
    settings: dict[str, Any]  # device and loader settings, for the record


def start(req: RunRequest, plan: dict[str, Any] | None = None, progress=None) -> Session:
    """Seed, load the backbone, build the method and its context, call ``setup`` and freeze the rest."""
    progress = progress or NullProgress()
    plan = plan or prepare(req, progress)
    device = resolve_device(req.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seed_everything(req.seed)
    proto: Protocol = plan["protocol"]
    sd: data_mod.ShiftData = plan["shift_data"]
    backbone = load_backbone(plan["spec"], device)
    device_settings = configure_device(device, backbone.model)
    workers = req.workers if req.workers is not None else default_workers(device)
    pin = device.type == "cuda"

    def loader(items, transform, batch_size, shuffle=False, **kw):
        return data_mod.make_loader(items, sd.domain.opener, transform, batch_size, shuffle, workers, req.seed, pin, **kw)

    def make_adapt_loader(transform=None, batch_size: int = 64, shuffle: bool = True, indices=None, drop_last=False):
        return loader(sd.adapt, transform or backbone.preprocess, batch_size, shuffle, hide_labels=True,
                      indices=indices, drop_last=drop_last)

    method = plan["method_cls"](plan["options"])
    store = FeatureStore(backbone, sd.domain.opener, backbone.preprocess, req.eval_batch_size, device,
                         sd.domain.location, feature_cache_dir() if req.cache else None,
                         None if isinstance(progress, NullProgress) else progress)

    def split_features(split_name: str) -> np.ndarray:
        if split_name == "test":
            return store.features([e.ref for e in sd.domain.test])
        return store.features([e.ref for e in sd.domain.adapt])[sd.adapt_index]

    def split_logits(split_name: str, items) -> tuple[np.ndarray, np.ndarray]:
        if method.uses_frozen_features():  # shared cached features instead of a pass over the images
            feats = torch.from_numpy(split_features(split_name)).to(device)
            with torch.no_grad():
                cos = torch.cat([method.predict_features(feats[i : i + req.eval_batch_size]).float().cpu()
                                 for i in range(0, len(feats), req.eval_batch_size)]).numpy()
            labels = np.array([y for _, y in items], dtype=np.int64)
        else:
            cos, labels = predict_split(method, loader(items, backbone.preprocess, req.eval_batch_size), progress,
                                        f"{method.name} on {split_name}")
        if not np.isfinite(cos).all():
            raise UeobenchError(f"{method.name} on {split_name}: the method produced NaN or inf logits; the run is not recorded")
        return cos, labels

    def evaluate_splits() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        metrics, arrays = {}, {"logit_scale": np.array(backbone.logit_scale)}
        for split_name, items in (("test", sd.test), ("target", sd.adapt)):
            cos, labels = split_logits(split_name, items)
            metrics[split_name] = evaluate(cos, labels, sd.split.num_known, logit_scale=backbone.logit_scale,
                                           rule=req.rule, score=req.score)
            arrays[f"{split_name}_logits"] = cos.astype(np.float32)
            arrays[f"{split_name}_labels"] = labels.astype(np.int64)
            arrays[f"{split_name}_scores"] = compute_score(req.score, cos, backbone.logit_scale).astype(np.float32)
        return metrics, arrays

    def evaluate_now() -> dict[str, Any]:
        return {split: {k: m[k] for k in METRICS} for split, m in evaluate_splits()[0].items()}

    def target_labels() -> np.ndarray:
        if not method.is_oracle():
            raise UeobenchError(f"method '{method.name}' read target labels without declaring itself an oracle")
        return np.array([y for _, y in sd.adapt])

    ctx = AdaptContext(
        dataset=proto.name, shift=sd.split.shift, domain=sd.domain.domain, prompt=proto.prompt, device=device,
        seed=req.seed, make_loader=make_adapt_loader, num_adapt=len(sd.adapt), eval_transform=backbone.preprocess,
        evaluate=evaluate_now, target_labels=target_labels,
        image_features=lambda: torch.from_numpy(split_features("target")).to(device),
        amp_dtype=autocast_dtype(plan["identity"]["precision"]),
        progress=None if isinstance(progress, NullProgress) else progress,
    )
    method.setup(backbone, sd.known_names, ctx)
    groups = method.trainable_parameters()
    freeze_all_but(backbone.model, groups)
    settings = {**device_settings, "precision": plan["identity"]["precision"], "loader_workers": workers,
                "pin_memory": pin, "trainable_dtype": "fp32"}
    return Session(plan, device, backbone, method, ctx, evaluate_splits, groups, store, settings)


def _run(req: RunRequest, progress) -> RunResult:
    t0 = time.perf_counter()
    plan = prepare(req, progress)
    name = plan["name"]
    if not req.force:
        existing = find_record(req.results, name)
        if existing is not None:
            return RunResult(existing, runs_dir(req.results) / name, skipped=True)
    check_writable(req.results)
    try:
        return _execute(req, plan, progress, t0)
    except BaseException as e:
        if isinstance(e, Exception):  # KeyboardInterrupt and kills leave the run simply not done
            record_failure(req.results, name, e, {k: v for k, v in asdict(req).items()})
        raise


def _execute(req: RunRequest, plan: dict[str, Any], progress, t0: float) -> RunResult:
    identity, name = plan["identity"], plan["name"]
    t_setup = time.perf_counter()
    session = start(req, plan, progress)
    method, backbone, ctx, groups, device = session.method, session.backbone, session.context, session.groups, session.device
    proto: Protocol = plan["protocol"]
    sd: data_mod.ShiftData = plan["shift_data"]
    n_trainable = sum(p.numel() for ps in groups.values() for p in ps)
    t_adapt = time.perf_counter()
    method.adapt(ctx)
    t_eval = time.perf_counter()
    metrics, preds = session.evaluate_splits()
    t_end = time.perf_counter()
    s = sd.split
    record = {
        "schema": SCHEMA_VERSION,
        "run_id": name,
        "config_hash": config_hash(identity),
        "status": "done",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": identity,
        "request": {k: v for k, v in asdict(req).items() if k not in ("force", "options", "cache", "workers")},
        "method": {
            "name": method.name,
            "options": options_dict(method.options),
            "uses_target_labels": method.is_oracle(),
            "oracle": method.is_oracle(),
            "adaptation": method.adaptation,
            "selection": "last epoch (no label-based selection)",
            "info": method.info(),
        },
        "history": getattr(method, "history", []),
        "protocol": {
            "dataset": proto.name,
            "shift": s.shift,
            "file": Path(proto.path).name,
            "checksum": proto.checksum,
            "prompt": getattr(method, "template", proto.prompt),
            "num_classes": s.num_classes,
            "num_known": s.num_known,
            "known": sd.known_names,
            "unknown": [proto.classes[i] for i in s.unknown],
            "absent": [proto.classes[i] for i in s.absent],
        },
        "data": {
            "source": sd.domain.source,
            "location": sd.domain.location,
            "checksum": identity["data_checksum"],
            "n_adapt": len(sd.adapt),
            "n_test": len(sd.test),
            "skipped": sd.domain.skipped,
        },
        "backbone": backbone.info,
        "evaluation": {"score": req.score, "score_temperature": SCORES.get(req.score).temperature,
                       "hscore_rule": req.rule, "logit_scale": backbone.logit_scale,
                       "splits": {"test": "held-out test split (all classes)", "target": "the unlabeled adaptation data"}},
        "seed": req.seed,
        "metrics": metrics,
        "trainable_parameters": n_trainable,
        "feature_cache": {"enabled": req.cache, **session.features.stats},
        "settings": session.settings,
        "trainable_groups": {k: sum(p.numel() for p in v) for k, v in groups.items()},
        "timings": {"prepare_s": t_setup - t0, "setup_s": t_adapt - t_setup, "adapt_s": t_eval - t_adapt,
                    "eval_s": t_end - t_eval, "total_s": t_end - t0},
        "peak_memory": peak_memory_mb(device),
        "environment": environment(device),
    }
    path = write_run(req.results, name, record, preds, force=req.force)
    (failed_dir(req.results) / f"{name}.json").unlink(missing_ok=True)
    return RunResult(record, path, skipped=False)
