"""Fine-tuning (FT, labeled-source) against a transcription of CaRot's ft.sh path (MLAI-Yonsei/CaRot).

The transcription restates ``src/models/zeroshot.py:get_zeroshot_classifier`` (the head), ``modeling.py``
(``ClassificationHead(normalize=True)`` after the image tower), ``utils.py:cosine_lr`` and the training loop of
``ft_loss.py`` 104-137: lr set before each step, CE, AdamW(lr, wd) on every parameter that requires grad, and the
fp16 branch ``scaler.scale(loss).backward(); clip_grad_norm_(params, 1.0); scaler.step(opt)`` written out with the
GradScaler's initial scale 2**16 (scale the loss, clip the scaled gradients to norm 1, unscale, step), or the fp32
branch (backward, clip to 1, step)."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY
from ueobench.method.options import build_options
from ueobench.method.registry import get_method
from ueobench.models import load_backbone

CLASSES = ["circle", "square", "star"]
SCALE = 2.0 ** 16  # torch.cuda.amp.GradScaler's init_scale


# ------------------------------------------------------------------------------------ the transcription


def ref_zeroshot_weights(raw: torch.Tensor, logit_scale_exp) -> torch.Tensor:
    """get_zeroshot_classifier on per-class raw text embeddings raw[k] = encode_text(templates of class k)."""
    zeroshot_weights = []
    for k in range(raw.shape[0]):
        embeddings = raw[k].clone()
        embeddings /= embeddings.norm(dim=-1, keepdim=True)
        embeddings = embeddings.mean(dim=0, keepdim=True)
        embeddings /= embeddings.norm()
        zeroshot_weights.append(embeddings)
    zeroshot_weights = torch.stack(zeroshot_weights, dim=0)
    zeroshot_weights = torch.transpose(zeroshot_weights, 0, 2)
    zeroshot_weights *= logit_scale_exp
    zeroshot_weights = zeroshot_weights.squeeze()
    return torch.transpose(zeroshot_weights, 0, 1)  # ClassificationHead weight [K, D]; bias zeros


def ref_cosine_lr(base_lr, warmup_length, steps, step, min_lr=0.0):
    if step < warmup_length:
        return base_lr * (step + 1) / warmup_length
    e = step - warmup_length
    es = steps - warmup_length
    return 0.5 * (1 + np.cos(np.pi * e / es)) * base_lr + min_lr


class RefClassifier(torch.nn.Module):
    """ImageClassifier(CLIPEncoder, ClassificationHead(normalize=True, weights))."""

    def __init__(self, clip_model, weight):
        super().__init__()
        self.model = clip_model
        self.head = torch.nn.Linear(weight.shape[1], weight.shape[0])
        self.head.weight = torch.nn.Parameter(weight.clone())
        self.head.bias = torch.nn.Parameter(torch.zeros_like(self.head.bias))

    def forward(self, images):
        feats = self.model.encode_image(images)
        return self.head(feats / feats.norm(dim=-1, keepdim=True))


def ref_finetune(clf: RefClassifier, loader, epochs, lr, wd, warmup, branch):
    """ft_loss.py's loop; ``branch``: "fp16" (clip of the GradScaler-scaled gradients, scale 2**16), "fp32"
    (clip of the gradients to 1) or "none" (no clip)."""
    clf.train()
    params = [p for p in clf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    num_batches = len(loader)
    for epoch in range(epochs):
        for i, (images, labels, _) in enumerate(loader):
            step = i + epoch * num_batches
            for g in opt.param_groups:
                g["lr"] = ref_cosine_lr(lr, warmup, epochs * num_batches, step)
            opt.zero_grad()
            loss = F.cross_entropy(clf(images), labels)
            if branch == "fp16":
                (loss * SCALE).backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                for p in params:
                    if p.grad is not None:
                        p.grad.div_(SCALE)  # scaler.step: unscale, then step
            else:
                loss.backward()
                if branch == "fp32":
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
    return clf


# ----------------------------------------------------------------------------------- harness side


def fake_context(backbone, x, y, seed=0):
    """A labeled-source AdaptContext stand-in over fixed tensors (the transform is ignored: no augmentation, so
    both loops see the same batches)."""

    def loader(split="train", transform=None, batch_size=32, shuffle=True, drop_last=False, indices=None):
        ds = torch.utils.data.TensorDataset(x, y, torch.arange(len(y)))
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                                           generator=torch.Generator().manual_seed(seed))

    return SimpleNamespace(device=torch.device("cpu"), seed=seed, amp_dtype=None, progress=None, evaluate=None,
                           prompt="a photo of a {}.", num_source={"train": len(y), "val": 0}, source_loader=loader)


def make_ft(backbone, context, **overrides):
    cls = get_method("ft")
    m = cls(build_options(cls, {k: str(v) for k, v in overrides.items()}))
    m.setup(backbone, CLASSES, context)
    m.snapshot()
    return m


def tiny_world(n=10, seed=0):
    backbone = load_backbone(TINY)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=g)
    y = torch.arange(n) % len(CLASSES)
    return backbone, x, y


# ----------------------------------------------------------------------------------------- the tests


def test_defaults_are_the_ft_sh_recipe():
    cls = get_method("ft")
    o = build_options(cls, {})
    assert (o.epochs, o.batch_size, o.lr, o.weight_decay) == (10, 512, 3e-5, 0.1)
    assert o.warmup_frac == pytest.approx(500 / 25030) and o.warmup_steps is None
    assert o.grad_clip == 2.0 ** -16 and o.aug_scale_min == 0.9 and o.templates == "dataset"
    assert cls.track == "labeled-source" and cls.adaptation == "none" and cls.display_name == "FT"


def test_head_is_the_reference_zeroshot_classifier():
    from ueobench.methods.ft import zeroshot_head

    g = torch.Generator().manual_seed(0)
    raw = torch.randn(5, 7, 16, generator=g, dtype=torch.float64)  # K classes x T templates x D
    torch.testing.assert_close(zeroshot_head(raw, 23.5), ref_zeroshot_weights(raw, 23.5), rtol=0, atol=1e-13)
    torch.testing.assert_close(zeroshot_head(raw[:, :1], 23.5), ref_zeroshot_weights(raw[:, :1], 23.5), rtol=0,
                               atol=1e-13)

    backbone, x, y = tiny_world()
    m = make_ft(backbone, fake_context(backbone, x, y))
    s = backbone.model.logit_scale.exp().item()
    with torch.no_grad():
        tokens = backbone.tokenizer([f"a photo of a {c}." for c in CLASSES])
        ref = ref_zeroshot_weights(backbone.model.encode_text(tokens)[:, None], s)
    torch.testing.assert_close(m.head_weight.detach(), ref, rtol=0, atol=1e-6)
    assert torch.equal(m.head_bias.detach(), torch.zeros(3)) and m.logit_scale() == pytest.approx(s)
    # the zero-shot head gives the zero-shot cosines, divided back from the head's scale
    from ueobench.models import encode_texts

    f = F.normalize(torch.randn(4, ref.shape[1], generator=g), dim=-1)
    zs = f @ encode_texts(backbone, [f"a photo of a {c}." for c in CLASSES]).T
    torch.testing.assert_close(m.predict_features(f), zs, rtol=0, atol=1e-6)
    # the reference's 80 OpenAI ImageNet templates, averaged per class
    from ueobench.methods.ft import OPENAI_IMAGENET_TEMPLATES

    m80 = make_ft(backbone, fake_context(backbone, x, y), templates="openai_imagenet")
    with torch.no_grad():
        raw = torch.stack([backbone.model.encode_text(backbone.tokenizer([t.format(c) for t in
                                                                          OPENAI_IMAGENET_TEMPLATES]))
                           for c in CLASSES])
    torch.testing.assert_close(m80.head_weight.detach(), ref_zeroshot_weights(raw, s), rtol=0, atol=1e-5)
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80 and m80.info()["n_templates"] == 80
    # trainable: every image-tower parameter and the head; nothing of the text tower
    groups = m.trainable_parameters()
    assert {id(p) for p in groups["image"]} == {id(p) for p in backbone.model.visual.parameters()}
    assert len(groups["head"]) == 2


def test_schedule_is_cosine_lr_with_the_warm_up_as_a_fraction():
    from ueobench.methods.ft import resolve_schedule, warmup_cosine

    for total, warm in ((25030, 500), (40, 1), (10, 3), (7, 0), (5, 5)):
        for step in range(total):
            assert warmup_cosine(step, total, warm) * 3e-5 == pytest.approx(ref_cosine_lr(3e-5, warm, total, step),
                                                                             rel=1e-12, abs=1e-20)
    ref_total = 10 * math.ceil(1281167 / 512)
    assert resolve_schedule(1281167, 512, 10, 500 / 25030, None)["warmup_steps"] == 500 and ref_total == 25030
    s = resolve_schedule(1600, 512, 10, 500 / 25030, None)  # shapes65 product: the leaderboard source
    assert (s["batch_size"], s["steps_per_epoch"], s["total_steps"], s["warmup_steps"]) == (512, 4, 40, 1)
    s = resolve_schedule(360, 512, 10, 500 / 25030, None)
    assert (s["batch_size"], s["batch_capped"], s["total_steps"], s["warmup_steps"]) == (360, True, 10, 1)
    assert resolve_schedule(360, 512, 10, 0.0, None)["warmup_steps"] == 0
    assert resolve_schedule(360, 64, 10, 500 / 25030, 500)["warmup_steps"] == 500


@pytest.mark.parametrize("grad_clip,branch", [(None, "fp16"), ("1", "fp32"), ("none", "none")])
def test_training_matches_the_reference_loop(grad_clip, branch):
    """Two epochs of two batches (warm-up 2 of 4 steps) through ueobench's trainer and the reference loop: the same
    image tower and head. The default grad_clip is the reference's fp16 path (clip of scaled gradients)."""
    backbone, x, y = tiny_world(n=10)
    ctx = fake_context(backbone, x, y)
    hp = {"epochs": 2, "batch_size": 5, "lr": 1e-3, "warmup_steps": 2}
    if grad_clip is not None:
        hp["grad_clip"] = grad_clip
    m = make_ft(backbone, ctx, **hp)
    ref = RefClassifier(copy.deepcopy(backbone.model), m.head_weight.detach())
    history = m.adapt(ctx)
    assert len(history) == 2 and m.info()["total_steps"] == 4 and m.info()["warmup_steps"] == 2
    assert history[0]["lr"]["image"] == pytest.approx(1e-3 * 0.5) and history[1]["lr"]["head"] == pytest.approx(1e-3)
    ref_finetune(ref, ctx.source_loader("train", None, 5, True, False), 2, 1e-3, 0.1, 2, branch)
    for (name, p), q in zip(backbone.model.visual.named_parameters(), ref.model.visual.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-4, atol=2e-6, msg=name)
    torch.testing.assert_close(m.head_weight.detach(), ref.head.weight.detach(), rtol=1e-4, atol=2e-6)
    torch.testing.assert_close(m.head_bias.detach(), ref.head.bias.detach(), rtol=1e-4, atol=2e-6)
    moved = max((p.detach() - p0).abs().max().item() for p, p0 in m._initial_state)
    assert moved > 1e-4  # the parameters did move
    # predictions: softmax(logit_scale * output) is the reference classifier's softmax
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.softmax(m.logit_scale() * m.predict(x), 1), torch.softmax(ref(x), 1),
                                   rtol=1e-4, atol=1e-5)
        feats = F.normalize(backbone.model.encode_image(x), dim=-1)
        torch.testing.assert_close(m.predict_features(feats), m.predict(x), rtol=0, atol=1e-6)
    assert not backbone.model.training


