"""CaRot against a transcription of the released computation (spec_croft_carot.md §B7, re-checked against
MLAI-Yonsei/CaRot src/models/carot_loss.py, clip/loss.py, src/models/utils.py), in float64, and end to end."""
from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from ueobench.methods import carot as C

# ------------------------------------------------------------------ the transcription (B7), plain PyTorch


def ref_clip_loss(img, txt, s):
    lpi, lpt = s * img @ txt.t(), s * txt @ img.t()
    lab = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(lpi, lab) + F.cross_entropy(lpt, lab)) / 2, lpi, lpt


def ref_orth(wv):
    c = wv.t() @ wv
    return (((c - torch.eye(c.shape[0], device=c.device)) ** 2).sum()) ** 0.5


def ref_cross_fnorm(wv, wt):
    return torch.linalg.norm(wv @ wt.t(), ord="fro")


def ref_sd(lpi, lpt, img_t, txt_t, s_t):
    lpi_t, lpt_t = s_t * img_t @ txt_t.t(), s_t * txt_t @ img_t.t()
    return -torch.sum(F.softmax(lpi_t, 1) * torch.log(F.softmax(lpi, 1))
                      + F.softmax(lpt_t, 1) * torch.log(F.softmax(lpt, 1)), dim=1).mean()


def ref_carot_loss(img, txt, s, wv, wt, step, img_t=None, txt_t=None, s_t=None, cross_fnorm=0.05, l_orth=0.2,
                   distil=1.5):
    loss, lpi, lpt = ref_clip_loss(img, txt, s)
    if cross_fnorm:
        loss = loss + cross_fnorm * ref_cross_fnorm(wv, wt)
    if l_orth:
        loss = loss + l_orth * ref_orth(wv)
    if distil and step > 0:
        loss = loss + distil * ref_sd(lpi, lpt, img_t, txt_t, s_t)
    return loss


def ref_lr(step, total, base=1e-5, warmup=500, min_lr=0.0):
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * (1 + np.cos(np.pi * (step - warmup) / (total - warmup))) * base + min_lr


def ref_momentum(step, total, src=0.05, tar=0.9, warm=0.2):
    return (tar - src) / (total * warm) * step + src if step < total * warm else tar


def ref_due(step, total, freq=500):
    return freq > 0 and (step % freq == 0 or step == total)


@torch.no_grad()
def ref_ema_(teacher_params, student_params, m):
    for pk, pq in zip(teacher_params, student_params):
        pk.mul_(m).add_((1 - m) * pq.detach())


# ---------------------------------------------------------------------------------------------- the terms


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def test_loss_terms_are_the_released_ones():
    g = torch.Generator().manual_seed(0)
    img, txt = _unit(torch.randn(6, 5, generator=g, dtype=torch.float64)), _unit(torch.randn(6, 5, generator=g, dtype=torch.float64))
    img_t, txt_t = _unit(torch.randn(6, 5, generator=g, dtype=torch.float64)), _unit(torch.randn(6, 5, generator=g, dtype=torch.float64))
    s, s_t = torch.tensor(14.3, dtype=torch.float64), torch.tensor(11.0, dtype=torch.float64)
    wv, wt = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    ours, lpi, lpt = C.clip_contrastive(img, txt, s)
    ref, rlpi, rlpt = ref_clip_loss(img, txt, s)
    assert torch.allclose(ours, ref, atol=1e-14, rtol=0) and torch.equal(lpi, rlpi) and torch.equal(lpt, rlpt)
    assert torch.allclose(C.orthogonality(wv), ref_orth(wv), atol=1e-13, rtol=0)
    assert torch.allclose(C.cross_frobenius(wv, wt), ref_cross_fnorm(wv, wt), atol=1e-13, rtol=0)
    lpi_t, lpt_t = s_t * img_t @ txt_t.T, s_t * txt_t @ img_t.T
    assert torch.allclose(C.self_distillation(lpi, lpt, lpi_t, lpt_t), ref_sd(lpi, lpt, img_t, txt_t, s_t),
                          atol=1e-13, rtol=0)
    assert torch.allclose(C.self_distillation(lpi, lpt, lpi_t, lpt_t, log_softmax=True),
                          ref_sd(lpi, lpt, img_t, txt_t, s_t), atol=1e-12, rtol=0)  # equal where nothing underflows


