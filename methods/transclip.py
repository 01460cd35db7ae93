"""TransCLIP-ZS (Zanella et al., NeurIPS 2024): transductive Gaussian mixture + kNN Laplacian, anchored on zero-shot.

Training-free and transductive, on the cached eval-transform features of the whole adaptation set and the text
embeddings of the K known classes, as the official solver computes it (MaxZanella/transduction-for-vlms,
``TransCLIP_solver/TransCLIP.py`` and ``TransCLIP_utils.py``, zero-shot path):

1. ŷ = softmax(s·x·t) and z = ŷ (s: the backbone's logit scale; the reference hard-codes 100, ``scale=100``);
2. μ_c = normalize(Σ z_ic·x_i) over the ``n_confident`` (8) samples with the largest z_ic in column c (whatever
   their argmax); one shared diagonal variance v = 1/D (the reference calls it "std", it is a variance);
3. W: each image's 3 nearest neighbours by cosine (the first top-k hit dropped as "self"), weighted by the raw
   cosines, not symmetrised;
4. ``max_iter + 1`` (11) rounds of ``inner_iter`` (5) Jacobi z-steps
   z_i ∝ ŷ_i^λ ⊙ exp( (L_i + (50/2k)·((W + Wᵀ)z)_i) / 50 ),  L_ic = −½ Σ_d (x_id − μ_cd)² / v_d,
   each round but the last followed by μ_c = normalize(Σ_i z_ic x_i / Σ_i z_ic) and
   v_d = Σ_ic z_ic (x_id − μ_cd)² / Σ_ic z_ic with the new μ. The 1/50 on the log-likelihood and the 50/(2k)
   on the Laplacian are the code's constants (k = n_neighbors); λ = 1 in zero-shot.

Defaults are the reference's zero-shot constants (it has no other setting to tune in zero-shot, and the same
constants serve every dataset): λ 1, 3 neighbours, 10 outer and 5 inner iterations, 8 confident samples.
K is the number of known classes (the reference counts the test labels' distinct values and fails when a class
is absent, which partial-set shifts make the rule). All arithmetic is float64.

What it reports. Target split: the transductive assignments z of the adaptation set as the log-potentials u
whose softmax they are, u_ic = λ·s·x_i·t_c + (L_ic + (50/2k)·((W + Wᵀ)z)_ic)/50 (the reference's exponent,
without its max-subtraction), divided by s: so softmax(s·output) = z exactly (MSP and the entropy rule read
TransCLIP's own probabilities), argmax = TransCLIP's prediction, MCM at T = 1 sees z^(1/s), and energy or
max-logit read the unnormalised potential (a GMM log-likelihood term included), never −inf where z underflows.
Test split (the reference has no inductive rule: it transduces on its test set): one z-step from the final
(μ, v) without the neighbour term, u = λ·s·x·t + L/50, divided by s. Before adapting: the zero-shot cosines.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ueobench import (
    AdaptContext,
    Method,
    Options,
    UeobenchError,
    option,
    register_method,
)
from ueobench.models import encode_images, encode_texts, prompt_texts

GMM_TEMPERATURE = 50.0  # the reference divides the log-likelihood (and Laplacian) exponent by 50
KNN_ROW_CHUNK = 4096  # rows of the N x N cosine matrix held at once (memory only)


# ------------------------------------------------------------------------------------------- kNN affinity

class KnnAffinity:
    """The reference's sparse W: row i holds cos(x_i, x_j) at its ``n_neighbors`` nearest j (first top-k hit
    dropped as "self"), raw cosines, not symmetrised. ``symmetric_product(z)`` is (W + Wᵀ)·z, computed with
    gathers and collision-free index writes only, so it is bit-identical from run to run on any device."""

    def __init__(self, x: torch.Tensor, n_neighbors: int):
        n = x.shape[0]
        idx, val = [], []
        for s in range(0, n, KNN_ROW_CHUNK):
            top = (x[s: s + KNN_ROW_CHUNK] @ x.T).topk(n_neighbors + 1, dim=1, largest=True)
            idx.append(top.indices[:, 1:])
            val.append(top.values[:, 1:])
        self.idx, self.w = torch.cat(idx), torch.cat(val)  # [N, k]
        # Wᵀ: the edges grouped by target column; "layer" r holds each column's r-th incoming edge (rows in
        # ascending order), so that within one layer every column occurs at most once.
        rows = torch.arange(n).repeat_interleave(n_neighbors)
        cols, vals = self.idx.reshape(-1).cpu(), self.w.reshape(-1).cpu()
        order = torch.argsort(cols, stable=True)
        rows, cols, vals = rows[order], cols[order], vals[order]
        counts = torch.bincount(cols, minlength=n)
        rank = torch.arange(len(cols)) - (torch.cumsum(counts, 0) - counts)[cols]
        dev = x.device
        self.layers = [(cols[rank == r].to(dev), rows[rank == r].to(dev), vals[rank == r].to(dev))
                       for r in range(int(counts.max()))]
        self.max_in_degree = int(counts.max())

    def symmetric_product(self, z: torch.Tensor) -> torch.Tensor:
        wt = torch.zeros_like(z)
        for cols, rows, vals in self.layers:  # Wᵀz
            wt[cols] += vals[:, None] * z[rows]
        wz = torch.zeros_like(z)
        for j in range(self.idx.shape[1]):  # Wz
            wz += self.w[:, j: j + 1] * z[self.idx[:, j]]
        return wt + wz


# ------------------------------------------------------------------------------------------- the Gaussians

def diag_loglik(x: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """L_ic = −½ Σ_d (x_id − μ_cd)² / var_cd for x [N, D], μ [K, D], var [K, D] (or [D], shared), as matmuls."""
    var = var.expand_as(mu)
    prec = 1.0 / var
    quad = (x * x) @ prec.T - 2.0 * x @ (mu * prec).T + (mu * mu * prec).sum(1)[None, :]
    return -0.5 * quad


def weighted_sq_dev(x: torch.Tensor, z: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """S_cd = Σ_i z_ic (x_id − μ_cd)², [K, D], as matmuls."""
    return z.T @ (x * x) - 2.0 * mu * (z.T @ x) + mu * mu * z.sum(0)[:, None]


def normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------------------- the solver

@torch.no_grad()
def transclip_zs(x: torch.Tensor, text: torch.Tensor, temperature: float, lam: float = 1.0, n_neighbors: int = 3,
                 max_iter: int = 10, inner_iter: int = 5, n_confident: int = 8) -> dict:
    """TransCLIP-ZS on features x [N, D] and text embeddings [K, D] (unit norm, any float dtype).

    Returns ``potentials`` u [N, K] with z = softmax(u), ``z``, the final ``mu`` [K, D] and ``var`` [D], and
    ``guards`` (how often a class's z-mass was exactly 0, where the reference would produce NaN: the class then
    starts at its text embedding, or keeps its previous mean)."""
    d = x.shape[1]
    logits = temperature * x @ text.T
    base = lam * logits  # log ŷ^λ up to a per-row constant
    z = logits.softmax(1)
    top = z.topk(n_confident, dim=0).indices  # [n_confident, K], column-wise
    seed_sum = (z.gather(0, top)[:, :, None] * x[top]).sum(0)  # z-weighted (the mean's 1/8 cancels)
    blank = seed_sum.norm(dim=1) == 0  # every z of the column is 0 (the reference: 0/0 = NaN); start at the text
    guards = int(blank.sum())
    mu = torch.where(blank[:, None], text, normalize(seed_sum))
    var = torch.full((d,), 1.0 / d, dtype=x.dtype, device=x.device)
    graph = KnnAffinity(x, n_neighbors)
    laplacian_weight = GMM_TEMPERATURE / (2 * n_neighbors)
    u = base
    for it in range(max_iter + 1):
        ll = diag_loglik(x, mu, var)
        for _ in range(inner_iter):
            u = base + (ll + laplacian_weight * graph.symmetric_product(z)) / GMM_TEMPERATURE
            z = u.softmax(1)
        if it == max_iter:
            break
        mass = z.sum(0)
        empty = mass == 0
        if bool(empty.any()):  # the reference: 0/0 = NaN; here the class keeps its previous mean
            guards += int(empty.sum())
        new_mu = normalize((z.T @ x) / mass[:, None])
        mu = torch.where(empty[:, None], mu, new_mu)
        var = weighted_sq_dev(x, z, mu).sum(0) / z.sum()
    return {"potentials": u, "z": z, "mu": mu, "var": var, "guards": guards,
            "max_in_degree": graph.max_in_degree}


def inductive_potentials(x: torch.Tensor, text: torch.Tensor, mu: torch.Tensor, var: torch.Tensor,
                         temperature: float, lam: float = 1.0) -> torch.Tensor:
    """One z-step of the final state for images outside the transductive set (no neighbour term)."""
    return lam * temperature * x @ text.T + diag_loglik(x, mu, var) / GMM_TEMPERATURE


# ------------------------------------------------------------------------------------------- the method

@register_method("transclip")
class TransCLIP(Method):
    display_name = "TransCLIP"
    adaptation = "transductive"

    @dataclass
    class Options(Options):
        lam: float = option(1.0, "power λ on the zero-shot softmax ŷ in the z-step (reference zero-shot: 1)", min=0)
        n_neighbors: int = option(3, "neighbours per image in the kNN affinity (reference: 3)", min=1)
        max_iter: int = option(10, "outer iterations: max_iter + 1 z-steps and max_iter (μ, v) steps (reference: 10)",
                               min=0)
        inner_iter: int = option(5, "Jacobi z-iterations per z-step (reference: 5)", min=1)
        n_confident: int = option(8, "samples per class (largest z) that initialise the means (reference: 8)", min=1)
        prompt: str | None = option(None, "prompt template with {} (default: the dataset's)", contains="{}")
        scale: float | None = option(None, "temperature of the zero-shot softmax ŷ (default: the backbone's logit "
                                           "scale; 100 is the reference's hard-coded value)", min=0,
                                     min_exclusive=True)

    def setup(self, backbone, class_names: list[str], context: AdaptContext) -> None:
        super().setup(backbone, class_names, context)
        self.template = self.options.prompt or context.prompt
        self.text = encode_texts(backbone, prompt_texts(self.template, class_names))
        self.scale = float(self.options.scale or backbone.logit_scale)
        self._clear()

    def _clear(self) -> None:
        self.mu: torch.Tensor | None = None
        self.var: torch.Tensor | None = None
        self._online = None
        self._info: dict = {}

    def reset(self) -> None:
        super().reset()
        self._clear()

    @torch.no_grad()
    def adapt(self, context: AdaptContext) -> list[dict]:
        o = self.options
        x = context.image_features().double()
        t0 = time.perf_counter()
        n = x.shape[0]
        need = max(o.n_confident, o.n_neighbors + 1)
        if n < need:
            raise UeobenchError(f"transclip needs at least {need} adaptation images (n_confident = {o.n_confident}, "
                                f"n_neighbors + 1 = {o.n_neighbors + 1}); this set has {n}")
        text = self.text.to(x.device).double()
        out = transclip_zs(x, text, self.scale, o.lam, o.n_neighbors, o.max_iter, o.inner_iter, o.n_confident)
        self.mu, self.var = out["mu"], out["var"]
        self._online = (out["potentials"] / self.scale).float().cpu().numpy()
        z = out["z"]
        self._info = {"adapt_images": n, "classes": text.shape[0], "zero_shot_temperature": self.scale,
                      "z_steps": o.max_iter + 1, "moment_steps": o.max_iter, "inner_iterations": o.inner_iter,
                      "classes_predicted": int(torch.unique(z.argmax(1)).numel()),
                      "changed_from_zero_shot": float((z.argmax(1) != (x @ text.T).argmax(1)).double().mean()),
                      "knn_max_in_degree": out["max_in_degree"], "empty_class_guards": out["guards"],
                      "fit_seconds": round(time.perf_counter() - t0, 4)}
        return []

    def online_predictions(self):
        return self._online

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        if self.mu is None:  # before adapting: the zero-shot classifier
            return features @ self.text.T
        x = features.double()
        u = inductive_potentials(x, self.text.to(x.device).double(), self.mu, self.var, self.scale, self.options.lam)
        return (u / self.scale).float()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_features(encode_images(self.backbone, images))

    def info(self) -> dict:
        return dict(self._info)
