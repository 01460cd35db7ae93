"""The one training loop every adapting method uses: parameter groups, per-iteration schedule, evaluation.

A method supplies a ``TrainSpec`` (groups with learning rates, optimiser, schedule, epochs, batch size,
augmentation) and a loss function of one batch; ``fit`` does the rest. Trainable parameters stay fp32; on CUDA
the forward runs under autocast.

A schedule is a function ``(step, total_steps) -> multiplier of every group's base lr``, stepped every
iteration (``schedule_unit="iteration"``, as UEO's per-iteration cosine) or once per epoch (``"epoch"``, as
Dassl's schedulers in UPL). Methods with a schedule of their own pass it (POUF, UPL); the trainer knows only the
generic ones below.

Labeled-source methods train with ``data="source"``: batches come from ``context.source_loader`` and the loss
receives ``(images, labels)``. ``select`` (a function of the current state that reads source_val only) is called
after every epoch; the trainer keeps the trainable parameters of the first epoch with the highest value and
restores them at the end (Dassl's ``best_val``), and the history says which epoch that was.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..core.errors import UeobenchError
from ..core.faults import failpoint

OPTIMIZERS = ("sgd", "adam", "adamw")
Schedule = Callable[[int, int], float]


def cosine(step: int, total: int) -> float:
    """Cosine annealing to 0 over ``total`` steps (CosineAnnealingLR with T_max = total)."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total))


def constant(step: int, total: int) -> float:
    return 1.0


SCHEDULES: dict[str, Schedule] = {"cosine": cosine, "constant": constant}


@dataclass
class TrainSpec:
    groups: dict[str, tuple[Sequence[torch.nn.Parameter], float]]  # name -> (params, learning rate)
    epochs: int
    batch_size: int
    transform: Any = None  # None: the eval transform (no augmentation)
    optimizer: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str | Schedule = "cosine"  # a name in SCHEDULES, or the method's own (step, total) -> factor
    schedule_unit: str = "iteration"  # "iteration" or "epoch": when the schedule steps
    iters_per_epoch: int | None = None  # None: one pass over the data; else cycle through it
    eval_every: int = 0  # 0: only the final evaluation (done by the evaluator)
    indices: Sequence[int] | None = None  # train on a subset of the adaptation data
    drop_last: bool = False
    #: optimiser steps on each batch before the next (online methods that adapt several times per batch)
    steps_per_batch: int = 1
    #: called with (images, indices) after a batch's steps (online methods that report outputs after adapting)
    on_batch_end: Callable[[torch.Tensor, torch.Tensor], None] | None = None
    #: "target" (unlabeled adaptation data; loss(images, indices)) or "source" (the labeled source_train of a
    #: labeled-source run; loss(images, labels))
    data: str = "target"
    eps: float = 1e-8  # Adam / AdamW epsilon
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = None  # clip the global gradient norm (after unscaling) to this value
    #: called after every optimiser step with (step, total steps): EMA teachers and the like
    after_step: Callable[[int, int], None] | None = None
    #: best-epoch selection: a score of the current state on source_val (higher is better), after every epoch
    select: Callable[[], float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def make_optimizer(spec: TrainSpec) -> torch.optim.Optimizer:
    groups = [{"params": list(p), "lr": lr, "name": n} for n, (p, lr) in spec.groups.items() if len(p)]
    if not groups:
        raise UeobenchError("nothing to train: every parameter group is empty")
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=spec.momentum, nesterov=spec.nesterov,
                               weight_decay=spec.weight_decay)
    if spec.optimizer == "adam":
        return torch.optim.Adam(groups, lr=groups[0]["lr"], betas=spec.betas, eps=spec.eps,
                                weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=groups[0]["lr"], betas=spec.betas, eps=spec.eps,
                                 weight_decay=spec.weight_decay)
    raise UeobenchError(f"unknown optimizer '{spec.optimizer}'; use one of {', '.join(OPTIMIZERS)}")


def schedule_of(spec: TrainSpec) -> Schedule:
    if callable(spec.schedule):
        return spec.schedule
    if spec.schedule not in SCHEDULES:
        raise UeobenchError(f"unknown schedule '{spec.schedule}'; use one of {', '.join(SCHEDULES)}")
    return SCHEDULES[spec.schedule]


