"""FLYP (Goyal et al., CVPR 2023) as CaRot's repository runs it: contrastive fine-tuning of all of CLIP on class captions.

``example_scripts/flyp.sh`` of MLAI-Yonsei/CaRot: the same ``carot_loss`` loop with ``--cross_fnorm``,
``--l_orth_wv`` and ``--distil_coef`` at their argparse default 0, so the loss is FLYP's symmetric InfoNCE alone,

    L = ½[CE(s·I Tᵀ, arange) + CE(s·T Iᵀ, arange)],   s = exp(logit_scale), learned,

over the (image, class caption) pairs of a batch (same-class pairs are negatives), with no teacher. Every CLIP
weight trains (both towers, the projections, the logit scale) with AdamW lr 1e-5, weight decay 0.1 on every
parameter, batch 512, 10 epochs, a linear warm-up then a cosine (the recipe of FLYP's own ImageNet runs too).

The schedule is rescaled as for ``carot`` (ueobench.methods.carot): the epochs are kept, the warm-up is
``warmup_frac`` = 500/25,000 of the total steps (``warmup_steps=500`` for the reference's absolute count), the batch
is capped to the source size, each step takes a full batch from a reshuffled stream of the source images, and the
resolved counts are recorded. Captions and the evaluation head use the dataset's template by default
(``templates=openai_imagenet``: the reference's 80 templates). Augmentation RandomResizedCrop(0.9-1), no flip.
The student after the last step is evaluated: cosines through the fine-tuned towers, the learned logit scale for
calibration and scaled scores.
"""
from __future__ import annotations

from dataclasses import dataclass

from ueobench.methods.carot import (
    REFERENCE_FRACTION,
    TEMPLATE_SETS,
    CaRot,
    ContrastiveOptions,
)

from ueobench import option, register_method


@register_method("flyp")
class FLYP(CaRot):
    """CaRot's loop without the orthogonality, the Frobenius term and the teacher (``coefficients`` = 0)."""

    display_name = "FLYP"

    @dataclass
    class Options(ContrastiveOptions):
        epochs: int = option(10, "epochs of ⌈N/batch⌉ steps", min=1)
        batch_size: int = option(512, "pairs per step (capped to the source size)", min=2)
        lr: float = option(1e-5, "AdamW learning rate, every parameter", min=0)
        weight_decay: float = option(0.1, "AdamW weight decay, every parameter (logit scale included)", min=0)
        min_lr: float = option(0.0, "added to the cosine (the reference's min_lr)", min=0)
        warmup_frac: float = option(REFERENCE_FRACTION, "linear warm-up as a fraction of the total steps "
                                    "(reference: 500 of ~25,000)", min=0, max=1)
        warmup_steps: int | None = option(None, "absolute warm-up steps; overrides warmup_frac (the reference: "
                                          "500)", min=0)
        templates: str = option("dataset", "captions and head: the dataset's template, or the 80 OpenAI ImageNet "
                                "templates (the reference's)", choices=TEMPLATE_SETS)
        prompt: str | None = option(None, "the template with templates=dataset (default: the dataset's)",
                                    contains="{}")
        aug_scale_min: float = option(0.9, "RandomResizedCrop scale lower bound (no flip)", min=0.01, max=1)
        full_batches: bool = option(True, "every step a full batch from a reshuffled stream (the reference); "
                                    "false: one pass per epoch with a smaller last batch")

    def coefficients(self) -> tuple[float, float, float]:
        return 0.0, 0.0, 0.0
