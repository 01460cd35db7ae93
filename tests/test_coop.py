"""CoOp (labeled-source): a transcription of CRoFT's copy of CoOp + Dassl, compared with methods/coop.py.

The reference is LinLLLL/CRoFT ``CoOp/trainers/coop.py`` (PromptLearner, TextEncoder, CustomCLIP.forward,
CoOp.forward_backward), ``CoOp/dassl/optim/{optimizer,lr_scheduler}.py`` (SGD, ConstantWarmupScheduler around
CosineAnnealingLR) and ``CoOp/dassl/engine/trainer.py`` (``after_epoch``: val top-1, strict ``>``, best model
reloaded in ``after_train``), run on the tiny random backbone with random image tensors.
"""
from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from ueobench.method.options import build_options
from ueobench.method.registry import get_method
from ueobench.models import encode_images, load_backbone
from ueobench.store.records import load_predictions

CLASSES = ["circle", "alarm_clock", "tri angle"]


# ----------------------------------------------------------------------------------- the transcription (reference)
class RefPromptLearner:
    """CoOp's PromptLearner, CSC False, class token 'end', random init (coop.py:59-150)."""

    def __init__(self, model, tokenizer, classnames, ctx):
        n_ctx = ctx.shape[0]
        prompt_prefix = " ".join(["X"] * n_ctx)
        classnames = [name.replace("_", " ") for name in classnames]
        prompts = [prompt_prefix + " " + name + "." for name in classnames]
        self.tokenized_prompts = tokenizer(prompts)
        with torch.no_grad():
            embedding = model.token_embedding(self.tokenized_prompts)
        self.token_prefix = embedding[:, :1, :]
        self.token_suffix = embedding[:, 1 + n_ctx:, :]
        self.ctx = ctx
        self.n_cls = len(classnames)

    def __call__(self):
        ctx = self.ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


def ref_text_encoder(model, prompts, tokenized_prompts):
    """CoOp's TextEncoder.forward (coop.py:48-57); open_clip's transformer is batch-first, so the NLD<->LND
    permutes of OpenAI's CLIP drop out."""
    x = prompts + model.positional_embedding
    if not getattr(model.transformer, "batch_first", True):
        x = x.permute(1, 0, 2)
    x = model.transformer(x, attn_mask=model.attn_mask)
    if not getattr(model.transformer, "batch_first", True):
        x = x.permute(1, 0, 2)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokenized_prompts.argmax(dim=-1)] @ model.text_projection


def ref_forward(model, learner, image):
    """CustomCLIP.forward (coop.py:163-184): logits = exp(logit_scale) * cos."""
    image_features = model.encode_image(image)
    text_features = ref_text_encoder(model, learner(), learner.tokenized_prompts)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * image_features @ text_features.t()


