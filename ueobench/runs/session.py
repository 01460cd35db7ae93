"""Executing a plan on this machine: device, seeds, backbone, the method's setup, adaptation.

Everything resolved here (device, autocast dtype, TF32, loader workers) belongs to the machine and goes into
the record's ``settings``; none of it changes the run's id.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.errors import UeobenchError
from ..core.progress import NullProgress
from ..data.dataset import ShiftData
from ..data.decoded import budget_bytes, cached_opener
from ..data.loader import make_loader
from ..data.streams import parse_stream, stream_order
from ..method.base import AdaptContext
from ..models.backbones import load_backbone
from .evaluation import EvalSplit, Evaluator
from .features import FeatureStore, feature_cache_dir
from .plan import PlannedRun
from .precision import (
    autocast_dtype,
    configure_device,
    default_workers,
    resolve_precision,
)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UeobenchError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise UeobenchError(f"device '{device}' is not supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UeobenchError("device 'cuda' asked for but no CUDA GPU is visible; use --device cpu")
    return dev


def freeze_all_but(model: torch.nn.Module, groups: dict[str, list[torch.nn.Parameter]]) -> None:
    """Only the parameters a method declares may receive gradients."""
    model.requires_grad_(False)
    for params in groups.values():
        for p in params:
            p.requires_grad_(True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@dataclass
class Session:
    """A run between setup and recording: the loaded backbone, the method after ``setup``, its context."""

    planned: PlannedRun
    device: torch.device
    backbone: Any
    method: Any
    context: AdaptContext
    evaluator: Evaluator
    groups: dict[str, list[torch.nn.Parameter]]
    features: Any  # the FeatureStore: counts images encoded and reused
    settings: dict[str, Any]  # what this machine resolved, for the record

    def evaluate_splits(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return self.evaluator.evaluate_splits()


def start(planned: PlannedRun, progress: Any = None) -> Session:
    """Seed, load the backbone, build the method and its context, call ``setup``, freeze the rest, snapshot."""
    progress = progress or NullProgress()
    req = planned.request
    device = resolve_device(req.device)
    precision = resolve_precision(planned.plan.precision, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seed_everything(planned.plan.seed)
    sd: ShiftData = planned.shift_data
    backbone = load_backbone(planned.spec, device)
    device_settings = configure_device(device, backbone.model)
    workers = req.loader_workers if req.loader_workers is not None else default_workers(device)
    pin = device.type == "cuda"
    seed = planned.plan.seed

    opener = cached_opener(sd.domain.opener, sd.domain.content, workers)  # each image decoded once (exact)

    def loader(items, transform, batch_size, shuffle=False, **kw):
        return make_loader(items, opener, transform, batch_size, shuffle, workers, seed, pin, **kw)

    def make_adapt_loader(transform=None, batch_size: int = 64, shuffle: bool = True, indices=None, drop_last=False):
        return loader(sd.adapt, transform or backbone.preprocess, batch_size, shuffle, hide_labels=True,
                      indices=indices, drop_last=drop_last)

    method = planned.method_cls(planned.options)
    show = None if isinstance(progress, NullProgress) else progress
    cache = feature_cache_dir() if req.cache else None
    store = FeatureStore(backbone, opener, backbone.preprocess, planned.plan.eval_batch_size, device,
                         sd.domain.content, cache, show)
    src = planned.source_data
    labeled = planned.method_cls.track == "labeled-source"

    def target_labels() -> np.ndarray:
        if not method.is_oracle():
            raise UeobenchError(f"method '{method.name}' read target labels without declaring itself an oracle")
        return np.array([y for _, y in sd.adapt])

    def no_target(*args: Any, **kwargs: Any) -> Any:
        raise UeobenchError(f"method '{method.name}' is a labeled-source method: it trains on the labeled source "
                            f"(context.source_loader) and never reads target images")

    def make_stream_order() -> list[int]:
        """The positions of the adaptation data in stream order: a seeded randperm (i.i.d.), or the label-shift
        stream the request names, built by the harness from labels the method never sees."""
        stream = parse_stream(planned.plan.stream)
        if stream is None:
            return torch.randperm(len(sd.adapt), generator=torch.Generator().manual_seed(seed)).tolist()
        return stream_order([y for _, y in sd.adapt], stream, seed)

    holder: dict[str, Evaluator] = {}
    ctx = AdaptContext(
        dataset=planned.protocol.name, shift=sd.split.shift, domain=sd.domain.domain, prompt=planned.protocol.prompt,
        device=device, seed=seed, make_loader=no_target if labeled else make_adapt_loader, num_adapt=len(sd.adapt),
        eval_transform=backbone.preprocess, evaluate=None if labeled else lambda: holder["e"].metrics_now(),
        target_labels=no_target if labeled else target_labels,
        image_features=no_target if labeled else (
            lambda: torch.from_numpy(holder["e"].split_features("target")).to(device)),
        amp_dtype=autocast_dtype(precision), progress=show,
        stream=planned.plan.stream, stream_order=None if labeled else make_stream_order,
    )
    splits = {
        "test": EvalSplit(sd.test, _cached(store, [e.ref for e in sd.domain.test], sd.test_index), loader),
        "target": EvalSplit(sd.adapt, _cached(store, [e.ref for e in sd.domain.adapt], sd.adapt_index), loader),
    }
    if src is not None:
        src_opener = opener if src.domain is sd.domain else cached_opener(src.domain.opener, src.domain.content,
                                                                          workers)
        src_store = store if src.domain is sd.domain else FeatureStore(
            backbone, src_opener, backbone.preprocess, planned.plan.eval_batch_size, device,
            src.domain.content, cache, show)

        def src_loader(items, transform, batch_size, shuffle=False, **kw):
            return make_loader(items, src_opener, transform, batch_size, shuffle, workers, seed, pin, **kw)

        parts = {"train": src.train, "val": src.val}

        def source_items(split: str) -> list:
            if split not in parts:
                raise UeobenchError(f"unknown source split '{split}'; use train or val")
            return parts[split]

        def source_loader(split: str = "train", transform=None, batch_size: int = 32, shuffle: bool = True,
                          drop_last: bool = False, indices=None):
            return src_loader(source_items(split), transform or backbone.preprocess, batch_size, shuffle,
                              indices=indices, drop_last=drop_last)

        if labeled:
            ctx.source_loader = source_loader
            ctx.source_features = lambda split, kind="global": torch.from_numpy(
                src_store.features([r for r, _ in source_items(split)], kind)).to(device)
            ctx.source_labels = lambda split: np.array([y for _, y in source_items(split)], dtype=np.int64)
            ctx.num_source = {k: len(v) for k, v in parts.items()}
        if labeled and src.val:
            splits["source_val"] = EvalSplit(src.val, _cached(src_store, [r for r, _ in src.val], None), src_loader)
    method.setup(backbone, sd.known_names, ctx)
    groups = method.trainable_parameters()
    freeze_all_but(backbone.model, groups)
    method.snapshot()
    evaluator = Evaluator(method, backbone, splits, sd.split.num_known, planned.plan.eval_batch_size, device,
                          planned.plan.score, planned.plan.rule, progress)
    holder["e"] = evaluator
    settings = {**device_settings, "precision_requested": planned.plan.precision, "precision": precision,
                "loader_workers": workers, "pin_memory": pin, "trainable_dtype": "fp32",
                "decode_cache_bytes": budget_bytes(workers)}
    return Session(planned, device, backbone, method, ctx, evaluator, groups, store, settings)


def _cached(store: FeatureStore, refs: list, index: list[int] | None):
    """A split's cached features (``kind -> array`` in the split's item order) from all of a list's images."""
    def features(kind: str = "global") -> np.ndarray:
        f = store.features(refs, kind)
        return f if index is None else f[index]
    return features