def test_schedule_momentum_and_cadence_are_the_released_ones_and_rescale():
    T = 10 * math.ceil(1_281_167 / 512)  # the reference's ImageNet run: 25,030 steps
    assert T == 25_030
    for step in (0, 1, 250, 499, 500, 501, 9_000, 25_029):
        assert math.isclose(1e-5 * C.warmup_cosine(step, T, 500), ref_lr(step, T), rel_tol=1e-12, abs_tol=1e-20)
        assert math.isclose(C.ema_momentum(step, T, 0.2, 0.05, 0.9), ref_momentum(step, T), rel_tol=1e-12)
        assert C.ema_due(step, T, 500) == ref_due(step, T)
    assert math.isclose(1e-5 * C.warmup_cosine(700, T, 500, 1e-7 / 1e-5), ref_lr(700, T, min_lr=1e-7), rel_tol=1e-12)
    updates = [t for t in range(T) if ref_due(t, T)]
    assert len(updates) == 51 and updates[0] == 0 and updates[-1] == 25_000
    assert round(ref_momentum(5000, T), 4) == 0.899
    # the absolute reference schedule is reachable
    r = C.resolve_schedule(1_281_167, 512, 10, 0.02, 500, 0.02, 500, 0.2)
    assert (r["total_steps"], r["warmup_steps"], r["ema_every"], r["ema_updates"]) == (T, 500, 500, 51)
    # rescaled: shapes65 product as a source (1,600 images): 4 full batches per epoch, 40 steps
    r = C.resolve_schedule(1_600, 512, 10, C.REFERENCE_FRACTION, None, C.REFERENCE_FRACTION, None, 0.2)
    assert (r["batch_size"], r["steps_per_epoch"], r["total_steps"], r["warmup_steps"], r["ema_every"]) == (512, 4, 40, 1, 1)
    assert r["ema_ramp_steps"] == 8 and r["ema_updates"] == 40 and not r["batch_capped"]
    r = C.resolve_schedule(10_000, 512, 10, C.REFERENCE_FRACTION, None, C.REFERENCE_FRACTION, None, 0.2)
    assert (r["total_steps"], r["warmup_steps"], r["ema_every"], r["ema_updates"]) == (200, 4, 4, 50)
    r = C.resolve_schedule(300, 512, 10, C.REFERENCE_FRACTION, None, C.REFERENCE_FRACTION, None, 0.2)
    assert r["batch_size"] == 300 and r["batch_capped"] and r["total_steps"] == 10
    r = C.resolve_schedule(300, 512, 10, 0.0, None, 0.0, None, 0.2)
    assert r["warmup_steps"] == 0 and r["ema_every"] == 0 and r["ema_updates"] == 0


# ------------------------------------------------------------------------ the training loop, in float64

NAMES = ["red star", "blue ring", "green cross"]


class FixedLoader:
    """The same batches in the same order every pass (the transcription replays them)."""

    def __init__(self, batches):
        self.batches = batches
        self.dataset = list(range(sum(len(b[1]) for b in batches)))

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def tiny_model():
    from ueobench.models.backbones import load_backbone, parse_spec

    torch.manual_seed(0)
    backbone = load_backbone(parse_spec(TINY), torch.device("cpu"))
    backbone.model.double().eval()
    return backbone


def fake_context(batches, n_train, seed=0):
    def source_loader(split="train", transform=None, batch_size=32, shuffle=True, drop_last=False, indices=None):
        assert split == "train" and drop_last and batch_size == len(batches[0][1])
        return FixedLoader(batches)

    return SimpleNamespace(device=torch.device("cpu"), prompt="a photo of a {}.", seed=seed, amp_dtype=None,
                           progress=None, evaluate=None, num_source={"train": n_train, "val": 0},
                           source_loader=source_loader)


def batches_of(n_batches=2, b=4, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_batches):
        images = torch.randn(b, 3, size, size, generator=g, dtype=torch.float64)
        labels = torch.tensor([(i + j) % len(NAMES) for j in range(b)])  # same-class pairs inside a batch
        out.append((images, labels, torch.arange(b) + i * b))
    return out


def reference_training(model, batches, epochs, base_lr, warmup, cross, orth, distil, freq, tokenizer,
                       wd=0.1, ramp=0.2, src=0.05, tar=0.9):
    """carot_loss.py's loop: lr before each step, student + teacher forward, AdamW step, then the EMA."""
    student = copy.deepcopy(model).train()
    teacher = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(list(student.parameters()), lr=base_lr, weight_decay=wd)
    T = epochs * len(batches)
    ms = []
    for step in range(T):
        for group in opt.param_groups:
            group["lr"] = ref_lr(step, T, base_lr, warmup)
        images, labels, _ = batches[step % len(batches)]
        tokens = tokenizer([f"a photo of a {NAMES[y]}." for y in labels.tolist()])  # every caption encoded
        img, txt = _unit(student.encode_image(images)), _unit(student.encode_text(tokens))
        s = student.logit_scale.exp()
        img_t = txt_t = s_t = None
        if distil and step > 0:
            with torch.no_grad():
                img_t, txt_t = _unit(teacher.encode_image(images)), _unit(teacher.encode_text(tokens))
                s_t = teacher.logit_scale.exp()
        loss = ref_carot_loss(img, txt, s, student.visual.proj, student.text_projection, step, img_t, txt_t, s_t,
                              cross, orth, distil)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if distil and ref_due(step, T, freq):
            m = ref_momentum(step, T, src, tar, ramp)
            ref_ema_(teacher.parameters(), student.parameters(), m)
            ms.append((step, m))
    return student, teacher, ms


