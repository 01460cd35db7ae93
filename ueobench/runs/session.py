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
from ..data.loader import make_loader
from ..method.base import AdaptContext
from ..models.backbones import load_backbone
from .evaluation import Evaluator
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

    def loader(items, transform, batch_size, shuffle=False, **kw):
        return make_loader(items, sd.domain.opener, transform, batch_size, shuffle, workers, seed, pin, **kw)

    def make_adapt_loader(transform=None, batch_size: int = 64, shuffle: bool = True, indices=None, drop_last=False):
        return loader(sd.adapt, transform or backbone.preprocess, batch_size, shuffle, hide_labels=True,
                      indices=indices, drop_last=drop_last)

    method = planned.method_cls(planned.options)
    store = FeatureStore(backbone, sd.domain.opener, backbone.preprocess, planned.plan.eval_batch_size, device,
                         sd.domain.content, feature_cache_dir() if req.cache else None,
                         None if isinstance(progress, NullProgress) else progress)

    def target_labels() -> np.ndarray:
        if not method.is_oracle():
            raise UeobenchError(f"method '{method.name}' read target labels without declaring itself an oracle")
        return np.array([y for _, y in sd.adapt])

    holder: dict[str, Evaluator] = {}
    ctx = AdaptContext(
        dataset=planned.protocol.name, shift=sd.split.shift, domain=sd.domain.domain, prompt=planned.protocol.prompt,
        device=device, seed=seed, make_loader=make_adapt_loader, num_adapt=len(sd.adapt),
        eval_transform=backbone.preprocess, evaluate=lambda: holder["e"].metrics_now(), target_labels=target_labels,
        image_features=lambda: torch.from_numpy(holder["e"].split_features("target")).to(device),
        amp_dtype=autocast_dtype(precision), progress=None if isinstance(progress, NullProgress) else progress,
    )
    method.setup(backbone, sd.known_names, ctx)
    groups = method.trainable_parameters()
    freeze_all_but(backbone.model, groups)
    method.snapshot()
    evaluator = Evaluator(method, backbone, sd, store, loader, planned.plan.eval_batch_size, device,
                          planned.plan.score, planned.plan.rule, progress)
    holder["e"] = evaluator
    settings = {**device_settings, "precision_requested": planned.plan.precision, "precision": precision,
                "loader_workers": workers, "pin_memory": pin, "trainable_dtype": "fp32"}
    return Session(planned, device, backbone, method, ctx, evaluator, groups, store, settings)