def test_reference_clip_is_not_a_no_op():
    """The reference's clip of scaled gradients changes the AdamW trajectory (it is not "no clipping")."""
    backbone, x, y = tiny_world(n=10)
    ctx = fake_context(backbone, x, y)
    out = []
    for clip in (None, "none"):
        hp = {"epochs": 1, "batch_size": 5, "lr": 1e-3, "warmup_steps": 0}
        if clip:
            hp["grad_clip"] = clip
        m = make_ft(load_backbone(TINY), ctx, **hp)
        m.adapt(ctx)
        out.append(m.head_weight.detach().clone())
    assert (out[0] - out[1]).abs().max() > 1e-5


def test_train_transform_is_clips_train_preprocess():
    from torchvision import transforms as T

    backbone, x, y = tiny_world()
    m = make_ft(backbone, fake_context(backbone, x, y))
    ops = m.train_transform().transforms
    rrc = ops[0]
    assert isinstance(rrc, T.RandomResizedCrop) and rrc.scale == (0.9, 1.0)
    assert rrc.interpolation == T.InterpolationMode.BICUBIC and rrc.size == (backbone.image_size,) * 2
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in ops)


def test_reset_and_artifact_round_trip():
    backbone, x, y = tiny_world()
    ctx = fake_context(backbone, x, y)
    m = make_ft(backbone, ctx, epochs=1, batch_size=5, lr=1e-3)
    zs = {k: v.clone() for k, v in m.artifact_state().items()}
    m.adapt(ctx)
    state = m.artifact_state()
    assert set(state) == set(zs) and any(not torch.equal(state[k], zs[k]) for k in state)
    m.reset()
    assert all(torch.equal(v, zs[k]) for k, v in m.artifact_state().items())
    m.load_artifact_state(state, {})
    assert all(torch.equal(v, state[k]) for k, v in m.artifact_state().items())