class RefConstantWarmupScheduler(LRScheduler):
    """Dassl's _BaseWarmupScheduler + ConstantWarmupScheduler (lr_scheduler.py:10-54)."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr, last_epoch=-1):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        self.cons_lr = cons_lr
        super().__init__(optimizer, last_epoch)

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


def ref_optim(params, lr, max_epoch, warmup_epoch, cons_lr, weight_decay=0.1, momentum=0.9):
    """build_optimizer (sgd; CRoFT's defaults.py: wd 0.1, momentum 0.9, dampening 0, no Nesterov) and
    build_lr_scheduler (cosine, T_max = MAX_EPOCH, constant warm-up, WARMUP_RECOUNT)."""
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, dampening=0, nesterov=False)
    sched = CosineAnnealingLR(opt, float(max_epoch))
    if warmup_epoch > 0:
        sched = RefConstantWarmupScheduler(opt, sched, warmup_epoch, cons_lr)
    return opt, sched


def ref_train(model, tokenizer, classnames, ctx0, loader, val_x, val_y, hp):
    """TrainerX.train: run_epoch (forward_backward: CE, model_backward_and_update; update_lr after the last batch)
    then after_epoch (val top-1, strict >, save best); after_train reloads the best."""
    ctx = torch.nn.Parameter(ctx0.clone())
    learner = RefPromptLearner(model, tokenizer, classnames, ctx)
    opt, sched = ref_optim([ctx], hp["lr"], hp["epochs"], hp["warmup_epochs"], hp["warmup_lr"], hp["weight_decay"])
    best_result, best, lrs, vals, per_epoch = -np.inf, None, [], [], []
    for epoch in range(hp["epochs"]):
        lrs.append(opt.param_groups[0]["lr"])
        for image, label, _ in loader:
            loss = F.cross_entropy(ref_forward(model, learner, image), label)
            opt.zero_grad()
            loss.backward(retain_graph=True)
            opt.step()
        sched.step()
        with torch.no_grad():
            pred = ref_forward(model, learner, val_x).argmax(1)
        curr_result = 100.0 * (pred == val_y).sum().item() / len(val_y)
        vals.append(curr_result)
        per_epoch.append(ctx.detach().clone())
        if curr_result > best_result:
            best_result, best = curr_result, (epoch + 1, ctx.detach().clone())
    return {"lrs": lrs, "vals": vals, "best_epoch": best[0], "ctx": best[1], "per_epoch": per_epoch}


# ----------------------------------------------------------------------------------- harness side
def tiny_world(seed=0, n=12):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(0)  # the random tiny weights come from the global generator
    backbone = load_backbone(TINY)
    size = backbone.image_size
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.arange(n) % len(CLASSES)
    return backbone, x, y


def fake_context(backbone, x, y, seed=0):
    """An AdaptContext stand-in for a labeled-source run whose source_train and source_val are the same tensors
    (no augmentation: the transform is ignored, so the two loops see the same batches)."""

    def loader(split="train", transform=None, batch_size=32, shuffle=True, drop_last=False, indices=None):
        ds = torch.utils.data.TensorDataset(x, y, torch.arange(len(y)))
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                                           generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        val_feats = encode_images(backbone, x)
    return SimpleNamespace(device=torch.device("cpu"), seed=seed, amp_dtype=None, progress=None, evaluate=None,
                           num_source={"train": len(y), "val": len(y)}, source_loader=loader,
                           source_features=lambda split, kind="global": val_feats,
                           source_labels=lambda split: y.numpy())


def coop(backbone, context, **overrides):
    cls = get_method("coop")
    m = cls(build_options(cls, {k: str(v) for k, v in overrides.items()}))
    m.setup(backbone, CLASSES, context)
    m.snapshot()  # as the session does right after setup
    return m


HP = {"epochs": 4, "batch_size": 4, "lr": 5.0, "warmup_epochs": 1, "warmup_lr": 0.05, "weight_decay": 0.1}


def test_defaults_are_crofts_coop_recipe():
    o = build_options(get_method("coop"), {})
    assert (o.n_ctx, o.ctx_init, o.epochs, o.batch_size, o.lr, o.momentum, o.weight_decay) == (16, "", 30, 32, 0.002, 0.9, 0.1)
    assert (o.warmup_epochs, o.warmup_lr, o.aug_scale_min, o.final_model) == (1, 1e-5, 0.08, "best_val")
    cls = get_method("coop")
    assert cls.track == "labeled-source" and cls.adaptation == "none" and cls.display_name == "CoOp"


def test_default_schedule_is_dassls_constant_warmup_then_cosine_per_epoch():
    """The trainer's per-epoch LambdaLR with the method's factor == Dassl's schedulers, 30 epochs."""
    from ueobench.adapt.trainer import schedule_of

    backbone, x, y = tiny_world()
    m = coop(backbone, fake_context(backbone, x, y))
    spec = m.train_spec(n_train=100)
    assert spec.schedule_unit == "epoch" and spec.optimizer == "sgd" and spec.drop_last
    assert (spec.momentum, spec.weight_decay, spec.nesterov, spec.batch_size) == (0.9, 0.1, False, 32)
    assert not m.train_spec(n_train=31).drop_last  # Dassl: drop_last = len(data) >= batch size
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.002)
    factor = schedule_of(spec)
    ours = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: factor(step, spec.epochs))
    p2 = torch.nn.Parameter(torch.zeros(1))
    ref_opt, ref_sched = ref_optim([p2], 0.002, 30, 1, 1e-5)
    got, want = [], []
    for _ in range(30):
        got.append(opt.param_groups[0]["lr"])
        want.append(ref_opt.param_groups[0]["lr"])
        opt.step(), ref_opt.step()
        ours.step(), ref_sched.step()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert want[0] == 1e-5 and want[1] == 0.002 and math.isclose(want[29], 0.001 * (1 + math.cos(math.pi * 28 / 30)))
    # augmentation: RandomResizedCrop(scale 0.08-1, bicubic) + flip, as Dassl's random_resized_crop/random_flip
    from torchvision import transforms as T

    steps = spec.transform.transforms
    rrc = next(t for t in steps if isinstance(t, T.RandomResizedCrop))
    assert rrc.scale == (0.08, 1.0) and rrc.interpolation == T.InterpolationMode.BICUBIC
    assert any(isinstance(t, T.RandomHorizontalFlip) for t in steps)


