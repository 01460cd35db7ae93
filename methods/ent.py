"""Conditional-entropy minimisation on UEO's parameters, optimiser and schedule (an ablation baseline)."""
from __future__ import annotations

from ueobench import register_method
from ueobench.adapt import PromptTuningMethod, entropy_loss


@register_method("ent")
class EntropyMinimisation(PromptTuningMethod):
    display_name = "Ent"
    def objective(self, probs, idx):
        return entropy_loss(probs)