def selected_epoch(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch ``fit`` kept under ``select``: ``{"epoch": e, "value": v}``, or None without selection."""
    return next((h["selected"] for h in history if "selected" in h), None)


def fit(spec: TrainSpec, context: Any, step_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        progress: Any = None, label: str = "adapt") -> list[dict[str, Any]]:
    """Train and return the history: one entry per epoch (mean loss, learning rates, optional metrics)."""
    device = context.device
    if spec.data == "source":
        if getattr(context, "source_loader", None) is None:
            raise UeobenchError(f"{label}: data='source' needs a labeled-source run (--source)")
        loader = context.source_loader("train", spec.transform, spec.batch_size, shuffle=True,
                                       drop_last=spec.drop_last, indices=spec.indices)
    elif spec.data == "target" and getattr(context, "stream", None):
        # a label-shift stream (--stream): every epoch reads the adaptation data in the stream's order
        if spec.indices is not None:
            raise UeobenchError(f"{label}: --stream orders the whole adaptation set; this method trains on a subset")
        loader = context.make_loader(spec.transform, spec.batch_size, shuffle=False, indices=context.stream_order(),
                                     drop_last=spec.drop_last)
    elif spec.data == "target":
        loader = context.make_loader(spec.transform, spec.batch_size, shuffle=True, indices=spec.indices,
                                     drop_last=spec.drop_last)
    else:
        raise UeobenchError(f"unknown training data '{spec.data}'; use target or source")
    per_epoch = spec.iters_per_epoch or len(loader)
    if per_epoch == 0:
        raise UeobenchError(f"no training batches: {len(loader.dataset)} images at batch size {spec.batch_size}")
    if spec.schedule_unit not in ("iteration", "epoch"):
        raise UeobenchError(f"unknown schedule unit '{spec.schedule_unit}'; use iteration or epoch")
    per_step = spec.schedule_unit == "iteration"
    if spec.steps_per_batch < 1:
        raise UeobenchError(f"steps_per_batch is {spec.steps_per_batch}; it must be at least 1")
    total = spec.epochs * per_epoch * spec.steps_per_batch
    opt = make_optimizer(spec)
    factor = schedule_of(spec)
    steps = total if per_step else spec.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: factor(step, steps))
    dtype = getattr(context, "amp_dtype", None)
    amp = dtype is not None
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    history: list[dict[str, Any]] = []
    progress = progress or getattr(context, "progress", None)
    task = progress.add_task(label, total=total) if progress is not None else None
    if spec.eval_every and context.evaluate is not None:
        history.append({"epoch": 0, "metrics": context.evaluate()})  # the starting point, from shared features
    it = 0
    step = 0
    params = [p for g in opt.param_groups for p in g["params"]]
    best: tuple[float, int, list[torch.Tensor]] | None = None
    batches = iter(loader)
    for epoch in range(1, spec.epochs + 1):
        losses = []
        lrs = {g["name"]: g["lr"] for g in opt.param_groups}
        for _ in range(per_epoch):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            if spec.data == "source":
                images, second = batch[0], batch[1].to(device, non_blocking=True)
            else:
                images, second = batch
            idx = second
            images = images.to(device, non_blocking=True)
            for _ in range(spec.steps_per_batch):
                with torch.autocast(device.type, dtype=dtype, enabled=amp):
                    loss = step_loss(images, second)
                if not torch.isfinite(loss):
                    raise UeobenchError(f"{label}: the loss is {loss.item()} at epoch {epoch}, iteration {it + 1}; "
                                        f"lower the learning rate (--set) or check the data; the run is not "
                                        f"recorded")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if spec.grad_clip is not None:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
                scaler.step(opt)
                scaler.update()
                if per_step:
                    sched.step()
                if spec.after_step is not None:
                    spec.after_step(step, total)
                step += 1
                losses.append(loss.item())
            if spec.on_batch_end is not None:
                spec.on_batch_end(images, idx)
            it += 1
            if it == 2:
                failpoint("training")
            if task is not None:
                progress.advance(task, spec.steps_per_batch, loss=losses[-1])
        if not per_step:
            sched.step()
        entry: dict[str, Any] = {"epoch": epoch, "loss": sum(losses) / len(losses), "lr": lrs}
        if spec.eval_every and epoch % spec.eval_every == 0 and epoch < spec.epochs and context.evaluate is not None:
            entry["metrics"] = context.evaluate()
        if spec.select is not None:
            value = float(spec.select())
            entry["source_val"] = value
            if best is None or value > best[0]:  # strict: the first epoch of the best value is kept
                best = (value, epoch, [p.detach().clone() for p in params])
        history.append(entry)
    if best is not None:
        with torch.no_grad():
            for p, v in zip(params, best[2]):
                p.copy_(v)
        history[best[1] - 1]["selected"] = {"epoch": best[1], "value": best[0], "on": "source_val"}
    if task is not None:
        progress.remove_task(task)
    return history
