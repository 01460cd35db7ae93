"""StatA against a restatement of the official solver (MaxZanella/StatA ``solvers/StatA.py`` at eea8637)."""
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
    return importlib.import_module(get_method("stata").__module__)


# ------------------------------------------------------------------------ the official computation, restated

def official_stata(x, t, temp=100.0, alpha=1.0, soft=False, lam_y=1.0, lam_lap=1.0, k_nn=3, outer=10, inner=5,
                   chunk=2500):
    """StatA_solver written out per class in float64 numpy: z [N, K], μ [K, D], Σ [K, D]. ``chunk`` is init_cov's
    row chunk, inside whose loop the reference divides the running sum by N."""
    n = x.shape[0]
    k = t.shape[0]
    y_hat = softmax(temp * x @ t.T, axis=1)
    z = y_hat.copy()
    mu = t.copy()
    acc = None
    for s in range(0, n, chunk):  # init_cov, as written
        part = sum((z[s:s + chunk, c:c + 1] * (x[s:s + chunk] - t[c]) ** 2).sum(0) for c in range(k))
        acc = part if acc is None else acc + part
        acc = acc / n
    anchor = np.tile(acc, (k, 1))
    cov = anchor.copy()
    aff = x @ x.T
    nb = np.argsort(-aff, axis=1, kind="stable")[:, 1:k_nn + 1]  # build_affinity_matrix: topk(k + 1), first
    w = np.zeros((n, n))                                            # hit dropped, raw cosines, not symmetrised
    np.put_along_axis(w, nb, np.take_along_axis(aff, nb, axis=1), axis=1)
    for it in range(outer + 1):
        ll = np.stack([-0.5 * (((x - mu[c]) ** 2) / cov[c]).sum(1) for c in range(k)], axis=1)
        for _ in range(inner):  # update_z
            a = ll + lam_lap * (50 / (k_nn * 2)) * (w.T @ z + w @ z)
            a = a - 0.5 * np.log(cov).sum(1)[None, :]
            a = a - a.max(1, keepdims=True)
            a = y_hat ** lam_y * np.exp(a / 50)
            z = a / a.sum(1, keepdims=True)
        if it == outer:
            break
        if soft:  # update_beta
            nk = z.sum(0)
            beta = nk / (alpha + nk)
        else:
            nk = np.bincount(z.argmax(1), minlength=k).astype(np.float64)
            beta = nk / (alpha + nk + 1e-12)
        new_mu, new_cov = np.zeros_like(mu), np.zeros_like(cov)
        for c in range(k):
            m = (z[:, c:c + 1] * x).sum(0) / z[:, c].sum()  # update_mu
            m /= np.linalg.norm(m)
            new_mu[c] = beta[c] * m + (1 - beta[c]) * t[c]
            new_mu[c] /= np.linalg.norm(new_mu[c])
        for c in range(k):  # update_cov, with the new μ
            emp = (z[:, c:c + 1] * (x - new_mu[c]) ** 2).sum(0) / z[:, c].sum()
            new_cov[c] = beta[c] * emp + (1 - beta[c]) * (anchor[c] + (t[c] - new_mu[c]) ** 2)
        mu, cov = new_mu, new_cov
    return z, mu, cov


