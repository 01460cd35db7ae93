"""StatA (Zanella et al., CVPR 2025): TransCLIP with per-class Gaussians anchored to the text statistics.

Training-free and transductive, on the cached eval-transform features and the text embeddings of the K known
classes, as the official solver computes it (MaxZanella/StatA, ``solvers/StatA.py`` ``StatA_solver`` at HEAD
eea8637, which includes the log-det term added in 44553b0):

1. ŷ = softmax(s·x·t), z = ŷ (s: the backbone's logit scale; the reference hard-codes 100, ``scale=100``);
2. μ_c = t_c; the anchor covariance Σ0 = (1/N) Σ_i Σ_c z_ic (x_i − t_c)² (one diagonal, repeated per class,
   fixed for the run), Σ_c = Σ0;
3. W: 3 nearest neighbours by cosine, raw cosines, first top-k hit dropped as "self", not symmetrised;
4. ``max_iter + 1`` (11) rounds of ``inner_iter`` (5) z-steps
   z_i ∝ ŷ_i^λy ⊙ exp( (L_i + λ_lap·(50/2k)·((W + Wᵀ)z)_i − ½ log|Σ_c|) / 50 ),  L_ic = −½ Σ_d (x_id − μ_cd)²/Σ_cd,
   each round but the last followed by the anchored statistics: β_c = n_c / (α + n_c + 1e-12) with n_c the
   number of images whose argmax is c (``soft_beta``: n_c = Σ_i z_ic, no epsilon);
   μ_c = normalize(β_c·normalize(Σ_i z_ic x_i / Σ_i z_ic) + (1 − β_c)·t_c);
   Σ_c = β_c·Σ_i z_ic (x_i − μ_c)² / Σ_i z_ic + (1 − β_c)·(Σ0 + (t_c − μ_c)²), with the new μ.
   A class nobody predicts falls back exactly to its anchor N(t_c, Σ0).

Defaults are the reference's, the same for every dataset and setting ("default values in all experiments"):
α 1, hard β, λy 1, λ_lap 1, 3 neighbours, 10 outer and 5 inner iterations. ``batch_size`` 0 (default) solves the
whole adaptation set as one batch, the reference's "all classes" (B = −1) protocol; ``batch_size`` B > 0 cuts a
seeded shuffle of the adaptation set into consecutive batches of B and runs the solver afresh on each, with no
state carried over, as the reference's batch and online modes do (its B: 64 and 1000 batch, 128 online). Its
``init_cov`` divides by N inside its 2500-row chunk loop, which changes Σ0 (and makes it order-dependent) when a
batch has more than 2500 images; ``cov_chunk_quirk`` (default on) reproduces that, off gives the intended Σ0.
Arithmetic is float64.

What it reports. Target split: each image's transductive z from the solve of its batch, as the log-potentials u
with z = softmax(u), u_ic = λy·s·x_i·t_c + (L_ic + λ_lap·(50/2k)·((W + Wᵀ)z)_ic − ½ log|Σ_c|)/50 (the reference's
exponent without its max-subtraction), divided by s: softmax(s·output) = z exactly, argmax = StatA's prediction,
MCM at T = 1 sees z^(1/s), energy and max-logit read the unnormalised potential. Test split (the reference has
no inductive rule): one z-step from the final state of the whole-set solve (solved once more when
``batch_size`` > 0) without the neighbour term, u = λy·s·x·t + (L − ½ log|Σ_c|)/50, divided by s. Before
adapting: the zero-shot cosines.
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
from ueobench.methods.transclip import (  # the same kNN affinity and diagonal-Gaussian algebra as TransCLIP
    GMM_TEMPERATURE,  # the reference divides the whole exponent (log-likelihood, Laplacian, log-det) by 50
    KnnAffinity,
    diag_loglik,
    normalize,
    weighted_sq_dev,
)
from ueobench.models import encode_images, encode_texts, prompt_texts

COV_CHUNK = 2500  # the reference's chunk of rows in init_cov (its division by N sits inside this loop)
BETA_EPS = 1e-12  # hard β: n_c / (α + n_c + 1e-12)


# ------------------------------------------------------------------------------------------- the Gaussians


def anchor_covariance(x: torch.Tensor, text: torch.Tensor, z: torch.Tensor, chunk_quirk: bool = True) -> torch.Tensor:
    """Σ0 [D]: (1/N) Σ_i Σ_c z_ic (x_i − t_c)². With ``chunk_quirk`` the running sum is divided by N after every
    2500-row chunk, as the reference's ``init_cov`` does (identical when N ≤ 2500)."""
    n = x.shape[0]
    if not chunk_quirk:
        return weighted_sq_dev(x, z, text).sum(0) / n
    acc = None
    for s in range(0, n, COV_CHUNK):
        part = weighted_sq_dev(x[s: s + COV_CHUNK], z[s: s + COV_CHUNK], text).sum(0)
        acc = (part if acc is None else acc + part) / n
    return acc


