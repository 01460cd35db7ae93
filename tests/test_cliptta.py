"""CLIPTTA: the OOD score, the Otsu threshold, the OCE term and the contrastive loss against a transcription of
MarcLafon/cliptta (f4221f4: methods/cliptta_otsu.py, methods/abstract_model.py, memory/ccm.py, lib), the whole
update rule (threshold reset, filter, memory, alpha learned) on the tiny model against a reference driver, and
end-to-end runs."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY
from ueobench.methods import cliptta as C
from ueobench.runs.plan import plan_run
from ueobench.runs.request import RunRequest
from ueobench.runs.session import start


# ------------------------------------------------------------------ transcription of the reference (restated)
def ref_softmax_entropy(x, eps=1e-6):
    return -((x + eps).softmax(1) * (x + eps).log_softmax(1)).sum(1)


def ref_softmax_mean_entropy(x, eps=1e-6):
    p = (x + eps).softmax(1).mean(0)
    return -(p * torch.log(p + eps)).sum()


def ref_otsu(x, nbins=256):  # skimage.filters.threshold_otsu on a 1-D array
    x = np.asarray(x).reshape(-1)
    if np.all(x == x[0]):
        return x[0]
    counts, edges = np.histogram(x, bins=nbins)
    centers = (edges[:-1] + edges[1:]) / 2
    w1, w2 = np.cumsum(counts), np.cumsum(counts[::-1])[::-1]
    m1 = np.cumsum(counts * centers) / w1
    m2 = (np.cumsum((counts * centers)[::-1]) / w2[::-1])[::-1]
    return centers[np.argmax(w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2)]


def ref_scores(cos, score_type="max_log_prob"):  # get_scores, ood_logit_scale 1
    if score_type == "max_prob":
        return cos.softmax(dim=-1).max(dim=1).values
    return cos.softmax(dim=-1).log().max(dim=1).values


def ref_oce(scores, alpha, gamma=0.005, kind="avg_contrastive"):  # get_otsu_loss / otsu_loss
    w = torch.sigmoid((scores - alpha) / gamma)
    p_in, p_out = w.mean(), (1 - w).mean()
    mu_in = torch.dot(w, scores) / torch.sum(w)
    mu_out = torch.dot(1 - w, scores) / torch.sum(1 - w)
    if kind == "max_inter_var":
        return -p_in * p_out * (mu_in - mu_out).pow(2)
    if kind == "min_intra_var":
        return -p_out * mu_out.pow(2) - p_in * mu_in.pow(2)
    return -(mu_in - mu_out).pow(2)


def ref_tta(feats, protos, logit_scale):  # compute_loss_tta, use_softmax_entropy, frozen text
    _, pred = (feats @ protos.t()).topk(1, 1, True, True)
    lpi = logit_scale * feats @ protos[pred[:, 0]].t()
    lpt = lpi
    return (ref_softmax_entropy(lpi).mean(0) + ref_softmax_entropy(lpt).mean(0)) / 2


class RefCCM:  # memory/ccm.py; the one change: randperm draws from a given generator, not the global one
    def __init__(self, num_shots, num_classes, sample_size):
        self.num_shots, self.num_classes = num_shots, num_classes
        self.sample_size = min(sample_size, num_shots * num_classes)
        self.data = [None] * num_classes
        self.conf = [torch.empty((0,)) for _ in range(num_classes)]

    def update(self, images, labels, confidences):
        for i in range(self.num_classes):
            m = labels == i
            if m.sum().item() == 0:
                continue
            self.data[i] = images[m] if self.data[i] is None else torch.cat([self.data[i], images[m]])
            self.conf[i] = torch.cat([self.conf[i], confidences[m]])
            if len(self.conf[i]) > self.num_shots:
                _, top = self.conf[i].topk(k=self.num_shots)
                self.data[i], self.conf[i] = self.data[i][top], self.conf[i][top]

    def sample(self, generator):
        per = max(1, int(self.sample_size / self.num_classes))
        out = []
        for i in range(self.num_classes):
            if self.data[i] is None:
                continue
            if len(self.conf[i]) > per:
                pick = torch.randperm(len(self.conf[i]), generator=generator, dtype=torch.int32)[:per].long()
                out.append(self.data[i][pick])
            else:
                out.append(self.data[i])
        return torch.cat(out)


# ------------------------------------------------------------------ pure functions
def test_otsu_matches_the_transcription():
    rng = np.random.default_rng(0)
    for t in range(60):
        x = np.concatenate([rng.normal(-2.5, 0.02, rng.integers(1, 200)), rng.normal(-2.4, 0.03, rng.integers(1, 200))])
        x = x.astype(np.float32 if t % 2 else np.float64)
        assert C.otsu_threshold(x) == float(ref_otsu(x))
    assert C.otsu_threshold(np.array([-1.25])) == -1.25 and C.otsu_threshold(np.full(5, 0.5)) == 0.5


def _batch(n=32, k=5, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    feats = torch.randn(n, d, generator=g, dtype=torch.float64)
    feats[: n // 2] += 2.0 * text[torch.randint(0, k, (n // 2,), generator=g)]
    return F.normalize(feats, dim=1).requires_grad_(True), text


@pytest.mark.parametrize("kind", C.OOD_LOSSES)
def test_ood_score_threshold_and_oce_match_the_reference(kind):
    feats, text = _batch()
    cos = feats @ text.T
    scores = C.ood_score(cos)
    torch.testing.assert_close(scores, ref_scores(cos), rtol=0, atol=1e-15)
    alpha = torch.tensor([C.otsu_threshold(scores.detach().numpy())], dtype=torch.float64, requires_grad=True)
    assert alpha.item() == float(ref_otsu(ref_scores(cos).detach().numpy()))
    keep = scores > alpha
    assert 0 < keep.sum() < len(keep)  # the threshold splits the batch
    loss = C.oce_loss(scores, alpha, 0.005, kind)
    g = torch.autograd.grad(loss, (feats, alpha))
    ref = ref_oce(ref_scores(feats @ text.T), alpha, 0.005, kind)
    g_ref = torch.autograd.grad(ref, (feats, alpha))
    assert abs(loss.item() - ref.item()) < 1e-12
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale", [100.0, 14.3])
def test_contrastive_loss_and_regulariser_match_the_reference(scale):
    feats, text = _batch()
    loss = C.tta_loss(feats, text, scale) - 0.7 * C.mean_softmax_entropy(scale * feats @ text.T)
    ref = ref_tta(feats, text, scale) - 0.7 * ref_softmax_mean_entropy(scale * feats @ text.T)
    (g,), (g_ref,) = torch.autograd.grad(loss, feats), torch.autograd.grad(ref, feats)
    assert abs(loss.item() - ref.item()) < 1e-12
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    # the row entropy of the [B, B] image x pseudo-caption matrix, duplicates included (not the K-way entropy)
    pred = (feats @ text.T).argmax(1)
    q = (scale * feats @ text[pred].T).softmax(1)
    assert abs(C.tta_loss(feats, text, scale).item() - (-(q * q.log()).sum(1).mean()).item()) < 1e-9


def test_oce_with_an_empty_side_is_dropped_not_nan():
    scores = torch.tensor([-2.0, -2.1, -2.2])
    assert C.oce_loss(scores, torch.tensor([5.0])) is None and C.oce_loss(scores, torch.tensor([-9.0])) is None


def test_memory_keeps_the_most_confident_per_class_and_samples_per_class():
    mem, ref = C.ClassMemory(2, 3, 4), RefCCM(2, 3, 4)  # per class: max(1, int(4 / 3)) = 1
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        x, y, c = torch.randn(6, 1, 2, 2, generator=g), torch.randint(0, 3, (6,), generator=g), torch.rand(6, generator=g)
        mem.update(x, y, c)
        ref.update(x, y, c)
    for i in range(3):
        assert torch.equal(mem.conf[i], ref.conf[i]) and len(mem.conf[i]) <= 2
    assert torch.equal(mem.sample(torch.Generator().manual_seed(5)), ref.sample(torch.Generator().manual_seed(5)))
    assert C.ClassMemory(2, 3, 4).sample(torch.Generator()) is None


# ------------------------------------------------------------------ the update rule on the tiny model
def _context(s, size, n):
    it = iter(s.context.make_loader(batch_size=size, shuffle=False))
    batches = [next(it) for _ in range(n)]
    return dataclasses.replace(s.context, make_loader=lambda *a, **k: batches), batches


@pytest.mark.parametrize("update_alpha", [True, False])
def test_update_rule_matches_a_reference_driver(update_alpha):
    steps, lr, shots, sample, gamma = 3, 1e-2, 3, 20, 0.005
    opts = {"steps": steps, "lr_norm": lr, "num_shots": shots, "sample_size": sample, "beta_reg": 0.5,
            "beta_ood": 1.0, "update_alpha": str(update_alpha).lower()}
    s = start(plan_run(RunRequest(method="cliptta", protocol="opda", domain="clipart", backbone=TINY,
                                  options={k: str(v) for k, v in opts.items()})))
    m = s.method
    ctx, batches = _context(s, 24, 3)
    assert ("alpha" in s.groups) is update_alpha
    ref_model = copy.deepcopy(s.backbone.model)
    text = m.text_features().detach()
    scale, k = float(m.scale()), text.shape[0]
    params = [p for mod in ref_model.visual.modules() if isinstance(mod, torch.nn.LayerNorm)
              for p in (mod.weight, mod.bias)]
    alpha = torch.nn.Parameter(torch.tensor([0.5]), requires_grad=update_alpha)
    groups = [{"params": params}] + ([{"params": [alpha]}] if update_alpha else [])
    opt = torch.optim.Adam(groups, lr=lr, eps=1e-6)  # the reference's Adam
    mem, gen = RefCCM(shots, k, sample), torch.Generator().manual_seed(s.context.seed)

    def enc(x):
        return F.normalize(ref_model.encode_image(x).float(), dim=-1)

    expected, kept_total = {}, 0
    for images, idx in batches:
        with torch.no_grad():  # init_otsu
            alpha.data = torch.tensor([ref_otsu(ref_scores(enc(images) @ text.T).numpy())])
        for step in range(steps):
            f = enc(images)
            cos = f @ text.T
            loss_reg = ref_softmax_mean_entropy(scale * cos)
            scores = ref_scores(cos)
            loss_ood = ref_oce(scores, alpha, gamma)
            thr = alpha if update_alpha else torch.tensor([ref_otsu(scores.detach().numpy())])
            keep = scores > thr
            kept_total += int(keep.sum())
            loss_tta = ref_tta(f[keep], text, scale)
            if step == 0:
                with torch.no_grad():
                    c = f[keep] @ text.T
                    mem.update(images[keep].cpu(), c.topk(1, 1, True, True)[1][:, 0], ref_scores(c, "max_prob"))
            fm = enc(mem.sample(gen))
            loss_tta = loss_tta + ref_tta(fm, text, scale)
            loss_reg = loss_reg + ref_softmax_mean_entropy(scale * fm @ text.T)
            loss = 1.0 * loss_tta - 0.5 * loss_reg + 1.0 * loss_ood
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            expected[tuple(idx.tolist())] = enc(images) @ text.T

    initial = {n: p.detach().clone() for n, p in s.backbone.model.visual.named_parameters()}
    m.adapt(ctx)
    online = m.online_predictions()
    for key, cos in expected.items():
        np.testing.assert_allclose(online[list(key)], cos.numpy(), rtol=0, atol=2e-5)
    mine = dict(s.backbone.model.visual.named_parameters())
    for name, p in ref_model.visual.named_parameters():
        np.testing.assert_allclose(mine[name].detach().numpy(), p.detach().numpy(), rtol=0, atol=2e-5, err_msg=name)
    assert any(not torch.equal(mine[n], initial[n]) for n in mine)
    assert abs(m.alpha.item() - alpha.item()) < 1e-6
    info = m.info()
    assert info["batches"] == 3 and info["memory_images"] == sum(len(c) for c in mem.conf)
    assert abs(info["kept_fraction"] - kept_total / (3 * steps * 24)) < 1e-12
    if update_alpha:
        assert info["alpha_mean_move_per_batch"] != 0  # alpha learns within a batch


def test_closed_set_variant_runs_without_threshold():
    s = start(plan_run(RunRequest(method="cliptta", protocol="opda", domain="clipart", backbone=TINY,
                                  options={"steps": "1", "use_ood_loss": "false", "detect_ood": "false",
                                           "batch_size": "128"})))
    assert "alpha" not in s.groups
    s.method.adapt(s.context)
    info = s.method.info()
    assert info["kept_fraction"] == 1.0 and "alpha_last" not in info


# ------------------------------------------------------------------ end to end
def test_cli_run_and_seeded_rerun_are_identical(cli):
    args = ("run", "--method", "cliptta", "--protocol", "oda", "--domain", "real", "--backbone", TINY,
            "--set", "steps=2", "--set", "batch_size=64", "--set", "num_shots=2")
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert any(ln.startswith("cliptta") and "| shapes/oda/real |" in ln for ln in r.output.splitlines()), r.output
    [d] = list(Path("results/runs").iterdir())
    preds = (d / "predictions.npz").read_bytes()
    assert cli(*args, "--force").exit_code == 0
    assert (d / "predictions.npz").read_bytes() == preds


def test_bf16_autocast_run_keeps_scores_and_losses_in_fp32(cli):
    """The default precision on CUDA: the cosines, the Otsu threshold and the losses stay fp32 under autocast."""
    r = cli("run", "--method", "cliptta", "--protocol", "oda", "--domain", "real", "--backbone", TINY,
            "--precision", "bf16", "--set", "steps=1", "--set", "batch_size=128", "--set", "num_shots=2")
    assert r.exit_code == 0, r.output