def make_method(cls, backbone, ctx, **options):
    m = cls(cls.Options(**options))
    m.setup(backbone, NAMES, ctx)
    return m


def test_training_matches_the_released_loop_in_float64():
    backbone = tiny_model()
    batches = batches_of()
    ctx = fake_context(batches, n_train=8)
    # 3 epochs x 2 steps; warm-up 2 steps, EMA every 2 steps (fractions 1/3 of T = 6), momentum ramp over 3 steps
    m = make_method(C.CaRot, backbone, ctx, epochs=3, batch_size=4, lr=1e-3, warmup_frac=1 / 3,
                    ema_every_frac=1 / 3, ema_ramp=0.5)
    assert (m.schedule["total_steps"], m.schedule["warmup_steps"], m.schedule["ema_every"]) == (6, 2, 2)
    ref_student, ref_teacher, ms = reference_training(backbone.model, batches, 3, 1e-3, 2, 0.05, 0.2, 1.5, 2,
                                                      backbone.tokenizer, ramp=0.5)
    history = m.adapt(ctx)
    assert len(history) == 3 and not backbone.model.training
    assert [s for s, _ in m._ema_done] == [0, 2, 4] == [s for s, _ in ms]
    assert np.allclose([x for _, x in m._ema_done], [0.05, 0.05 + 0.85 * 2 / 3, 0.9], atol=1e-15)
    moved = 0.0
    for (name, p), q, t, k in zip(backbone.model.named_parameters(), ref_student.parameters(),
                                  m.teacher.parameters(), ref_teacher.parameters()):
        assert torch.allclose(p, q, atol=1e-10, rtol=0), f"student {name}: {(p - q).abs().max()}"
        assert torch.allclose(t, k, atol=1e-10, rtol=0), f"teacher {name}: {(t - k).abs().max()}"
        moved = max(moved, float((p - t).detach().abs().max()))
    assert moved > 1e-4  # the teacher lags the student: the distillation term is not a no-op
    # evaluation: the fine-tuned towers, the learned scale, no teacher left behind
    tokens = backbone.tokenizer([f"a photo of a {n}." for n in NAMES])
    images = batches[0][0]
    with torch.no_grad():
        expected = _unit(ref_student.encode_image(images)) @ _unit(ref_student.encode_text(tokens)).T
    assert torch.allclose(m.predict(images).double(), expected, atol=1e-6)
    assert math.isclose(m.logit_scale(), float(ref_student.logit_scale.detach().exp()), rel_tol=1e-12)
    m.finish(ctx)
    assert m.teacher is None and not any(k.startswith("teacher") for k in m.artifact_state())


def test_reset_restores_the_zero_shot_model_and_the_artifact_restores_the_trained_one():
    backbone = tiny_model()
    batches = batches_of()
    ctx = fake_context(batches, n_train=8)
    m = make_method(C.CaRot, backbone, ctx, epochs=1, batch_size=4, lr=1e-3)
    m.snapshot()
    images = batches[1][0]
    before = m.predict(images).clone()
    m.adapt(ctx)
    after, state, scale = m.predict(images).clone(), m.artifact_state(), m.logit_scale()
    assert not torch.equal(before, after)
    m.reset()
    assert torch.equal(m.predict(images), before) and m.teacher is None
    m.load_artifact_state(state, m.artifact_meta())
    assert torch.equal(m.predict(images), after) and m.logit_scale() == scale


