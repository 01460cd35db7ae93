"""OOD scores (higher = more likely known) and label-free unknown-rejection rules.

Every score works on the unscaled cosine similarities that methods predict, so any score can be recomputed
later from saved predictions. The temperature each score uses is part of its definition and is recorded.

A score may need per-image evidence beyond the cosines (``needs``): GL-MCM the local (patch) term, CLIPN's
rules the cosines with the "no" text encoder. Runs save that evidence beside the cosines (``EXTRAS`` says what
produces each kind); a score whose evidence a run did not save is an error naming how to produce it, never a
silent fallback to another score.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Mapping

import numpy as np

from ..core.errors import UeobenchError
from ..core.registry import Registry


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


#: Per-image evidence a score may need, saved as ``{split}_{kind}`` beside the cosines, and how a run saves it.
EXTRAS: dict[str, str] = {
    "local_mcm": "the local (patch) term of GL-MCM, max over patches and classes of softmax(local cosines / T), "
    "T = 1; saved by runs made with --score glmcm (or glmcm:LAMBDA) or --score lmcm on a ViT or CLIP ResNet",
    "no_cos": "cosines with CLIPN's 'no' text encoder; saved by method clipn on a CLIPN checkpoint",
    "own_score": "a method's own per-image OOD score (higher = known), for methods that define one; saved by "
    "those methods (ueobench show method NAME says whether it has one)",
}


@dataclass(frozen=True)
class Score:
    name: str
    fn: Callable[[np.ndarray, float, Mapping[str, np.ndarray]], np.ndarray]
    temperature: str  # human-readable: "1 (raw cosine)" or "1/logit_scale"
    doc: str
    needs: tuple[str, ...] = ()  # kinds of EXTRAS the score reads
    #: an optional numeric parameter, written ``name:value`` (``glmcm:0.5``): its keyword, default and range
    param: tuple[str, float, float, float] | None = None


SCORES: Registry[Score] = Registry("score")


def register_score(name: str, temperature: str, doc: str, needs: tuple[str, ...] = (),
                   param: tuple[str, float, float, float] | None = None):
    """Register ``fn(cos, logit_scale, extras[, <param>=value])``; ``needs`` names the EXTRAS it reads; ``param``
    is ``(keyword, default, low, high)`` of a parameter given as ``--score name:value``."""
    unknown = [n for n in needs if n not in EXTRAS]
    if unknown:
        raise ValueError(f"score '{name}' needs unknown evidence {unknown}; known: {sorted(EXTRAS)}")

    def deco(fn: Callable[..., np.ndarray]):
        SCORES.register(name, Score(name, fn, temperature, doc, tuple(needs), param), origin=fn.__module__)
        return fn

    return deco


def score_of(spec: str) -> Score:
    """The score a ``--score`` value names: ``mcm``, or a score with its parameter, ``glmcm:0.5``."""
    name, sep, arg = str(spec).strip().partition(":")
    base = SCORES.get(name)  # raises with a suggestion
    if not sep:
        return base
    if base.param is None:
        raise UeobenchError(f"score '{name}' takes no parameter (got '{spec}'); use --score {name}")
    key, default, low, high = base.param
    try:
        value = float(arg)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # NaN fails this too
        raise UeobenchError(f"bad score '{spec}': its {key} is a number in [{low}, {high}], e.g. {name}:{default}")
    if value == default:
        return base
    return Score(f"{name}:{value!r}", partial(base.fn, **{key: value}), base.temperature,
                 f"{base.doc} with {key} = {value!r}", base.needs, base.param)


def canonical_score(spec: str) -> str:
    """One spelling per score: ``glmcm:1`` is ``glmcm`` (the default), ``glmcm:0.50`` is ``glmcm:0.5``."""
    return score_of(spec).name


def score_needs(name: str) -> tuple[str, ...]:
    return score_of(name).needs


def how_to_save(name: str) -> str:
    """One line saying how runs save what score ``name`` needs."""
    needs = score_needs(name)
    return "; ".join(f"{k}: {EXTRAS[k]}" for k in needs)


@register_score("mcm", "1 (raw cosine)", "max softmax of the cosines at T = 1 (MCM; the reference's AUROC score)")
def mcm(cos: np.ndarray, logit_scale: float, extras=None) -> np.ndarray:
    return softmax(cos, axis=1).max(1)


@register_score("msp", "1/logit_scale", "max softmax at CLIP's own logit scale (about 100)")
def msp(cos: np.ndarray, logit_scale: float, extras=None) -> np.ndarray:
    return softmax(cos * logit_scale, axis=1).max(1)


@register_score("energy", "1 (raw cosine)", "T * logsumexp(cos / T) at T = 1 (negative free energy)")
def energy(cos: np.ndarray, logit_scale: float, extras=None) -> np.ndarray:
    return logsumexp(cos, axis=1)


@register_score("scaled_energy", "1/logit_scale", "logsumexp(logit_scale * cos): the energy at the model's own "
                "logit scale (CRoFT's OOD score)")
def scaled_energy(cos: np.ndarray, logit_scale: float, extras=None) -> np.ndarray:
    return logsumexp(cos * logit_scale, axis=1)


@register_score("maxlogit", "none (temperature-invariant)", "max cosine")
def maxlogit(cos: np.ndarray, logit_scale: float, extras=None) -> np.ndarray:
    return cos.max(1)


@register_score("entropy", "1 (raw cosine)", "negative entropy of softmax(cos / T) at T = 1")
def neg_entropy(cos: np.ndarray, logit_scale: float, extras=None) -> np.ndarray:
    p = softmax(cos, axis=1)
    return (p * np.log(p + 1e-12)).sum(1)


GLMCM_LAMBDA = 1.0  # lambda_local: the reference's default and its COCO/VOC scripts (its ImageNet script: 0.5)
CLIPN_SCALE = 100.0  # CLIPN's classifier multiplies both cosines by a fixed 100, whatever the model's logit scale


@register_score("glmcm", "1 (raw cosine)", "GL-MCM: MCM + lambda x max over patches and classes of "
                "softmax(local cosines), T = 1, lambda = 1 (glmcm:0.5 for the reference's ImageNet setting; ViT "
                "or CLIP ResNet; needs local features)", needs=("local_mcm",), param=("lambda_local", 1.0, 0.0, 100.0))
def glmcm(cos: np.ndarray, logit_scale: float, extras, lambda_local: float = GLMCM_LAMBDA) -> np.ndarray:
    return softmax(cos, axis=1).max(1) + lambda_local * np.asarray(extras["local_mcm"], np.float64)


@register_score("lmcm", "1 (raw cosine)", "L-MCM: the local term of GL-MCM alone (ViT or CLIP ResNet; needs local "
                "features)", needs=("local_mcm",))
def lmcm(cos: np.ndarray, logit_scale: float, extras) -> np.ndarray:
    return np.asarray(extras["local_mcm"], np.float64)


@register_score("own", "the method's own", "the method's own OOD score (higher = known), for methods that define one "
                "(a noise detector's clean probability, say); needs their saved own_score", needs=("own_score",))
def own(cos: np.ndarray, logit_scale: float, extras) -> np.ndarray:
    return np.asarray(extras["own_score"], np.float64)


def clipn_yes_probability(cos: np.ndarray, no_cos: np.ndarray) -> np.ndarray:
    """p_yes per class: softmax over the pair (yes logit, no logit), both at CLIPN's scale of 100."""
    x = CLIPN_SCALE * (np.asarray(cos, np.float64) - np.asarray(no_cos, np.float64))
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # the logistic function, without overflow


