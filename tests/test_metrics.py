"""Metrics against hand-worked values and scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from ueobench.scoring.metrics import evaluate, fpr_at_95_tpr
from ueobench.scoring.scores import SCORES, accept_known, compute_score

# K = 2 known classes; label 2 is unknown. Rows are unscaled cosines.
COS = np.array(
    [
        [0.9, 0.1],  # y=0, correct, confident
        [0.8, 0.2],  # y=0, correct
        [0.3, 0.7],  # y=0, wrong
        [0.2, 0.6],  # y=1, correct
        [0.5, 0.5],  # y=2 unknown, maximally uncertain
        [0.6, 0.1],  # y=2 unknown, confident (a hard unknown)
    ]
)
Y = np.array([0, 0, 0, 1, 2, 2])


def test_hand_worked_accuracies():
    m = evaluate(COS, Y, num_known=2)
    assert m["gacc"] == pytest.approx(3 / 4)
    assert m["acc"] == pytest.approx((2 / 3 + 1) / 2)  # per-class mean, the paper's ACC
    assert (m["n"], m["n_known"], m["n_unknown"]) == (6, 4, 2)


def test_hand_worked_auroc_fpr95():
    s = np.array([0.9, 0.8, 0.4, 0.7, 0.1, 0.6])  # knowns: .9 .8 .4 .7; unknowns: .1 .6
    m = evaluate(COS, Y, 2, scores=s)
    # pairs (known > unknown): .9>both, .8>both, .7>both, .4>.1 only -> 7 of 8
    assert m["auroc"] == pytest.approx(7 / 8)
    # keeping >= 95% of knowns needs the threshold at .4, which accepts the unknown at .6 -> FPR 1/2
    assert m["fpr95"] == pytest.approx(0.5)
    assert fpr_at_95_tpr(np.array([True, True, False]), np.array([0.9, 0.8, 0.1])) == 0.0


def test_hand_worked_hscore():
    # at logit scale 100 the normalised entropy of row 4 ([.5,.5]) is 1 -> rejected; others are sharp -> accepted
    m = evaluate(COS, Y, 2, logit_scale=100.0, rule="nent:0.5")
    accept = accept_known(COS, 100.0, "nent:0.5")
    assert accept.tolist() == [True, True, True, True, False, True]
    os_star = (2 / 3 + 1) / 2
    unk = 1 / 2
    assert m["os_star"] == pytest.approx(os_star)
    assert m["unknown_recall"] == pytest.approx(unk)
    assert m["hscore"] == pytest.approx(2 * os_star * unk / (os_star + unk))


def test_undefined_metrics_are_none():
    m = evaluate(COS[:4], Y[:4], 2)
    assert m["auroc"] is None and m["fpr95"] is None and m["hscore"] is None
    assert m["acc"] is not None
    only_unknown = evaluate(COS[4:], Y[4:], 2)
    assert only_unknown["acc"] is None and only_unknown["gacc"] is None and only_unknown["auroc"] is None


def test_against_sklearn_random():
    rng = np.random.default_rng(0)
    cos = rng.normal(0.25, 0.05, (500, 7))
    y = rng.integers(0, 10, 500)
    known = y < 7
    m = evaluate(torch.tensor(cos), torch.tensor(y), 7)  # torch inputs work too
    pred = cos.argmax(1)
    assert m["gacc"] == pytest.approx(accuracy_score(y[known], pred[known]))
    assert m["acc"] == pytest.approx(balanced_accuracy_score(y[known], pred[known]))
    assert m["auroc"] == pytest.approx(roc_auc_score(known, softmax(cos, 1).max(1)))


def test_default_score_is_mcm_at_t1():
    rng = np.random.default_rng(1)
    cos = rng.normal(0.2, 0.05, (50, 4))
    assert np.allclose(compute_score("mcm", cos, 100.0), softmax(cos, 1).max(1))
    assert np.allclose(compute_score("msp", cos, 100.0), softmax(100 * cos, 1).max(1))
    assert np.allclose(compute_score("maxlogit", cos, 100.0), cos.max(1))
    assert np.allclose(compute_score("energy", cos, 1.0), np.log(np.exp(cos).sum(1)))
    p = softmax(cos, 1)
    assert np.allclose(compute_score("entropy", cos, 1.0), (p * np.log(p)).sum(1), atol=1e-9)
    assert np.allclose(compute_score("scaled_energy", cos, 22.0), np.log(np.exp(22.0 * cos).sum(1)))
    assert set(SCORES.names()) == {"mcm", "msp", "energy", "maxlogit", "entropy", "glmcm", "lmcm", "ctw", "atd", "own",
                                  "scaled_energy"}


def test_kmeans_rule_separates_two_entropy_groups():
    sharp = np.tile([[1.0, 0.0, 0.0]], (5, 1))
    flat = np.tile([[0.33, 0.33, 0.34]], (5, 1))
    acc = accept_known(np.vstack([sharp, flat]), 100.0, "kmeans2")
    assert acc.tolist() == [True] * 5 + [False] * 5


def test_bad_shapes_and_nan_raise():
    with pytest.raises(ValueError, match="logits must be"):
        evaluate(COS, Y, 3)
    bad = COS.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate(bad, Y, 2)
