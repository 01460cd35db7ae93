"""Linear probe (Radford et al., 2021; CoOp's lpclip): logistic regression on frozen features, C chosen on source_val.

As CoOp's ``lpclip/linear_probe.py`` runs it: an L2-regularised logistic regression (scikit-learn, L-BFGS,
``max_iter`` 1000) on the frozen image tower's features before L2 normalisation.

The search is the reference's: fit every C of the grid {1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6} and keep the best
source_val accuracy (the first on ties), then 8 bisection steps in log10 space starting from [C*/10, 10·C*]: each
fits both ends, keeps the better (the left on ties) and halves the range towards it. The model reported is the
one kept by the last step, as the reference reports the last step's classifier.

Predictions are the regression's logits (``W·x + b``) in the place of cosines, with a logit scale of 1: the
softmax the harness takes (ECE, MSP, MCM) is the probe's own probability.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ueobench import AdaptContext, Method, Options, option, register_method
from ueobench.models import encode_images_raw

C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


def fit_probe(x: np.ndarray, y: np.ndarray, c: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression

    # L2 is the default penalty (the reference passes penalty="l2", which scikit-learn 1.8 deprecates)
    return LogisticRegression(solver="lbfgs", max_iter=max_iter, C=c).fit(x, y)


def accuracy(clf, x: np.ndarray, y: np.ndarray) -> float:
    return float((clf.predict(x) == y).sum() / len(y))


def search_c(x, y, xv, yv, steps: int, max_iter: int):
    """The reference's C search; returns (the last step's classifier, its C, every (C, val acc) tried)."""
    tried = []
    accs = []
    for c in C_GRID:
        accs.append(accuracy(fit_probe(x, y, c, max_iter), xv, yv))
        tried.append((c, accs[-1]))
    peak = C_GRID[int(np.argmax(accs))]
    left, right = 0.1 * peak, 10.0 * peak
    clf, c_final = None, peak
    if steps == 0:
        return fit_probe(x, y, peak, max_iter), peak, tried
    for _ in range(steps):
        clf_l, clf_r = fit_probe(x, y, left, max_iter), fit_probe(x, y, right, max_iter)
        acc_l, acc_r = accuracy(clf_l, xv, yv), accuracy(clf_r, xv, yv)
        tried += [(left, acc_l), (right, acc_r)]
        if acc_l < acc_r:
            c_final, clf = right, clf_r
            left, right = 0.5 * (np.log10(right) + np.log10(left)), np.log10(right)
        else:
            c_final, clf = left, clf_l
            right, left = 0.5 * (np.log10(right) + np.log10(left)), np.log10(left)
        left, right = float(np.power(10, left)), float(np.power(10, right))
    return clf, c_final, tried


@register_method("lp")
class LinearProbe(Method):
    display_name = "Linear probe"
    track = "labeled-source"
    feature_kind = "raw"

    @dataclass
    class Options(Options):
        search_steps: int = option(8, "bisection steps of the C search after the grid (the reference's num_step)",
                                   min=0, max=64)
        max_iter: int = option(1000, "L-BFGS iterations of each fit", min=1)

    def setup(self, backbone, class_names: list[str], context: AdaptContext) -> None:
        super().setup(backbone, class_names, context)
        self._unfitted(len(class_names), int(backbone.model.visual.output_dim))

    def _unfitted(self, k: int, d: int) -> None:
        """A zero head (uniform predictions) until ``adapt`` fits one or an artifact is loaded."""
        self.weight = torch.zeros(k, d, dtype=torch.float64)
        self.bias = torch.zeros(k, dtype=torch.float64)
        self.c: float | None = None
        self.val_acc: float | None = None

    def reset(self) -> None:
        super().reset()
        self._unfitted(*self.weight.shape)

    def adapt(self, context: AdaptContext) -> list[dict]:
        x = context.source_features("train", "raw").cpu().double().numpy()
        y = context.source_labels("train")
        xv = context.source_features("val", "raw").cpu().double().numpy()
        yv = context.source_labels("val")
        if len(yv) == 0:
            raise ValueError("the linear probe chooses C on source_val, which is empty (every class has one image)")
        clf, self.c, tried = search_c(x, y, xv, yv, self.options.search_steps, self.options.max_iter)
        self.val_acc = accuracy(clf, xv, yv)
        coef, intercept = clf.coef_, clf.intercept_
        if coef.shape[0] == 1:  # two classes: scikit-learn keeps one row, the logit of class 1
            coef, intercept = np.vstack([-coef, coef]) / 2, np.r_[-intercept, intercept] / 2
        self.weight = torch.from_numpy(np.ascontiguousarray(coef, dtype=np.float64))
        self.bias = torch.from_numpy(np.ascontiguousarray(intercept, dtype=np.float64))
        return [{"tried": [{"C": c, "source_val_acc": a} for c, a in tried]}]

    def logit_scale(self) -> float:
        return 1.0

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        w, b = self.weight.to(features.device), self.bias.to(features.device)
        return (features.double() @ w.T + b).float()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_features(encode_images_raw(self.backbone, images))

    def artifact_state(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.clone(), "bias": self.bias.clone()}

    def load_artifact_state(self, state, meta) -> None:
        self.weight, self.bias = state["weight"].double(), state["bias"].double()
        self.c, self.val_acc = meta.get("C"), meta.get("source_val_acc")

    def artifact_meta(self) -> dict:
        return {"C": self.c, "source_val_acc": self.val_acc}

    def selection(self) -> dict:
        return {"rule": f"C of the logistic regression: the grid {list(C_GRID)}, then {self.options.search_steps} "
                        f"log10 bisection steps on source_val accuracy; the last step's model", "on": "source_val",
                "C": self.c, "source_val_acc": self.val_acc}

    @classmethod
    def work(cls, options, n_adapt: int, n_test: int, n_known: int) -> float:
        return float(n_test + n_adapt)