def test_prompt_assembly_and_text_features_match_coops_prompt_learner():
    backbone, x, y = tiny_world()
    m = coop(backbone, fake_context(backbone, x, y), n_ctx=4)
    ref = RefPromptLearner(backbone.model, backbone.tokenizer, CLASSES, m.learner.ctx.detach())
    assert torch.equal(m.learner.tokens, ref.tokenized_prompts)
    assert torch.equal(m.learner.prefix, ref.token_prefix) and torch.equal(m.learner.suffix, ref.token_suffix)
    with torch.no_grad():
        want = F.normalize(ref_text_encoder(backbone.model, ref(), ref.tokenized_prompts), dim=-1)
        got = m.learner()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        # predictions: cosines of the frozen image features with the prompts (unscaled)
        feats = encode_images(backbone, x)
        torch.testing.assert_close(m.predict_features(feats), feats @ want.T, rtol=1e-5, atol=1e-6)
    # random init: normal, std 0.02, from a generator seeded by the run's seed (device-independent)
    m16 = coop(backbone, fake_context(backbone, x, y, seed=3))
    want16 = torch.empty(16, m16.learner.ctx.shape[1]).normal_(0, 0.02, generator=torch.Generator().manual_seed(3))
    assert torch.equal(m16.learner.ctx.detach(), want16)


