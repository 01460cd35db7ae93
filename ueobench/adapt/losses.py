"""Training objectives as pure functions of probabilities (or similarities), testable against their formulas.

The entropy epsilon follows the reference code: 1e-5 inside the log (SHOT, UEO); POUF uses 1e-6 for the
marginal term, exposed as ``marginal_eps``. TENT computes its entropy from logits with no epsilon at all
(``-(softmax * log_softmax).sum(1)``): ``entropy_from_logits``.
"""
from __future__ import annotations

import torch

EPS = 1e-5


def entropy(probs: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-row entropy H(p) = -sum_k p_k log(p_k + eps)."""
    return -(probs * torch.log(probs + eps)).sum(dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-row entropy from logits, exactly as DequanWang/tent: -(softmax(z) * log_softmax(z)).sum(1)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def entropy_loss(probs: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Mean conditional entropy over the batch ("ent", with UEO's epsilon)."""
    return entropy(probs, eps).mean()


def im_loss(probs: torch.Tensor, trade: float = 1.0, eps: float = EPS, marginal_eps: float | None = None) -> torch.Tensor:
    """Information maximisation: mean_i H(p_i) - trade * H(mean_i p_i) (SHOT-IM)."""
    marginal = probs.mean(dim=0)
    return entropy(probs, eps).mean() - trade * entropy(marginal, eps if marginal_eps is None else marginal_eps)


def ueo_loss(probs: torch.Tensor, weights: torch.Tensor, trade: float = 1.0, eps: float = EPS) -> torch.Tensor:
    """Universal entropy optimisation (UEO).

    sum_i w_i H(p_i) / sum_i w_i  -  trade * H( sum_i (1/w_i) p_i / sum_i (1/w_i) ):
    confident samples (large w) drive entropy minimisation, uncertain ones dominate the diversity term.
    With equal weights it is ``im_loss``.
    """
    w = weights.to(probs.dtype)
    conditional = (w * entropy(probs, eps)).sum() / w.sum()
    inv = 1.0 / w
    marginal = (inv[:, None] * probs).sum(dim=0) / inv.sum()
    return conditional - trade * entropy(marginal, eps)


def pouf_transport_loss(sim: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """POUF's bidirectional conditional transport between image features and text prototypes.

    Cost C = 1 - sim. Forward plan: softmax over classes; backward plan: softmax over the batch.
    mean_i sum_k C_ik pi_ik + mean_k sum_i C_ik rho_ik.
    """
    cost = 1.0 - sim
    forward = torch.softmax(logits, dim=1)
    backward = torch.softmax(logits, dim=0)
    return (cost * forward).sum(dim=1).mean() + (cost * backward).sum(dim=0).mean()
