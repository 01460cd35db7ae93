"""UEO: universal entropy optimisation (Liang et al., ICML 2024), faithful to tim-learn/UEO demo.py.

Confidence weights w are the zero-shot max softmax at T = 1 (raw cosines), computed once on the adaptation set
with the test transform and then fixed. The loss is a w-weighted conditional entropy minus the entropy of the
1/w-weighted mean prediction (trade = 1). The prompt and the visual norm affines are tuned with SGD at 1e-4.

Ablations: ``weights=none`` (plain IM), ``tune=prompt`` / ``tune=norm``, and ``weights=oracle``
(w = 1[known] + 1e-3), which reads target labels: such runs are recorded and shown as oracle.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ueobench import option, register_method
from ueobench.adapt import PromptTuningMethod, PromptTuningOptions, ueo_loss

WEIGHTS = ("msp", "none", "oracle")


@register_method("ueo")
class UEO(PromptTuningMethod):
    display_name = "UEO"
    @dataclass
    class Options(PromptTuningOptions):
        trade: float = option(1.0, "weight of the marginal-entropy (diversity) term", min=0)
        weights: str = option("msp", "msp (the method), none (plain IM) or oracle (reads target labels)",
                              choices=WEIGHTS)

    def is_oracle(self) -> bool:
        return self.options.weights == "oracle"

    def before_training(self, context) -> None:
        n = context.num_adapt
        if self.options.weights == "none":
            self.weights = torch.ones(n)
        elif self.options.weights == "oracle":
            labels = torch.as_tensor(context.target_labels())
            self.weights = (labels < len(self.class_names)).float() + 1e-3
        else:  # zero-shot max softmax at T = 1 over the adaptation set, test transform (shared features)
            cos = self.predict_features(context.image_features()).float()
            self.weights = torch.softmax(cos, dim=1).max(dim=1).values.cpu()
        self.weights = self.weights.to(context.device)

    def objective(self, probs, idx):
        return ueo_loss(probs, self.weights[idx.to(self.weights.device)], self.options.trade)

    def info(self) -> dict:
        w = getattr(self, "weights", None)
        if w is None or self.options.weights != "msp":
            return {"weights": self.options.weights}
        return {"weights": "msp", "weight_min": float(w.min()), "weight_max": float(w.max()), "weight_mean": float(w.mean())}
