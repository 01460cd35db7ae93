"""What method authors build on: the one trainer, prompt tuning, the prompt learner, losses, augmentations.

Importable from here (torch loads on first use): ``PromptTuningMethod``, ``PromptTuningOptions``, ``TrainSpec``,
``fit``, ``PromptLearner``, the losses (``entropy``, ``im_loss``, ...), the transforms.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "PromptTuningMethod": "prompt_tuning", "PromptTuningOptions": "prompt_tuning", "TrainSpec": "trainer",
    "fit": "trainer", "PromptLearner": "prompt_learner", "entropy": "losses", "entropy_loss": "losses",
    "entropy_from_logits": "losses", "im_loss": "losses", "ueo_loss": "losses", "pouf_transport_loss": "losses",
    "random_resized_crop": "transforms", "square_resize_then_crop": "transforms", "TPTViews": "augmix",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ueobench.adapt' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ueobench.adapt.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
