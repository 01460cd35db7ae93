"""Each method family's run against its floor: the pure model compute of the same steps, measured in this process.

A family's run is a real ``ueobench.api.run`` at a small fixed budget on ``shapes65`` (fresh store, no feature
cache). Its optimiser steps are counted while it runs; the floor is that many steps of the family's model compute
on random tensors of the run's shapes (the towers the family runs with and without gradients, its batch, its
context length), plus one visual pass over every image the run evaluates. The ratio is the run's adaptation and
evaluation time (its record's ``timings``, so not planning, imports and set-up, which a small budget would
inflate) over the floor: the harness's overhead of decoding, augmenting, loading, evaluating and bookkeeping.
One thread, as a sweep worker runs; on a machine with other work the run suffers more than the floor's best of
three, so compare ratios measured on an idle machine.

    pytest benchmarks/test_floors.py --benchmark-enable -s
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from conftest import best_time

BACKBONE = "tiny-shapes65:builtin"


@dataclass(frozen=True)
class Family:
    method: str
    options: dict[str, str]
    visual: str  # the visual tower in a step: "none" (frozen, no grad), "norm" (LayerNorm affines) or "all"
    text: str  # the text tower in a step: "fixed" (features computed once), "prompt" (a learnt context)
    batch: int  # images per step (TPT: views per image)
    n_ctx: int = 4
    text_passes: int = 1  # text forwards per step (TPT: the tuning pass and the prediction pass)
    extra: dict[str, str] = field(default_factory=dict)  # run keywords (source domain of the labeled track)
    guard: float = 6.0  # the largest run / floor ratio accepted: a regression guard, not the goal (1.2x)


FAMILIES = {
    "prompt+norm (ueo)": Family("ueo", {"epochs": "2", "eval_every": "0"}, "norm", "prompt", 64),
    "tent": Family("tent", {}, "norm", "fixed", 64),
    "pouf": Family("pouf", {"epochs": "1", "iters_per_epoch": "20"}, "none", "prompt", 96),
    "upl": Family("upl", {"ensemble": "1", "epochs": "2"}, "none", "prompt", 32, n_ctx=16),
    "tpt": Family("tpt", {"views": "64"}, "none", "prompt", 64, text_passes=2, guard=8.0),
    "training-free (tda)": Family("tda", {}, "none", "fixed", 0, guard=12.0),  # its per-image cache is not model compute
    "labeled source (ft)": Family("ft", {"epochs": "1"}, "all", "fixed", 512, extra={"source": "product"}),
}


class _StepCounter:
    """Counts ``Optimizer.step`` calls during a run (every family takes one per batch, TPT one per image)."""

    def __enter__(self):
        self.n = 0
        self._hook = register_optimizer_step_post_hook(self._count)
        return self

    def _count(self, *_):
        self.n += 1

    def __exit__(self, *exc):
        self._hook.remove()


def _floor_step(backbone, names: list[str], fam: Family, batch: int):
    """One step of the family's model compute on random inputs of the run's shapes."""
    from ueobench.adapt.prompt_learner import PromptLearner

    model = backbone.model
    model.requires_grad_(False)
    params = []
    if fam.visual == "norm":
        params = [p for n, p in model.visual.named_parameters() if "ln" in n or "norm" in n]
    elif fam.visual == "all":
        params = list(model.visual.parameters())
    for p in params:
        p.requires_grad_(True)
    learner = PromptLearner(backbone, names, fam.n_ctx, "a photo of a" if fam.n_ctx == 4 else None)
    if fam.text == "prompt":
        params.append(learner.ctx)
    else:
        with torch.no_grad():
            fixed = torch.nn.functional.normalize(learner(), dim=-1)
    opt = torch.optim.SGD(params, lr=1e-6)
    x = torch.randn(batch, 3, backbone.image_size, backbone.image_size)

    def step():
        with torch.set_grad_enabled(fam.visual != "none"):
            feats = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        text = learner() if fam.text == "prompt" else fixed
        p = (100 * feats @ text.T).softmax(1)
        loss = -(p * p.clamp_min(1e-12).log()).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for _ in range(fam.text_passes - 1):
            with torch.no_grad():
                learner()

    return step


def _eval_floor(backbone, n_images: int) -> float:
    x = torch.randn(256, 3, backbone.image_size, backbone.image_size)

    def one():
        with torch.no_grad():
            backbone.model.encode_image(x)

    return best_time(one, repeats=2) * n_images / 256


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_family_run_against_its_floor(benchmark, tmp_path, family):
    from ueobench.api import run
    from ueobench.data.protocols import load_protocol
    from ueobench.models.backbones import load_backbone

    torch.set_num_threads(1)
    fam = FAMILIES[family]
    t = time.perf_counter()
    with _StepCounter() as steps:
        res = run(method=fam.method, dataset="shapes65", protocol="opda", domain="sketch", backbone=BACKBONE,
                  options=fam.options, results=str(tmp_path / "r"), cache=False, **fam.extra)
    wall = time.perf_counter() - t
    proto = load_protocol("shapes65")
    names = [proto.classes[i] for i in proto.split("opda").known]
    backbone = load_backbone(BACKBONE)
    path = res.path if res.path.is_file() else res.path / "record.json"
    data = json.loads(path.read_text())["data"]
    n_eval = int(data["n_adapt"]) + int(data["n_test"])
    if fam.method == "tpt":  # every image's 64 views are its one step; no separate evaluation pass
        step_s = best_time(_floor_step(backbone, names, fam, fam.batch), repeats=3)
        floor = steps.n * step_s
    else:
        floor = _eval_floor(backbone, n_eval)
        if steps.n:
            batch = min(fam.batch, int(data["n_adapt"]))
            floor += steps.n * best_time(_floor_step(backbone, names, fam, batch), repeats=3)
    timings = json.loads(path.read_text())["timings"]
    work = timings["adapt_s"] + timings["eval_s"]  # the run's own clock: without planning and set-up
    ratio = work / floor
    benchmark.extra_info.update({"family": family, "steps": steps.n, "run_wall_s": wall, "adapt_eval_s": work,
                                 "setup_s": timings["setup_s"], "floor_s": floor, "ratio_to_floor": ratio})
    print(f"\n{family}: {steps.n} steps, adapt + evaluation {work:.2f} s (whole call {wall:.2f} s), "
          f"floor {floor:.2f} s, ratio {ratio:.2f}x")
    assert ratio <= fam.guard, f"{family}: the run costs {ratio:.2f}x its model compute (guard {fam.guard}x)"
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