@register_score("ctw", "1/100 (CLIPN's fixed scale)", "CLIPN competing-to-win: p_yes of the predicted class "
                "(needs CLIPN's 'no' cosines)", needs=("no_cos",))
def ctw(cos: np.ndarray, logit_scale: float, extras) -> np.ndarray:
    p_yes = clipn_yes_probability(cos, extras["no_cos"])
    return p_yes[np.arange(len(cos)), np.asarray(cos).argmax(1)]


@register_score("atd", "1/100 (CLIPN's fixed scale)", "CLIPN agreeing-to-differ: sum over classes of p_yes x "
                "softmax(100 x cos) (needs CLIPN's 'no' cosines)", needs=("no_cos",))
def atd(cos: np.ndarray, logit_scale: float, extras) -> np.ndarray:
    p_yes = clipn_yes_probability(cos, extras["no_cos"])
    return (p_yes * softmax(CLIPN_SCALE * np.asarray(cos, np.float64), axis=1)).sum(1)


def compute_score(name: str, cos: np.ndarray, logit_scale: float,
                  extras: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """The score of every sample; ``extras`` holds the evidence the score ``needs`` (an error names how to save it)."""
    score = score_of(name)
    extras = extras or {}
    missing = [k for k in score.needs if k not in extras]
    if missing:
        raise UeobenchError(f"score '{name}' needs {', '.join(missing)} ({how_to_save(name)})")
    cos = np.asarray(cos, dtype=np.float64)
    for k in score.needs:
        if np.shape(extras[k])[0] != len(cos):
            raise UeobenchError(f"score '{name}': saved {k} has {np.shape(extras[k])[0]} rows for {len(cos)} samples")
    return score.fn(cos, logit_scale, extras)


# -------------------------------------------------------------------------------------- rejection rules

RULES_DOC = {
    "nent:TAU": "unknown when the normalised entropy H(p)/log K of softmax(logit_scale * cos) is at least TAU "
    "(uniood uses 0.5, COCA 0.55)",
    "kmeans2": "SHOT-ODA: 2-means on the normalised entropy; the high-entropy cluster is unknown",
    "idval:TPR": "labeled-source runs: known when the run's score is above the threshold that keeps the fraction "
    "TPR of the correctly classified source_val images (CRoFT: idval:0.95, the 5th percentile)",
}
DEFAULT_RULE = "nent:0.5"


def normalised_entropy(cos: np.ndarray, logit_scale: float) -> np.ndarray:
    p = softmax(np.asarray(cos, np.float64) * logit_scale, axis=1)
    k = p.shape[1]
    return -(p * np.log(p + 1e-12)).sum(1) / np.log(k) if k > 1 else np.zeros(len(p))


def _idval_tpr(rule: str) -> float:
    try:
        tpr = float(rule[6:])
    except ValueError:
        tpr = float("nan")
    if not 0.0 < tpr <= 1.0:
        raise UeobenchError(f"bad threshold rule '{rule}': TPR is the fraction of correct source_val images kept, "
                            f"in (0, 1], e.g. idval:0.95")
    return tpr


def check_rule(rule: str) -> None:
    """Validate a rejection rule's name and threshold without any data."""
    if rule.startswith("idval:"):
        _idval_tpr(rule)
        return
    accept_known(np.zeros((1, 2)), 1.0, rule)


def rule_needs_source(rule: str) -> bool:
    """True for rules fitted on source_val (only labeled-source runs have one)."""
    return str(rule).strip().startswith("idval:")


def idval_threshold(reference: np.ndarray, rule: str) -> float:
    """CRoFT's threshold: ``np.percentile`` (linear) of the reference scores at 100 * (1 - TPR)."""
    return float(np.percentile(np.asarray(reference, np.float64), 100.0 * (1.0 - _idval_tpr(rule))))


def canonical_rule(rule: str) -> str:
    """One spelling per rule, so that ``nent:.5``, ``nent:0.50`` and ``nent:0.5 `` are one run: the threshold is
    written as Python writes the float (``nent:0.5``). Raises for a malformed rule."""
    rule = str(rule).strip()
    check_rule(rule)
    if rule.startswith("nent:"):
        return f"nent:{float(rule[5:])!r}"
    if rule.startswith("idval:"):
        return f"idval:{_idval_tpr(rule)!r}"
    return rule


def check_request(score: str, rule: str, method: str, method_extras: tuple[str, ...]) -> None:
    """Refuse, before anything is loaded, a score whose evidence the method does not give (local features are
    checked against the backbone when the run starts) and a malformed rule."""
    for kind in score_of(score).needs:  # raises with a suggestion for an unknown score
        if kind != "local_mcm" and kind not in method_extras:
            raise UeobenchError(f"score '{score}' needs {kind}, which method '{method}' does not give "
                                f"({how_to_save(score)})")
    canonical_rule(rule)


def accept_known(cos: np.ndarray, logit_scale: float, rule: str = DEFAULT_RULE, scores: np.ndarray | None = None,
                 reference: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of samples accepted as known under a label-free rule; an ``idval`` rule compares ``scores``
    with the threshold fitted on ``reference`` (the scores of correctly classified source_val images)."""
    if rule.startswith("idval:"):
        if scores is None or reference is None or not len(reference):
            raise UeobenchError(f"rule '{rule}' fits its threshold on source_val, which only labeled-source runs "
                                f"have (--source); use nent:0.5 or kmeans2")
        return np.asarray(scores) > idval_threshold(reference, rule)
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
    raise UeobenchError(f"unknown threshold rule '{rule}'; use nent:TAU (e.g. nent:0.5), kmeans2 or idval:TPR "
                        f"(labeled-source runs)")