def test_one_sgd_step_with_momentum_and_weight_decay_matches_the_reference():
    """CE at CLIP's logit scale, then two SGD steps (momentum buffer, wd 0.1), written out by hand."""
    from ueobench.adapt.trainer import make_optimizer

    backbone, x, y = tiny_world()
    m = coop(backbone, fake_context(backbone, x, y), n_ctx=4, lr=0.5)
    m.learner.truncate = False  # the full 77-token pass, as the reference: float rounding out of the way
    spec = m.train_spec(n_train=len(y))
    opt = make_optimizer(spec)
    ref = RefPromptLearner(backbone.model, backbone.tokenizer, CLASSES, torch.nn.Parameter(m.learner.ctx.detach().clone()))
    p, buf = ref.ctx.detach().clone(), None
    coop_loss = inspect.getmodule(get_method("coop")).coop_loss

    for batch in (slice(0, 4), slice(4, 8)):
        with torch.no_grad():
            feats = encode_images(backbone, x[batch])
        loss = coop_loss(feats, m.learner(), y[batch], m.scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref.ctx = torch.nn.Parameter(p.clone())
        ref_loss = F.cross_entropy(ref_forward(backbone.model, ref, x[batch]), y[batch])
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        (g,) = torch.autograd.grad(ref_loss, [ref.ctx])
        d = g + 0.1 * p  # torch SGD: weight decay, momentum 0.9, dampening 0, no Nesterov
        buf = d.clone() if buf is None else 0.9 * buf + d
        p = p - 0.5 * buf
        torch.testing.assert_close(m.learner.ctx.detach(), p, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("final_model", ["best_val", "last_step"])
def test_training_and_best_epoch_selection_match_the_reference_loop(final_model):
    backbone, x, y = tiny_world(seed=1)  # source_val top-1 per epoch 25, 33.3, 33.3, 33.3 %: epoch 2 is kept
    ctx = fake_context(backbone, x, y, seed=1)
    m = coop(backbone, ctx, n_ctx=4, final_model=final_model, **HP)
    m.learner.truncate = False  # the full 77-token pass, as the reference
    ctx0 = m.learner.ctx.detach().clone()
    history = m.adapt(ctx)
    ref = ref_train(backbone.model, backbone.tokenizer, CLASSES, ctx0, ctx.source_loader("train", None, 4, True, True),
                    x, y, HP)
    np.testing.assert_allclose([h["lr"]["prompt"] for h in history], ref["lrs"], rtol=1e-12)
    assert ref["lrs"][0] == HP["warmup_lr"] and ref["lrs"][1] == HP["lr"]
    if final_model == "best_val":
        assert [round(100 * h["source_val"], 6) for h in history] == [round(v, 6) for v in ref["vals"]]
        assert ref["best_epoch"] == 2, "the tiny case must exercise the selection (not the first, nor a later tie)"
        assert m.chosen["epoch"] == ref["best_epoch"] == m.selection()["epoch"]
        torch.testing.assert_close(m.learner.ctx.detach(), ref["ctx"], rtol=1e-4, atol=1e-5)
    else:
        assert m.chosen is None and all("source_val" not in h for h in history)
        torch.testing.assert_close(m.learner.ctx.detach(), ref["per_epoch"][-1], rtol=1e-4, atol=1e-5)
    m.reset()  # back to the state right after setup
    assert torch.equal(m.learner.ctx.detach(), ctx0) and m.chosen is None


def test_selection_keeps_the_first_of_equal_best_epochs(monkeypatch):
    """Dassl's ``curr_result > best_result``: a later epoch that only ties the best is not kept."""
    backbone, x, y = tiny_world()
    ctx = fake_context(backbone, x, y)
    m = coop(backbone, ctx, n_ctx=4, **HP)
    m.learner.truncate = False
    scripted = iter([0.25, 0.5, 0.5, 0.25])
    monkeypatch.setattr(m, "val_accuracy", lambda *a: next(scripted))
    ctx0 = m.learner.ctx.detach().clone()
    m.adapt(ctx)
    ref = ref_train(backbone.model, backbone.tokenizer, CLASSES, ctx0, ctx.source_loader("train", None, 4, True, True),
                    x, y, HP)
    assert m.chosen == {"epoch": 2, "value": 0.5}
    torch.testing.assert_close(m.learner.ctx.detach(), ref["per_epoch"][1], rtol=1e-4, atol=1e-5)


def test_cli_trains_on_the_source_reuses_the_model_and_reruns_identically(cli):
    common = ("--method", "coop", "--source", "real", "--protocol", "oda", "--backbone", TINY, "--shots", "4",
              "--set", "epochs=2")
    r = cli("run", *common, "--domain", "clipart")
    assert r.exit_code == 0, r.output
    assert "model: coop_shapes_real" in r.output and "(reused)" not in r.output, r.output
    [run] = [d for d in Path("results/runs").iterdir() if "clipart" in d.name]
    preds = load_predictions(run)
    r2 = cli("run", *common, "--domain", "sketch")
    assert r2.exit_code == 0 and "(reused)" in r2.output, r2.output
    assert cli("run", *common, "--domain", "clipart", "--force").exit_code == 0
    again = load_predictions(run)
    assert preds.keys() == again.keys() and all(np.array_equal(preds[k], again[k]) for k in preds)
    # a fresh store trains the model again from the seed: the same predictions
    assert cli("run", *common, "--domain", "clipart", "--results", "fresh").exit_code == 0
    [fresh] = list(Path("fresh/runs").iterdir())
    retrained = load_predictions(fresh)
    assert all(np.array_equal(preds[k], retrained[k]) for k in preds)
    rec = json.loads((run / "record.json").read_text())
    assert rec["artifact"]["selection"]["on"] == "source_val" and rec["artifact"]["selection"]["epoch"] in (1, 2)
    assert rec["trainable_parameters"] == 16 * backbone_width()


def backbone_width() -> int:
    return load_backbone(TINY).model.token_embedding.weight.shape[1]