def test_openai_templates_draw_seeded_captions_and_average_the_head():
    backbone = tiny_model()
    ctx = fake_context(batches_of(), n_train=8)
    m = make_method(C.CaRot, backbone, ctx, templates="openai_imagenet")
    assert len(C.OPENAI_IMAGENET_TEMPLATES) == 80 and m.template.startswith("OpenAI ImageNet templates")
    head = m.class_head()
    with torch.no_grad():  # get_zeroshot_classifier: per class, normalise each template, mean, renormalise
        ref = torch.stack([_unit(_unit(backbone.model.encode_text(backbone.tokenizer(
            [t.format(n) for t in C.OPENAI_IMAGENET_TEMPLATES]))).mean(0)) for n in NAMES])
    assert torch.allclose(head, ref, atol=1e-12)
    m._gen = torch.Generator().manual_seed(0)
    ids = m.caption_ids(torch.tensor([0, 1, 2, 2]))
    assert torch.equal(ids % len(NAMES), torch.tensor([0, 1, 2, 2])) and int(ids.max()) < 80 * len(NAMES)


# --------------------------------------------------------------------------------------- end to end


def test_carot_end_to_end_reuses_its_artifact_and_retrains_identically(cli):
    from safetensors.torch import load_file

    args = ("run", "--method", "carot", "--source", "real", "--protocol", "oda", "--backbone", TINY,
            "--shots", "8", "--set", "epochs=1", "--set", "batch_size=32")
    r = cli(*args, "--domain", "clipart")
    assert r.exit_code == 0, r.output
    assert "trained in" in r.output
    r2 = cli(*args, "--domain", "painting")
    assert r2.exit_code == 0 and "(reused)" in r2.output, r2.output
    runs = {d.name: d for d in Path("results/runs").iterdir()}
    [first] = [d for n, d in runs.items() if "to-clipart" in n]
    [second] = [d for n, d in runs.items() if "to-painting" in n]
    rec, rec2 = (json.loads((d / "record.json").read_text()) for d in (first, second))
    assert rec2["artifact"]["reused"] and rec2["artifact"]["id"] == rec["artifact"]["id"]
    [art] = list(Path("results/artifacts").iterdir())
    state = load_file(str(art / "state.safetensors"))
    learned = float(state["logit_scale"].double().exp())
    assert not any(k.startswith("teacher") for k in state)
    assert math.isclose(rec["evaluation"]["logit_scale"], learned, rel_tol=1e-6)
    assert math.isclose(rec2["evaluation"]["logit_scale"], learned, rel_tol=1e-6)
    assert not math.isclose(learned, 1 / 0.07, rel_tol=1e-9)  # it moved from the initial scale
    info = rec["method"]["info"]
    assert (info["n_train"], info["batch_size"], info["steps_per_epoch"], info["total_steps"]) == (80, 32, 3, 3)
    assert info["warmup_steps"] == 1 and info["ema_every"] == 1 and info["ema_updates"] == 3
    assert info["templates"] == "dataset" and rec["protocol"]["prompt"] == "a photo of a {}."
    assert rec2["method"]["info"]["ema_momenta"] == info["ema_momenta"]  # restored with the artifact
    assert rec["trainable_groups"]["logit_scale"] == 1
    assert rec["trainable_parameters"] == sum(v.numel() for v in state.values())
    # a seeded retraining (the artifact removed, --force) gives the same model and the same predictions
    preds, sha = (first / "predictions.npz").read_bytes(), rec["artifact"]["state_sha256"]
    shutil.rmtree(art)
    r3 = cli(*args, "--domain", "clipart", "--force")
    assert r3.exit_code == 0 and "trained in" in r3.output, r3.output
    assert (first / "predictions.npz").read_bytes() == preds
    assert json.loads((first / "record.json").read_text())["artifact"]["state_sha256"] == sha


def test_reference_defaults():
    o = C.CaRot.Options()
    assert (o.epochs, o.batch_size, o.lr, o.weight_decay, o.min_lr) == (10, 512, 1e-5, 0.1, 0.0)
    assert (o.cross_fnorm, o.l_orth, o.distil) == (0.05, 0.2, 1.5)
    assert (o.ema_m_start, o.ema_m_end, o.ema_ramp) == (0.05, 0.9, 0.2)
    assert o.warmup_frac == o.ema_every_frac == 500 / 25_000 and o.warmup_steps is None and o.ema_every is None
    assert o.aug_scale_min == 0.9 and o.full_batches and o.templates == "dataset" and not o.sd_log_softmax


@pytest.mark.parametrize("backbone", ["tiny-rn:random"])
def test_resnet_projection_is_the_attention_pool_output(backbone):
    from ueobench.models.backbones import load_backbone, parse_spec

    b = load_backbone(parse_spec(backbone), torch.device("cpu"))
    m = make_method(C.CaRot, b, fake_context(batches_of(), n_train=8))
    wv, wt = m._projections()
    assert torch.equal(wv, b.model.visual.attnpool.c_proj.weight.T) and wt is b.model.text_projection