def load_predictions(run: Path) -> dict:
    with np.load(run / "predictions.npz") as z:
        return {k: z[k] for k in z.files}


def test_cli_trains_once_reuses_the_model_and_reruns_identically(cli):
    common = ("--method", "ft", "--source", "real", "--protocol", "oda", "--backbone", TINY,
              "--set", "epochs=1", "--set", "batch_size=128")
    r = cli("run", *common, "--domain", "clipart")
    assert r.exit_code == 0, r.output
    assert "model: ft_shapes_real" in r.output and "trained in" in r.output, r.output
    [run] = list(Path("results/runs").iterdir())
    rec = json.loads((run / "record.json").read_text())
    info = rec["method"]["info"]
    assert (info["batch_size"], info["steps_per_epoch"], info["total_steps"], info["warmup_steps"]) == (128, 3, 3, 1)
    assert rec["artifact"]["reused"] is False
    preds = load_predictions(run)
    r2 = cli("run", *common, "--domain", "real")  # another target (in-distribution): the same model
    assert r2.exit_code == 0 and "(reused)" in r2.output, r2.output
    assert cli("run", *common, "--domain", "clipart", "--force").exit_code == 0
    again = load_predictions(run)
    assert preds.keys() == again.keys() and all(np.array_equal(preds[k], again[k]) for k in preds)
    assert json.loads((run / "record.json").read_text())["artifact"]["id"] == rec["artifact"]["id"]
