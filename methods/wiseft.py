"""WiSE-FT (Wortsman et al., CVPR 2022), as CaRot's src/wise_ft.py runs it: fine-tuned and zero-shot weights interpolated.

What it computes (``src/wise_ft.py`` 16-21, 66-87): θ_α = (1 − α)·θ_zs + α·θ_ft, key by key over the whole
``ImageClassifier`` state dict, i.e. every tensor of the image tower (parameters and float buffers) and the head's
weight and bias. θ_ft is fine-tuning's trained model (``ft``: this method *trains as* ft, so every α and plain FT
share one stored artifact, trained once); θ_zs is the model at setup, before any training: the zero-shot image
tower and the zero-shot head s·t_k with bias 0, which is what the reference's ``zeroshot.pt`` holds (the same
``get_zeroshot_classifier`` construction that initialises FT). The interpolation is applied after the artifact is
trained or loaded (``finish``); α is an evaluation option outside the artifact's identity.

Defaults: α = 0.5 (``--alpha`` default [0.5], the point the paper reports; the α curve is a sweep
``--set alpha=0,0.1,...,1``). Every fine-tuning option (``epochs``, ``lr``, ...) is ft's and defaults to its recipe.
α = 0 is the zero-shot classifier (the interpolated weights are exactly the zero-shot ones, so predictions come
from the cached zero-shot features, as the zero-shot method's) and α = 1 is FT exactly.

Reports: as ft, cosine-unit logits (the head's output divided by the head's initial scale s) with
``logit_scale()`` = s, so softmax(s · output) is the interpolated classifier's softmax. The Fisher-weighted merge
of the reference (``--fisher``) is not offered.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ueobench import AdaptContext, UeobenchError, option, register_method
from ueobench.methods.ft import FineTune


def wise_merge(theta_0: dict[str, torch.Tensor], theta_1: dict[str, torch.Tensor], alpha: float):
    """``_merge`` without Fisher weights: (1 − α)·θ_0 + α·θ_1 for every key of θ_1."""
    return {key: (1 - alpha) * theta_0[key] + alpha * theta_1[key] for key in theta_1.keys()}


@register_method("wiseft")
class WiSEFT(FineTune):
    display_name = "WiSE-FT"
    trains_as = "ft"
    eval_options = ("alpha",)

    @dataclass
    class Options(FineTune.Options):
        alpha: float = option(0.5, "weight of the fine-tuned model: (1 - alpha)·zero-shot + alpha·fine-tuned "
                              "(0: zero-shot, 1: FT)", min=0, max=1)

    def finish(self, context: AdaptContext) -> None:
        """Interpolate the trained (or loaded) FT weights with the zero-shot ones kept at setup (the snapshot of
        the trainable parameters, and the image tower's buffers)."""
        super().finish(context)
        if self._initial_state is None:
            raise UeobenchError("wiseft: finish() before snapshot(); the session snapshots the zero-shot weights "
                                "after setup")
        a = float(self.options.alpha)
        with torch.no_grad():
            for p, p0 in self._initial_state:
                p.copy_((1 - a) * p0 + a * p)
            for n, b in self.backbone.model.visual.named_buffers():
                if n in self._buffers0 and b.is_floating_point():  # integer counters keep FT's value
                    b.copy_((1 - a) * self._buffers0[n] + a * b)
