"""TransCLIP-ZS against a restatement of the official solver (MaxZanella/transduction-for-vlms, zero-shot path)."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from ueobench.core.errors import UeobenchError
from ueobench.method.options import build_options
from ueobench.method.registry import get_method
from ueobench.scoring.scores import softmax
from ueobench.store.records import load_predictions


def port():
    return importlib.import_module(get_method("transclip").__module__)


# ------------------------------------------------------------------------ the official computation, restated

def official_transclip_zs(x, t, temp=100.0, lam=1.0, k_nn=3, outer=10, inner=5, n_top=8):
    """TransCLIP_solver with no shots, written out per class in float64 numpy: z [N, K], μ [K, D], v [D]."""
    n, d = x.shape
    k = t.shape[0]
    y_hat = softmax(temp * x @ t.T, axis=1)
    z = y_hat.copy()
    mu = np.zeros((k, d))
    for c in range(k):  # init_mu: the 8 largest z in column c, z-weighted mean, normalised
        sel = np.argsort(-z[:, c], kind="stable")[:n_top]
        mu[c] = (z[sel, c:c + 1] * x[sel]).mean(0)
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    var = np.full(d, 1.0 / d)  # init_sigma: "std" = 1/d, used as a variance
    aff = x @ x.T
    nb = np.argsort(-aff, axis=1, kind="stable")[:, 1:k_nn + 1]  # build_affinity_matrix: topk(k + 1), first
    w = np.zeros((n, n))                                            # hit dropped, raw cosines, not symmetrised
    np.put_along_axis(w, nb, np.take_along_axis(aff, nb, axis=1), axis=1)
    for it in range(outer + 1):
        ll = np.stack([-0.5 * (((x - mu[c]) ** 2) / var).sum(1) for c in range(k)], axis=1)
        for _ in range(inner):  # update_z
            a = ll + (50 / (k_nn * 2)) * (w.T @ z + w @ z)
            a = a - a.max(1, keepdims=True)
            a = y_hat ** lam * np.exp(a / 50)
            z = a / a.sum(1, keepdims=True)
        if it == outer:
            break
        mu = np.stack([(z[:, c:c + 1] * x).sum(0) / z[:, c].sum() for c in range(k)])  # update_mu
        mu /= np.linalg.norm(mu, axis=1, keepdims=True)
        var = sum((z[:, c:c + 1] * (x - mu[c]) ** 2).sum(0) for c in range(k)) / z.sum()  # update_sigma
    return z, mu, var


def data(n, d, k, seed, present=None, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    t = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, present or k, (n,), generator=g)
    x = F.normalize(t[y] + spread * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return x, t


CASES = [(60, 16, 4, 0, None), (80, 12, 10, 1, 3)]  # the second: only 3 of the 10 classes present


@pytest.mark.parametrize("n,d,k,seed,present", CASES)
def test_solver_equals_the_official_computation(n, d, k, seed, present):
    x, t = data(n, d, k, seed, present)
    z_ref, mu_ref, var_ref = official_transclip_zs(x.numpy(), t.numpy())
    out = port().transclip_zs(x, t, 100.0)
    assert np.abs(out["z"].numpy() - z_ref).max() < 1e-10
    assert np.abs(out["mu"].numpy() - mu_ref).max() < 1e-10 and np.abs(out["var"].numpy() - var_ref).max() < 1e-12
    assert torch.allclose(out["potentials"].softmax(1), out["z"], atol=1e-14, rtol=0)  # the output is log z + c
    assert (out["z"].argmax(1).numpy() == z_ref.argmax(1)).all()


def test_options_reach_the_solver():
    x, t = data(50, 8, 3, 2)
    z_ref, _, _ = official_transclip_zs(x.numpy(), t.numpy(), temp=30.0, lam=0.5, k_nn=2, outer=3, inner=2, n_top=5)
    out = port().transclip_zs(x, t, 30.0, lam=0.5, n_neighbors=2, max_iter=3, inner_iter=2, n_confident=5)
    assert np.abs(out["z"].numpy() - z_ref).max() < 1e-10


def test_symmetric_product_is_w_plus_w_transposed():
    x, _ = data(40, 6, 3, 3)
    g = port().KnnAffinity(x, 3)
    dense = torch.zeros(40, 40, dtype=torch.float64)
    dense.scatter_(1, g.idx, g.w)
    z = torch.rand(40, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(g.symmetric_product(z), (dense + dense.T) @ z, atol=1e-14)


def method(options: dict | None = None, text=None, scale=100.0):
    cls = get_method("transclip")
    m = cls(build_options(cls, {k: str(v) for k, v in (options or {}).items()}))
    m.class_names, m.text, m.scale = [str(i) for i in range(len(text))], text.float(), scale
    m._clear()
    m.snapshot()
    return m


def test_method_outputs_both_splits():
    x, t = data(60, 16, 4, 0)
    x, t = x.float(), t.float()  # what the harness hands over (cached fp32 features)
    m = method(text=t, scale=100.0)
    before = m.predict_features(x[:5])
    assert torch.equal(before, x[:5] @ t.T)  # before adapting: zero-shot
    m.adapt(SimpleNamespace(image_features=lambda: x))
    z_ref, mu_ref, var_ref = official_transclip_zs(x.double().numpy(), t.double().numpy())
    online = m.online_predictions()
    assert online.shape == (60, 4) and np.isfinite(online).all()
    assert np.abs(softmax(100.0 * online.astype(np.float64), axis=1) - z_ref).max() < 1e-4  # fp32 storage
    assert (online.argmax(1) == z_ref.argmax(1)).all()
    # test split: one z-step of the final state without the neighbour term, z ∝ ŷ ⊙ exp(L / 50)
    xt = data(7, 16, 4, 9)[0]
    y_hat = softmax(100.0 * xt.numpy() @ t.double().numpy().T, axis=1)
    ll = np.stack([-0.5 * (((xt.numpy() - mu_ref[c]) ** 2) / var_ref).sum(1) for c in range(4)], axis=1)
    want = y_hat * np.exp((ll - ll.max(1, keepdims=True)) / 50)
    want /= want.sum(1, keepdims=True)
    got = softmax(100.0 * m.predict_features(xt.float()).double().numpy(), axis=1)
    assert np.abs(got - want).max() < 1e-4
    info = m.info()
    assert (info["z_steps"], info["moment_steps"], info["classes"], info["empty_class_guards"]) == (11, 10, 4, 0)
    m.reset()
    assert torch.equal(m.predict_features(x[:5]), before) and m.online_predictions() is None


def test_empty_class_keeps_its_mean_instead_of_nan():
    x, t = data(40, 8, 3, 4, present=1)
    out = port().transclip_zs(x, t, 5000.0)  # ŷ underflows to exactly 0 for the absent classes
    assert out["guards"] > 0
    assert torch.isfinite(out["potentials"]).all() and torch.isfinite(out["mu"]).all()
    with np.errstate(all="ignore"):
        z_ref, _, _ = official_transclip_zs(x.numpy(), t.numpy(), temp=5000.0)
    assert np.isnan(z_ref).any()  # what the reference would give


def test_too_few_images_is_refused():
    x, t = data(7, 8, 3, 5)
    with pytest.raises(UeobenchError, match="at least 8"):
        method(text=t).adapt(SimpleNamespace(image_features=lambda: x.float()))


def test_cli_run_records_transductive_outputs_and_reruns_identically(cli):
    args = ("run", "--method", "transclip", "--protocol", "opda", "--domain", "clipart", "--backbone", TINY)
    r = cli(*args)
    assert r.exit_code == 0, r.output
    [d] = list(Path("results/runs").iterdir())
    rec = json.loads((d / "record.json").read_text())
    assert rec["method"]["adaptation"] == "transductive"
    assert rec["evaluation"]["predictions"] == {"test": "cached image features",
                                                "target": "online outputs while adapting"}
    info = rec["method"]["info"]
    assert info["z_steps"] == 11 and info["classes"] == 10 and info["empty_class_guards"] == 0
    p = load_predictions(d)
    scale = float(p["logit_scale"])
    z = softmax(scale * p["target_logits"].astype(np.float64), axis=1)
    assert np.isfinite(p["target_logits"]).all() and np.allclose(z.sum(1), 1)
    preds = (d / "predictions.npz").read_bytes()
    assert cli(*args, "--force").exit_code == 0
    assert (d / "predictions.npz").read_bytes() == preds
