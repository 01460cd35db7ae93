"""GDA (Wang et al., ICLR 2024; mrflogs/ICLR24): Gaussian discriminant analysis fitted by EM on frozen features.

"A hard-to-beat baseline for training-free CLIP-based adaptation", in its unlabeled, transductive form.

The adaptation features (eval transform, the shared cache) are a mixture of one Gaussian per known class with a
shared covariance and equal priors. EM starts from the zero-shot classifier: the first responsibilities are
softmax(s·f·t) at CLIP's logit scale s (100 for OpenAI CLIP, the reference's constant). Each M-step takes the
weighted means μ_k and the shared covariance, by default as the released code computes it for the shrinkage
estimator, the pooled covariance of the class-centred features Σ = Σ_k Σ_i γ_ik (x_i − μ_k)(x_i − μ_k)ᵀ / (N − 1)
(``covariance=per_class``: the project page's words, (1/K)·Σ_k Σ_i γ_ik (x_i − μ_k)(x_i − μ_k)ᵀ / Σ_i γ_ik),
and turns it into a precision with the released code's shrinkage estimator, Σ⁻¹ = D·pinv((N − 1)·Σ + tr(Σ)·I),
which was written for the pooled form; then W = Σ⁻¹μ_k and b_k = log(1/K) − ½·μ_kᵀΣ⁻¹μ_k. Each E-step
is the softmax of the ensemble logits s·f·t + α·(f·W + b). EM stops when no responsibility moves by more than
``tol`` or after ``max_iter`` steps.

α cannot be chosen on labels here (the reference grid-searches {1e-4, ..., 100} on labelled validation data):
the default is 0.1, the fallback initial value of the reference's ``best_alpha`` (its grid itself starts at 1e-4);
set another with ``--set alpha=``.

``background=true`` adds a (K+1)-th Gaussian, started from the mean of all features with the mean class text
embedding as its text prototype, to absorb samples of unknown classes. It is an ablation of this harness, not
part of the paper; predictions stay the K known classes.

Predictions (both splits) are the ensemble logits divided by s, so every score sees cosine units and the MSP at
scale s is the softmax of GDA's logits.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ueobench import AdaptContext, Method, Options, option, register_method
from ueobench.models import encode_images, encode_texts, prompt_texts


def shrinkage_precision(cov: torch.Tensor, n: int) -> torch.Tensor:
    """The reference's precision estimator: D · pinv((N − 1)·Σ + tr(Σ)·I)."""
    d = cov.shape[0]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    return d * torch.linalg.pinv((n - 1) * cov + torch.trace(cov) * eye)


def gaussian_head(means: torch.Tensor, precision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [D, C] and b [C] of the linear discriminant with equal priors."""
    w = precision @ means.T
    b = math.log(1.0 / means.shape[0]) - 0.5 * ((means @ precision) * means).sum(1)
    return w, b


COVARIANCES = ("pooled", "per_class")


def m_step(x: torch.Tensor, gamma: torch.Tensor, covariance: str = "pooled") -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted means [C, D] and the shared covariance.

    ``pooled`` (the released code's estimator, ``torch.cov`` of the class-centred features): the scatter
    Σ_c Σ_i γ_ic (x_i − μ_c)(x_i − μ_c)ᵀ over N − 1; since each row of γ sums to one it is XᵀX − Σ_c N_c μ_c μ_cᵀ.
    ``per_class`` (the project page's M-step): (1/C)·Σ_c cov_c, each cov_c normalised by its own N_c;
    Σ_i γ_ic (x_i − μ_c)(x_i − μ_c)ᵀ / N_c = Σ_i (γ_ic / N_c) x_i x_iᵀ − μ_c μ_cᵀ, one weighted Gram matrix."""
    nk = gamma.sum(0).clamp_min(torch.finfo(x.dtype).tiny)
    means = (gamma.T @ x) / nk[:, None]
    if covariance == "pooled":
        cov = (x.T @ x - (means.T * nk) @ means) / (x.shape[0] - 1)
    else:
        weights = (gamma / nk).sum(1)
        cov = ((x * weights[:, None]).T @ x - means.T @ means) / gamma.shape[1]
    return means, cov


@register_method("gda")
class GDA(Method):
    display_name = "GDA"
    adaptation = "transductive"

    @dataclass
    class Options(Options):
        alpha: float = option(0.1, "weight of the Gaussian discriminant in the logits (the reference picks it on "
                                   "labelled data from 1e-4..100; 0.1 is its fallback initial value)", min=0)
        max_iter: int = option(100, "most EM iterations", min=0)
        tol: float = option(1e-5, "stop when no responsibility changes by more than this", min=0)
        covariance: str = option("pooled", "shared covariance inside EM: pooled (the released code's, over N - 1) or "
                                           "per_class (the project page's average of per-class covariances)",
                                 choices=COVARIANCES)
        background: bool = option(False, "ablation, not in the paper: a (K+1)-th background Gaussian for unknowns")
        prompt: str | None = option(None, "prompt template with {} (default: the dataset's)", contains="{}")

    def setup(self, backbone, class_names: list[str], context: AdaptContext) -> None:
        super().setup(backbone, class_names, context)
        self.template = self.options.prompt or context.prompt
        self.text = encode_texts(backbone, prompt_texts(self.template, class_names))
        self.scale = backbone.logit_scale
        self.w: torch.Tensor | None = None
        self.b: torch.Tensor | None = None
        self._info: dict = {}

    def reset(self) -> None:
        super().reset()
        self.w = self.b = None

    def _text_logits(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.scale * x @ text.T

    @torch.no_grad()
    def adapt(self, context: AdaptContext) -> list[dict]:
        t0 = time.perf_counter()
        o = self.options
        x = context.image_features().double()
        text = self.text.double()
        if o.background:  # the mean class prompt stands in for "something else"
            text = torch.cat([text, torch.nn.functional.normalize(text.mean(0, keepdim=True), dim=-1)])
        base = self._text_logits(x, text)
        gamma = torch.softmax(base, dim=1)
        n = x.shape[0]
        iterations, delta = 0, None
        w = b = None
        while iterations < o.max_iter:
            iterations += 1
            means, cov = m_step(x, gamma, o.covariance)
            w, b = gaussian_head(means, shrinkage_precision(cov, n))
            new = torch.softmax(base + o.alpha * (x @ w + b), dim=1)
            delta = float((new - gamma).abs().max())
            gamma = new
            if delta <= o.tol:
                break
        if w is None:  # max_iter = 0: the zero-shot classifier
            w = torch.zeros(x.shape[1], text.shape[0], dtype=x.dtype, device=x.device)
            b = torch.zeros(text.shape[0], dtype=x.dtype, device=x.device)
        k = len(self.class_names)
        self.w, self.b = w[:, :k].float(), b[:k].float()
        self._info = {"em_iterations": iterations, "em_last_change": delta,
                      "em_converged": delta is not None and delta <= o.tol,
                      "fit_seconds": round(time.perf_counter() - t0, 4),
                      "background_share": float(gamma[:, k:].sum() / n) if o.background else None}
        return []

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        logits = self._text_logits(features, self.text)
        if self.w is not None:
            logits = logits + self.options.alpha * (features @ self.w + self.b)
        return logits / self.scale

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_features(encode_images(self.backbone, images))

    def info(self) -> dict:
        return dict(self._info)
