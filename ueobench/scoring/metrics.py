"""Metrics for category shift: accuracy on known classes, AUROC and FPR@95 for unknowns, and H-score.

Conventions (methods.md sections 9-10): labels >= num_known are unknown; the *known* samples are the positive
class of AUROC; the default score is MCM (max softmax of the raw cosines, T = 1). An undefined metric is None.

``aupr_in`` and ``aupr_out`` are OpenOOD's names: average precision with the known samples as positives (score as
is) and with the unknown samples as positives (score negated). ``ece`` is the expected calibration error of the
closed-set predictions on the known samples: the classifier's own probabilities (softmax at the model's logit
scale, the learned one after fine-tuning), 15 equal-width confidence bins (lo, hi], sum over bins of
(bin size / n) * |accuracy - mean confidence|, over the whole split. ``ece10`` is the same with 10 bins binned as
torchmetrics does ([lo, hi) and a bin of its own for a confidence of 1); ``ece10_b512`` is CaRot's reported
number: ``ece10`` of each batch of 512 known samples in list order, weighted by batch size.

``auroc_idval`` and ``fpr95_idval`` are CRoFT's detection metrics, for labeled-source runs only: the unknown
samples of the split against the *correctly classified source_val* images (not the split's known samples);
FPR95 is the fraction of unknowns scoring strictly above the 5th percentile (``np.percentile``, linear) of those
reference scores. ``auroc`` and ``fpr95`` stay the harness's (the split's known against its unknown samples), so
both tracks share one definition.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .scores import DEFAULT_RULE, accept_known, compute_score, softmax

#: every metric a record holds, in display order; CORE_METRICS is the short list a run prints
METRICS = ("acc", "gacc", "auroc", "fpr95", "hscore", "os_star", "unknown_recall", "aupr_in", "aupr_out", "ece",
           "ece10", "ece10_b512", "auroc_idval", "fpr95_idval")
CORE_METRICS = ("acc", "gacc", "auroc", "fpr95", "hscore")
LOWER_IS_BETTER = frozenset({"fpr95", "ece", "ece10", "ece10_b512", "fpr95_idval"})
ECE_BINS = 15


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def per_class_accuracy(correct: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean over the classes present of the fraction of that class's samples that are correct."""
    classes = np.unique(labels)
    if len(classes) == 0:
        return None
    return float(np.mean([correct[labels == c].mean() for c in classes]))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """ECE with ``bins`` equal-width bins over (0, 1]: sum_b |B_b|/n * |acc(B_b) - conf(B_b)|."""
    if len(confidence) == 0:
        return None
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def calibration_error_torchmetrics(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float | None:
    """Top-label ECE as torchmetrics' MulticlassCalibrationError(n_bins, norm='l1') bins it (CaRot's): bins
    [k/bins, (k+1)/bins) and an extra bin for a confidence of exactly 1."""
    if len(confidence) == 0:
        return None
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges, confidence, side="right") - 1  # == torch.bucketize(right=True) - 1
    total = 0.0
    for b in np.unique(which):
        members = which == b
        total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def batched_calibration_error(confidence: np.ndarray, correct: np.ndarray, batch: int = 512,
                              bins: int = 10) -> float | None:
    """CaRot's reported ECE: the torchmetrics ECE of each batch of ``batch`` samples in list order, weighted by the
    batch's size (never below the dataset-level ECE with the same bins)."""
    if len(confidence) == 0:
        return None
    parts = [(calibration_error_torchmetrics(confidence[i:i + batch], correct[i:i + batch], bins),
              len(confidence[i:i + batch])) for i in range(0, len(confidence), batch)]
    return float(sum(e * n for e, n in parts) / len(confidence))


def fpr_at_95_tpr(is_known: np.ndarray, scores: np.ndarray) -> float | None:
    """Fraction of unknowns accepted at the highest threshold that keeps at least 95% of the knowns."""
    from sklearn.metrics import roc_curve

    if is_known.all() or not is_known.any():
        return None
    # every threshold kept: by default roc_curve drops collinear points, and with tied scores the first point
    # reaching 95% can then be a later (lower) threshold, accepting more unknowns than the rule says
    fpr, tpr, _ = roc_curve(is_known.astype(int), scores, drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr, 0.95, side="left")])


