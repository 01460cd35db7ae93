"""Information maximisation (mean entropy minus entropy of the mean) on UEO's parameters and optimiser."""
from __future__ import annotations

from dataclasses import dataclass

from ueobench import option, register_method
from ueobench.adapt import PromptTuningMethod, PromptTuningOptions, im_loss


@register_method("im")
class InformationMaximisation(PromptTuningMethod):
    display_name = "IM"
    @dataclass
    class Options(PromptTuningOptions):
        trade: float = option(1.0, "weight of the marginal-entropy (diversity) term", min=0)

    def objective(self, probs, idx):
        return im_loss(probs, self.options.trade)
