"""OOD scores (higher = more likely known) and label-free unknown-rejection rules.

Every score works on the unscaled cosine similarities that methods predict, so any score can be recomputed
later from saved predictions. The temperature each score uses is part of its definition and is recorded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)

from .errors import UeobenchError
from .registry import Registry


@dataclass(frozen=True)
class Score:
    name: str
    fn: Callable[[np.ndarray, float], np.ndarray]
    temperature: str  # human-readable: "1 (raw cosine)" or "1/logit_scale"
    doc: str


SCORES: Registry[Score] = Registry("score")


def register_score(name: str, temperature: str, doc: str):
    def deco(fn: Callable[[np.ndarray, float], np.ndarray]):
        SCORES.register(name, Score(name, fn, temperature, doc), origin=fn.__module__)
        return fn

    return deco


@register_score("mcm", "1 (raw cosine)", "max softmax of the cosines at T = 1 (MCM; the reference's AUROC score)")
def mcm(cos: np.ndarray, logit_scale: float) -> np.ndarray:
    return softmax(cos, axis=1).max(1)


@register_score("msp", "1/logit_scale", "max softmax at CLIP's own logit scale (about 100)")
def msp(cos: np.ndarray, logit_scale: float) -> np.ndarray:
    return softmax(cos * logit_scale, axis=1).max(1)


@register_score("energy", "1 (raw cosine)", "T * logsumexp(cos / T) at T = 1 (negative free energy)")
def energy(cos: np.ndarray, logit_scale: float) -> np.ndarray:
    return logsumexp(cos, axis=1)


@register_score("maxlogit", "none (temperature-invariant)", "max cosine")
def maxlogit(cos: np.ndarray, logit_scale: float) -> np.ndarray:
    return cos.max(1)


@register_score("entropy", "1 (raw cosine)", "negative entropy of softmax(cos / T) at T = 1")
def neg_entropy(cos: np.ndarray, logit_scale: float) -> np.ndarray:
    p = softmax(cos, axis=1)
    return (p * np.log(p + 1e-12)).sum(1)


def compute_score(name: str, cos: np.ndarray, logit_scale: float) -> np.ndarray:
    return SCORES.get(name).fn(np.asarray(cos, dtype=np.float64), logit_scale)


# -------------------------------------------------------------------------------------- rejection rules

RULES_DOC = {
    "nent:TAU": "unknown when the normalised entropy H(p)/log K of softmax(logit_scale * cos) is at least TAU "
    "(uniood uses 0.5, COCA 0.55)",
    "kmeans2": "SHOT-ODA: 2-means on the normalised entropy; the high-entropy cluster is unknown",
}
DEFAULT_RULE = "nent:0.5"


def normalised_entropy(cos: np.ndarray, logit_scale: float) -> np.ndarray:
    p = softmax(np.asarray(cos, np.float64) * logit_scale, axis=1)
    k = p.shape[1]
    return -(p * np.log(p + 1e-12)).sum(1) / np.log(k) if k > 1 else np.zeros(len(p))


def check_rule(rule: str) -> None:
    """Validate a rejection rule's name and threshold without any data."""
    accept_known(np.zeros((1, 2)), 1.0, rule)


def accept_known(cos: np.ndarray, logit_scale: float, rule: str = DEFAULT_RULE) -> np.ndarray:
    """Boolean mask of samples accepted as known under a label-free rule."""
    ent = normalised_entropy(cos, logit_scale)
    if rule.startswith("nent:"):
        try:
            tau = float(rule[5:])
        except ValueError:
            raise UeobenchError(f"bad threshold rule '{rule}'; use nent:TAU (e.g. nent:0.5) or kmeans2") from None
        if not 0.0 <= tau <= 1.0:  # nan fails this too
            raise UeobenchError(f"bad threshold rule '{rule}': TAU is a normalised entropy in [0, 1], e.g. nent:0.5")
        return ent < tau
    if rule == "kmeans2":
        from sklearn.cluster import KMeans

        if len(ent) < 2 or np.ptp(ent) == 0:
            return np.ones(len(ent), bool)
        km = KMeans(n_clusters=2, n_init=10, random_state=0).fit(ent[:, None])
        threshold = float(km.cluster_centers_.mean())
        return ent < threshold
    raise UeobenchError(f"unknown threshold rule '{rule}'; use nent:TAU (e.g. nent:0.5) or kmeans2")