def data(n, d, k, seed, present=None, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    t = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, present or k, (n,), generator=g)
    x = F.normalize(t[y] + spread * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return x, t


@pytest.mark.parametrize("n,d,k,seed,present,kw", [
    (60, 16, 4, 0, None, {}),
    (80, 12, 10, 1, 3, {}),  # only 3 of the 10 classes present: the absent ones fall back to their anchor
    (80, 12, 10, 1, 3, {"soft": True, "alpha": 5.0}),
    (50, 8, 3, 2, None, {"temp": 30.0, "lam_y": 0.5, "lam_lap": 2.0, "k_nn": 2, "outer": 3, "inner": 2}),
])
def test_solver_equals_the_official_computation(n, d, k, seed, present, kw):
    x, t = data(n, d, k, seed, present)
    z_ref, mu_ref, cov_ref = official_stata(x.numpy(), t.numpy(), **kw)
    names = {"temp": "temperature", "soft": "soft_beta", "lam_y": "lambda_y_hat", "lam_lap": "lambda_laplacian",
             "k_nn": "n_neighbors", "outer": "max_iter", "inner": "inner_iter", "alpha": "alpha"}
    args = {names[a]: v for a, v in kw.items()}
    args.setdefault("temperature", 100.0)
    out = port().stata_solve(x, t, **args)
    assert np.abs(out["z"].numpy() - z_ref).max() < 1e-10
    assert np.abs(out["mu"].numpy() - mu_ref).max() < 1e-10
    assert np.abs(out["cov"].numpy() - cov_ref).max() / cov_ref.max() < 1e-10
    assert torch.allclose(out["potentials"].softmax(1), out["z"], atol=1e-14, rtol=0)
    anchored = out["beta"] == 0  # hard β: classes nobody predicts are exactly at their anchor, μ = t
    assert bool(anchored.any()) == (present is not None and not kw.get("soft", False))
    assert torch.allclose(out["mu"][anchored], t[anchored], atol=1e-12)


def test_anchor_covariance_chunk_quirk():
    x, t = data(2600, 6, 3, 3)
    z = (100 * x @ t.T).softmax(1)
    quirk = port().anchor_covariance(x, t, z, chunk_quirk=True)
    intended = port().anchor_covariance(x, t, z, chunk_quirk=False)
    first = sum((z[:2500, c:c + 1] * (x[:2500] - t[c]) ** 2).sum(0) for c in range(3))
    rest = sum((z[2500:, c:c + 1] * (x[2500:] - t[c]) ** 2).sum(0) for c in range(3))
    assert torch.allclose(quirk, (first / 2600 + rest) / 2600, rtol=1e-12)  # (acc / N + c2) / N
    assert torch.allclose(intended, (first + rest) / 2600, rtol=1e-12)
    assert quirk.max() < 0.1 * intended.min()  # the quirk shrinks Σ0 here by ~25x
    small = port().anchor_covariance(x[:300], t, z[:300], chunk_quirk=True)  # one chunk: no effect
    assert torch.equal(small, port().anchor_covariance(x[:300], t, z[:300], chunk_quirk=False))


def test_solver_with_more_than_one_chunk_equals_the_official_computation():
    x, t = data(2600, 6, 3, 3)
    z_ref, _, _ = official_stata(x.numpy(), t.numpy(), outer=1)
    assert np.abs(port().stata_solve(x, t, 100.0, max_iter=1)["z"].numpy() - z_ref).max() < 1e-10
    z_int, _, _ = official_stata(x.numpy(), t.numpy(), outer=1, chunk=10 ** 9)
    assert np.abs(port().stata_solve(x, t, 100.0, max_iter=1, cov_chunk_quirk=False)["z"].numpy() - z_int).max() < 1e-10


def test_stream_batches():
    sb = port().stream_batches
    order = torch.randperm(70, generator=torch.Generator().manual_seed(3))
    assert [b.tolist() for b in sb(70, 0, 3, 4)] == [order.tolist()]
    batches = sb(70, 16, 3, 4)
    assert [len(b) for b in batches] == [16, 16, 16, 16, 6] and torch.equal(torch.cat(batches), order)
    assert [len(b) for b in sb(66, 16, 3, 4)] == [16, 16, 16, 18]  # a remainder of 2 < n_neighbors + 1 joins


def method(options: dict | None = None, text=None, scale=100.0):
    cls = get_method("stata")
    m = cls(build_options(cls, {k: str(v) for k, v in (options or {}).items()}))
    m.class_names, m.text, m.scale = [str(i) for i in range(len(text))], text.float(), scale
    m._clear()
    m.snapshot()
    return m


def gmm_posterior(x, t, mu, cov, temp=100.0):
    y_hat = softmax(temp * x @ t.T, axis=1)
    a = np.stack([-0.5 * (((x - mu[c]) ** 2) / cov[c]).sum(1) for c in range(len(t))], axis=1)
    a = a - 0.5 * np.log(cov).sum(1)[None, :]
    p = y_hat * np.exp((a - a.max(1, keepdims=True)) / 50)
    return p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("batch_size", [0, 16])
def test_method_solves_each_batch_afresh_and_predicts_test_from_the_whole_set(batch_size):
    x, t = data(70, 12, 4, 5, present=3)
    x, t = x.float(), t.float()
    m = method({"batch_size": batch_size}, text=t)
    before = m.predict_features(x[:5])
    assert torch.equal(before, x[:5] @ t.T)
    m.adapt(SimpleNamespace(image_features=lambda: x, seed=3))
    xd, td = x.double().numpy(), t.double().numpy()
    online = softmax(100.0 * m.online_predictions().astype(np.float64), axis=1)
    order = torch.randperm(70, generator=torch.Generator().manual_seed(3))
    for idx in (order.split(batch_size) if batch_size else [order]):
        z_ref, _, _ = official_stata(xd[idx.numpy()], td)  # each batch solved on its own, no state carried over
        assert np.abs(online[idx] - z_ref).max() < 1e-4
    _, mu, cov = official_stata(xd[order.numpy()], td)  # the test split: the whole set's final state, no neighbour term
    xt = data(9, 12, 4, 6)[0].numpy()
    got = softmax(100.0 * m.predict_features(torch.from_numpy(xt).float()).double().numpy(), axis=1)
    assert np.abs(got - gmm_posterior(xt, td, mu, cov)).max() < 1e-4
    info = m.info()
    assert info["batches"] == (5 if batch_size else 1) and info["empty_class_guards"] == 0
    m.reset()
    assert torch.equal(m.predict_features(x[:5]), before) and m.online_predictions() is None


def test_empty_class_falls_back_to_its_anchor_instead_of_nan():
    x, t = data(40, 8, 3, 4, present=1)
    out = port().stata_solve(x, t, 1e5)  # ŷ underflows to exactly 0 for the absent classes
    assert out["guards"] > 0 and torch.isfinite(out["potentials"]).all()
    empty = out["z"].sum(0) == 0
    assert bool(empty.any()) and torch.allclose(out["mu"][empty], t[empty], atol=1e-12)
    with np.errstate(all="ignore"):
        z_ref, _, _ = official_stata(x.numpy(), t.numpy(), temp=1e5)
    assert np.isnan(z_ref).any()  # what the reference would give


def test_batches_too_small_are_refused():
    x, t = data(20, 8, 3, 5)
    with pytest.raises(UeobenchError, match="at least n_neighbors"):
        method({"batch_size": 3}, text=t).adapt(SimpleNamespace(image_features=lambda: x.float(), seed=0))


def test_cli_batch_mode_runs_and_reruns_identically(cli):
    args = ("run", "--method", "stata", "--protocol", "opda", "--domain", "clipart", "--backbone", TINY,
            "--set", "batch_size=64")
    r = cli(*args)
    assert r.exit_code == 0, r.output
    [d] = list(Path("results/runs").iterdir())
    rec = json.loads((d / "record.json").read_text())
    assert rec["method"]["adaptation"] == "transductive"
    assert rec["evaluation"]["predictions"] == {"test": "cached image features",
                                                "target": "online outputs while adapting"}
    info = rec["method"]["info"]
    assert info["batches"] > 1 and max(info["batch_sizes"]) <= 64 + 3 and info["cov_chunk_quirk_active"] is False
    p = load_predictions(d)
    assert np.isfinite(p["target_logits"]).all() and np.isfinite(p["test_logits"]).all()
    preds = (d / "predictions.npz").read_bytes()
    assert cli(*args, "--force").exit_code == 0
    assert (d / "predictions.npz").read_bytes() == preds  # (the whole-set default: tests/test_methods.py)
