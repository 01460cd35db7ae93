"""Information maximisation (mean entropy minus entropy of the mean) on UEO's parameters and optimiser."""
from __future__ import annotations

from dataclasses import dataclass

from ueobench.losses import im_loss
from ueobench.method import option, register_method
from ueobench.prompt_tuning import PromptTuningMethod, PromptTuningOptions


@register_method("im")
class InformationMaximisation(PromptTuningMethod):
    @dataclass
    class Options(PromptTuningOptions):
        trade: float = option(1.0, "weight of the marginal-entropy (diversity) term", min=0)

    def objective(self, probs, idx):
        return im_loss(probs, self.options.trade)