# ------------------------------------------------------------------------------------------- the solver

@torch.no_grad()
def stata_solve(x: torch.Tensor, text: torch.Tensor, temperature: float, alpha: float = 1.0, soft_beta: bool = False,
                lambda_y_hat: float = 1.0, lambda_laplacian: float = 1.0, n_neighbors: int = 3, max_iter: int = 10,
                inner_iter: int = 5, cov_chunk_quirk: bool = True) -> dict:
    """One StatA solve on the features x [N, D] of a batch and the text embeddings [K, D] (unit norm).

    Returns ``potentials`` u [N, K] with z = softmax(u), ``z``, the final ``mu`` and ``cov`` [K, D], ``beta`` (the
    last one computed) and ``guards`` (how often a class's z-mass was exactly 0, where the reference gives NaN)."""
    k_cls = text.shape[0]
    logits = temperature * x @ text.T
    base = lambda_y_hat * logits  # log ŷ^λy up to a per-row constant
    z = logits.softmax(1)
    mu = text.clone()
    anchor = anchor_covariance(x, text, z, cov_chunk_quirk)[None, :].repeat(k_cls, 1)
    cov = anchor
    graph = KnnAffinity(x, n_neighbors)
    laplacian_weight = lambda_laplacian * GMM_TEMPERATURE / (2 * n_neighbors)
    beta = torch.zeros(k_cls, dtype=x.dtype, device=x.device)
    guards = 0
    u = base
    for it in range(max_iter + 1):
        ll = diag_loglik(x, mu, cov)
        half_logdet = 0.5 * cov.log().sum(1)[None, :]
        for _ in range(inner_iter):
            u = base + (ll + laplacian_weight * graph.symmetric_product(z) - half_logdet) / GMM_TEMPERATURE
            z = u.softmax(1)
        if it == max_iter:
            break
        mass = z.sum(0)
        if soft_beta:
            beta = mass / (alpha + mass)
        else:
            counts = torch.bincount(z.argmax(1), minlength=k_cls).to(x.dtype)
            beta = counts / (alpha + counts + BETA_EPS)
        empty = mass == 0  # the reference: 0/0 = NaN, and β = 0 times NaN stays NaN; here the anchor, its limit
        guards += int(empty.sum())
        b = beta[:, None]
        emp_mu = torch.where(empty[:, None], torch.zeros_like(text), normalize((z.T @ x) / mass[:, None]))
        mu = normalize(b * emp_mu + (1 - b) * text)
        emp_cov = (weighted_sq_dev(x, z, mu) / mass[:, None]).clamp_min(0)  # clamp: rounding of the expansion
        emp_cov = torch.where(empty[:, None], torch.zeros_like(emp_cov), emp_cov)
        cov = b * emp_cov + (1 - b) * (anchor + (text - mu) ** 2)
    return {"potentials": u, "z": z, "mu": mu, "cov": cov, "beta": beta, "guards": guards}


def inductive_potentials(x: torch.Tensor, text: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor,
                         temperature: float, lambda_y_hat: float = 1.0) -> torch.Tensor:
    """One z-step of a final state for images outside the transductive set (no neighbour term)."""
    return (lambda_y_hat * temperature * x @ text.T
            + (diag_loglik(x, mu, cov) - 0.5 * cov.log().sum(1)[None, :]) / GMM_TEMPERATURE)


def stream_batches(n: int, batch_size: int, seed: int, min_size: int, order: list[int] | None = None) -> list[torch.Tensor]:
    """Consecutive batches of a seeded shuffle of range(n) (or of ``order``, a ``--stream``); 0: one batch of
    all. A trailing batch smaller than ``min_size`` (the kNN needs n_neighbors + 1 images) joins the batch
    before it."""
    order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if order is None
             else torch.tensor(order, dtype=torch.long))
    if batch_size == 0:
        return [order]
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < min_size:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


# ------------------------------------------------------------------------------------------- the method