def evaluate(
    logits: Any,
    labels: Any,
    num_known: int,
    scores: Any | None = None,
    *,
    logit_scale: float = 100.0,
    rule: str = DEFAULT_RULE,
    score: str = "mcm",
    extras: dict[str, Any] | None = None,
    reference_scores: Any | None = None,
) -> dict[str, Any]:
    """Compute every metric from unscaled cosine logits [N, K] and benchmark labels [N].

    ``scores`` overrides the OOD score; otherwise ``score`` names one from the registry (``extras``: the per-image
    evidence it needs, e.g. GL-MCM's local term). ``logit_scale`` and
    ``rule`` define the label-free rejection used by the H-score. ``reference_scores`` (labeled-source runs): the
    scores of the correctly classified source_val images, for the ``idval`` metrics and rules.
    """
    cos = _np(logits).astype(np.float64)
    y = _np(labels).astype(np.int64)
    if cos.ndim != 2 or cos.shape[1] != num_known:
        raise ValueError(f"logits must be [N, {num_known}], got {list(cos.shape)}")
    if len(y) != len(cos):
        raise ValueError(f"{len(cos)} logits but {len(y)} labels")
    s = compute_score(score, cos, logit_scale, extras) if scores is None else _np(scores).astype(np.float64)
    if np.isnan(cos).any() or np.isnan(s).any():
        raise ValueError("logits or scores contain NaN")
    pred = cos.argmax(1)
    known = y < num_known
    n_known, n_unknown = int(known.sum()), int((~known).sum())
    out: dict[str, Any] = {"n": len(y), "n_known": n_known, "n_unknown": n_unknown}
    correct = pred == y
    out["acc"] = per_class_accuracy(correct[known], y[known]) if n_known else None
    out["gacc"] = float(correct[known].mean()) if n_known else None
    both = n_known > 0 and n_unknown > 0
    from sklearn.metrics import average_precision_score, roc_auc_score

    out["auroc"] = float(roc_auc_score(known.astype(int), s)) if both else None
    out["fpr95"] = fpr_at_95_tpr(known, s) if both else None
    out["aupr_in"] = float(average_precision_score(known.astype(int), s)) if both else None
    out["aupr_out"] = float(average_precision_score((~known).astype(int), -s)) if both else None
    conf = softmax(cos[known] * logit_scale, axis=1).max(1) if n_known else np.zeros(0)
    out["ece"] = expected_calibration_error(conf, correct[known]) if n_known else None
    out["ece10"] = calibration_error_torchmetrics(conf, correct[known]) if n_known else None
    out["ece10_b512"] = batched_calibration_error(conf, correct[known]) if n_known else None
    ref = None if reference_scores is None else _np(reference_scores).astype(np.float64)
    has_ref = ref is not None and len(ref) > 0 and n_unknown > 0
    out["auroc_idval"] = (float(roc_auc_score(np.r_[np.ones(len(ref)), np.zeros(n_unknown)], np.r_[ref, s[~known]]))
                          if has_ref else None)
    out["fpr95_idval"] = float((s[~known] > np.percentile(ref, 5)).mean()) if has_ref else None
    accept = accept_known(cos, logit_scale, rule, scores=s, reference=ref)
    os_star = per_class_accuracy((correct & accept)[known], y[known]) if n_known else None
    unk = float((~accept[~known]).mean()) if n_unknown else None
    out["os_star"] = os_star
    out["unknown_recall"] = unk
    if both:
        assert os_star is not None and unk is not None
        out["hscore"] = 0.0 if os_star + unk == 0 else 2 * os_star * unk / (os_star + unk)
    else:
        out["hscore"] = None
    out["score"] = score if scores is None else "custom"
    out["rule"] = rule
    out["logit_scale"] = float(logit_scale)
    return out
