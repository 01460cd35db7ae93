"""Conditional-entropy minimisation on UEO's parameters, optimiser and schedule (an ablation baseline)."""
from __future__ import annotations

from ueobench.losses import entropy_loss
from ueobench.method import register_method
from ueobench.prompt_tuning import PromptTuningMethod


@register_method("ent")
class EntropyMinimisation(PromptTuningMethod):
    def objective(self, probs, idx):
        return entropy_loss(probs)