@register_method("stata")
class StatA(Method):
    display_name = "StatA"
    adaptation = "transductive"
    streams = True  # reads the adaptation data in context.stream_order() (--stream)

    @dataclass
    class Options(Options):
        alpha: float = option(1.0, "strength α of the anchor: β_c = n_c / (α + n_c) (reference: 1)", min=0)
        soft_beta: bool = option(False, "β from the soft z-mass of each class instead of hard argmax counts "
                                        "(reference default: hard)")
        lambda_y_hat: float = option(1.0, "power on the zero-shot softmax ŷ in the z-step (reference: 1)", min=0)
        lambda_laplacian: float = option(1.0, "weight of the kNN Laplacian term (reference: 1)", min=0)
        n_neighbors: int = option(3, "neighbours per image in the kNN affinity (reference: 3)", min=1)
        max_iter: int = option(10, "outer iterations: max_iter + 1 z-steps and max_iter statistic steps "
                                   "(reference: 10)", min=0)
        inner_iter: int = option(5, "z-iterations per z-step (reference: 5)", min=1)
        batch_size: int = option(0, "0: solve the whole adaptation set at once (reference 'all classes'); B > 0: "
                                    "solve each batch of B of a seeded shuffle afresh (reference: 64, 128, 1000)",
                                 min=0)
        cov_chunk_quirk: bool = option(True, "reproduce the reference's init_cov division by N inside its 2500-row "
                                             "chunk loop (changes Σ0 when a batch exceeds 2500 images)")
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
        self.cov: torch.Tensor | None = None
        self._online = None
        self._info: dict = {}

    def reset(self) -> None:
        super().reset()
        self._clear()

    def _solve(self, x: torch.Tensor, text: torch.Tensor) -> dict:
        o = self.options
        return stata_solve(x, text, self.scale, o.alpha, o.soft_beta, o.lambda_y_hat, o.lambda_laplacian,
                           o.n_neighbors, o.max_iter, o.inner_iter, o.cov_chunk_quirk)

    @torch.no_grad()
    def adapt(self, context: AdaptContext) -> list[dict]:
        o = self.options
        x = context.image_features().double()
        t0 = time.perf_counter()
        n = x.shape[0]
        need = o.n_neighbors + 1
        if n < need or 0 < o.batch_size < need:
            raise UeobenchError(f"stata needs batches of at least n_neighbors + 1 = {need} images (batch_size = "
                                f"{o.batch_size}, {n} adaptation images)")
        stream = getattr(context, "stream", None)  # AdaptContext has it; hand-made test contexts may not
        if stream and o.batch_size == 0:
            raise UeobenchError(f"stata solves the whole adaptation set at once (batch_size=0), so a stream's order "
                                f"changes nothing; pass --set batch_size=64 (or 128, 1000) with --stream {stream}")
        text = self.text.to(x.device).double()
        batches = stream_batches(n, o.batch_size, context.seed, need,
                                 context.stream_order() if stream else None)
        potentials = torch.empty(n, text.shape[0], dtype=x.dtype, device=x.device)
        guards, whole = 0, None
        for idx in batches:
            idx = idx.to(x.device)
            out = self._solve(x[idx], text)
            potentials[idx] = out["potentials"]
            guards += out["guards"]
            if len(batches) == 1:
                whole = out
        if whole is None:  # the test split's state: the whole set solved once more (same shuffled order)
            whole = self._solve(x[torch.cat(batches).to(x.device)], text)
        self.mu, self.cov = whole["mu"], whole["cov"]
        self._online = (potentials / self.scale).float().cpu().numpy()
        pred = potentials.argmax(1)
        self._info = {"adapt_images": n, "classes": text.shape[0], "zero_shot_temperature": self.scale,
                      "batches": len(batches), "batch_sizes": sorted({len(b) for b in batches}),
                      "z_steps": o.max_iter + 1, "statistic_steps": o.max_iter,
                      "classes_predicted": int(torch.unique(pred).numel()),
                      "changed_from_zero_shot": float((pred != (x @ text.T).argmax(1)).double().mean()),
                      "whole_set_classes_at_anchor": int((whole["beta"] == 0).sum()) if o.max_iter else None,
                      "cov_chunk_quirk_active": bool(o.cov_chunk_quirk and n > COV_CHUNK),
                      "empty_class_guards": guards, "fit_seconds": round(time.perf_counter() - t0, 4)}
        return []

    def online_predictions(self):
        return self._online

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        if self.mu is None:  # before adapting: the zero-shot classifier
            return features @ self.text.T
        x = features.double()
        u = inductive_potentials(x, self.text.to(x.device).double(), self.mu, self.cov, self.scale,
                                 self.options.lambda_y_hat)
        return (u / self.scale).float()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_features(encode_images(self.backbone, images))

    def info(self) -> dict:
        return dict(self._info)
