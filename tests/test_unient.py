"""UniEnt (CLIPTTA's CLIP port): the loss of one batch, the partition score and its GMM weights against a
transcription of the port (MarcLafon/cliptta ttavlm/methods/unient.py at f4221f4), the update rule on the tiny
model against a reference driver, and end-to-end runs."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture

from conftest import TINY
from ueobench.methods import unient as U
from ueobench.runs.plan import plan_run
from ueobench.runs.request import RunRequest
from ueobench.runs.session import start


# ------------------------------------------------------------------ transcription of the port (restated)
def ref_softmax_entropy(x, eps=1e-6):  # ttavlm/lib/softmax_entropy.py
    return -((x + eps).softmax(1) * (x + eps).log_softmax(1)).sum(1)


def ref_softmax_mean_entropy(x, eps=1e-6):
    p = (x + eps).softmax(1).mean(0)
    return -(p * torch.log(p + eps)).sum()


def ref_partition(cos, logit_scale):
    """forward_and_adapt: max softmax at logit_scale of the adapted cosines, min-max normalised, 1 - ..."""
    m = (cos * logit_scale).softmax(dim=1).max(1).values
    m = (m - m.min()) / (m.max() - m.min())
    return 1 - m.detach().cpu().numpy().reshape(-1, 1)


def ref_weights(ood_scores, random_state):
    gm = GaussianMixture(n_components=2, random_state=random_state).fit(ood_scores)
    w = gm.predict_proba(ood_scores)
    return w if gm.means_[0, 0] < gm.means_[1, 0] else 1 - w


def ref_loss(cos, w, logit_scale, beta_tta=1.0, beta_reg=1.0, beta_ood=0.1, use_ood_loss=False):
    w_id, w_ood = torch.from_numpy(w[:, 0]), torch.from_numpy(w[:, 1])
    ent = ref_softmax_entropy(logit_scale * cos)
    loss_tta = ent.mul(w_id).mean(0)
    loss_reg = ref_softmax_mean_entropy(logit_scale * cos)
    loss_ood = ent.mul(w_ood).mean(0) if use_ood_loss else 0.0
    return beta_tta * loss_tta - beta_reg * loss_reg - beta_ood * loss_ood


def _batch(n=40, k=6, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    feats = torch.randn(n, d, generator=g, dtype=torch.float64)
    feats[: n // 2] += 0.5 * d ** 0.5 * text[torch.randint(0, k, (n // 2,), generator=g)]  # a confident half, a flat half
    return F.normalize(feats, dim=1).requires_grad_(True), text


@pytest.mark.parametrize("use_ood_loss", [False, True])
@pytest.mark.parametrize("scale", [100.0, 21.9])
def test_loss_of_one_batch_matches_the_port(use_ood_loss, scale):
    feats, text = _batch()
    cos = feats @ text.T
    u = U.partition_score(cos.detach(), scale)
    np.testing.assert_allclose(u.numpy().reshape(-1, 1), ref_partition(cos, scale), rtol=0, atol=1e-15)
    w = U.gmm_weights(u, 7)
    w_ref = ref_weights(ref_partition(cos, scale), 7)
    assert w.dtype == torch.float64 and 0.3 < w[:, 0].mean() < 0.7  # a real two-way split
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=0, atol=1e-12)
    args = (scale, 1.0, 0.7, 0.3, use_ood_loss)
    loss = U.unient_loss(cos, w, *args)
    (g,) = torch.autograd.grad(loss, feats)
    ref = ref_loss(feats @ text.T, w_ref, *args)
    (g_ref,) = torch.autograd.grad(ref, feats)
    assert abs(loss.item() - ref.item()) < 1e-12
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


def test_the_lower_mean_component_is_known_and_the_seed_fixes_the_fit():
    rng = np.random.default_rng(0)
    u = torch.from_numpy(np.concatenate([rng.normal(0.1, 0.03, 30), rng.normal(0.8, 0.05, 20)]))
    w = U.gmm_weights(u, 0)
    assert (w[:30, 0] > 0.99).all() and (w[30:, 1] > 0.99).all()
    torch.testing.assert_close(w.sum(1), torch.ones(50, dtype=torch.float64))
    assert torch.equal(U.gmm_weights(u, 3), U.gmm_weights(u, 3))


def test_degenerate_batches_are_all_known_and_finite():
    for cos in (torch.rand(1, 5), torch.full((4, 5), 0.2)):  # batch of one; every score equal
        u = U.partition_score(cos, 100.0)
        assert torch.isfinite(u).all()
        w = U.gmm_weights(u, 0)
        assert torch.equal(w[:, 0], torch.ones(len(cos), dtype=torch.float64))
        assert torch.isfinite(U.unient_loss(cos, w, 100.0, use_ood_loss=True))


# ------------------------------------------------------------------ the update rule on the tiny model
def _two_batch_context(s, size=24):
    loader = s.context.make_loader(batch_size=size, shuffle=False)
    it = iter(loader)
    batches = [next(it), next(it)]
    return dataclasses.replace(s.context, make_loader=lambda *a, **k: batches), batches


@pytest.mark.parametrize("report", ["after", "before"])
def test_update_rule_matches_a_reference_driver(report):
    steps, lr = 3, 1e-2  # a large lr so that the parameters visibly move
    s = start(plan_run(RunRequest(method="unient", protocol="opda", domain="clipart", backbone=TINY,
                                  options={"steps": str(steps), "lr_norm": str(lr), "use_ood_loss": "true",
                                           "report": report})))
    m = s.method
    ctx, batches = _two_batch_context(s)
    ref_model = copy.deepcopy(s.backbone.model)
    text = m.text_features().detach()
    scale = float(m.scale())
    params = [p for mod in ref_model.visual.modules() if isinstance(mod, torch.nn.LayerNorm)
              for p in (mod.weight, mod.bias)]
    opt = torch.optim.Adam(params, lr=lr, eps=1e-6)  # the port's Adam

    def enc(x):
        return F.normalize(ref_model.encode_image(x).float(), dim=-1)

    expected = {}
    for images, idx in batches:
        for step in range(steps):
            cos = enc(images) @ text.T
            if step == 0 and report == "before":
                expected[tuple(idx.tolist())] = cos.detach().clone()
            w = ref_weights(ref_partition(cos, scale).astype(np.float64), s.context.seed)
            loss = ref_loss(cos, w, scale, 1.0, 1.0, 0.1, True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if report == "after":
            with torch.no_grad():
                expected[tuple(idx.tolist())] = enc(images) @ text.T

    initial = {n: p.detach().clone() for n, p in s.backbone.model.visual.named_parameters()}
    m.adapt(ctx)
    online = m.online_predictions()
    for key, cos in expected.items():
        np.testing.assert_allclose(online[list(key)], cos.numpy(), rtol=0, atol=2e-6)
    mine = dict(s.backbone.model.visual.named_parameters())
    for name, p in ref_model.visual.named_parameters():
        np.testing.assert_allclose(mine[name].detach().numpy(), p.detach().numpy(), rtol=0, atol=2e-6, err_msg=name)
    assert any(not torch.equal(mine[n], initial[n]) for n in mine)
    info = m.info()
    assert info["batches"] == 2 and info["gmm_fits"] == 2 * steps and info["gmm_random_state"] == s.context.seed


# ------------------------------------------------------------------ end to end
def test_cli_run_and_seeded_rerun_are_identical(cli):
    args = ("run", "--method", "unient", "--protocol", "oda", "--domain", "real", "--backbone", TINY,
            "--set", "steps=2", "--set", "batch_size=64", "--set", "use_ood_loss=true")
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert any(ln.startswith("unient") and "| shapes/oda/real |" in ln for ln in r.output.splitlines()), r.output
    [d] = list(Path("results/runs").iterdir())
    preds = (d / "predictions.npz").read_bytes()
    assert cli(*args, "--force").exit_code == 0
    assert (d / "predictions.npz").read_bytes() == preds
