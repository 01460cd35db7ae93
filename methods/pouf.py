"""POUF (Tanwisuth et al., ICML 2023), prompt mode: transport loss + 0.3 x IM on the prompt and the logit scale.

Effective learning rates as coded in the reference (methods.md section 2): the LambdaLR multiplies each group's
lr by the base lr 0.01, so the prompt starts at 0.1 x 0.01 = 1e-3 and the logit scale at 5e-5 x 0.01 = 5e-7,
then decays as (1 + 0.0002 it)^-0.75. SGD with Nesterov momentum 0.9 and weight decay 1e-3, batch 96,
500 iterations per epoch for 10 epochs (the script's value), drop_last; training view as tllib builds it: a
256 x 256 square resize (bicubic), RandomResizedCrop(224, 0.08-1, bilinear), flip.
The reference selects its epoch with target labels; here the last epoch is reported. Note that at 5e-7 the
logit scale (about 4.6 = ln 100 in fp32) moves only when its gradient exceeds about 0.5, so in practice it
barely changes, in the reference as here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ueobench import option, register_method
from ueobench.adapt import (
    PromptTuningMethod,
    PromptTuningOptions,
    TrainSpec,
    im_loss,
    pouf_transport_loss,
    square_resize_then_crop,
)


def pouf_decay(step: int, total: int) -> float:
    """POUF's LambdaLR factor, stepped every iteration: (1 + 0.0002 * it) ** -0.75."""
    return (1.0 + 0.0002 * step) ** -0.75


@register_method("pouf")
class POUF(PromptTuningMethod):
    display_name = "POUF"
    @dataclass
    class Options(PromptTuningOptions):
        tune: str = option("prompt", "POUF tunes the prompt (and the logit scale)", choices=("prompt",))
        epochs: int = option(10, "epochs (pouf.sh; the argparse default is 20)", min=1)
        iters_per_epoch: int = option(500, "iterations per epoch", min=1)
        batch_size: int = option(96, "target batch size", min=1)
        lr_prompt: float = option(1e-3, "effective learning rate of the prompt (0.1 x base 0.01)", min=0)
        lr_logit_scale: float = option(5e-7, "effective learning rate of the logit scale (5e-5 x base 0.01)", min=0)
        im_weight: float = option(0.3, "weight of the IM term", min=0)
        eval_every: int = option(0, "evaluate every N epochs (0: final only)", min=0)
        aug_scale_min: float = option(0.08, "smallest RandomResizedCrop area fraction", min=0, max=1,
                                      min_exclusive=True)

    dataset_defaults = {}

    def trainable_parameters(self):
        return {"prompt": [self.prompt.ctx], "logit_scale": [self.backbone.model.logit_scale]}

    def step_loss(self, images, idx):
        sim = self.cosine(images).float()
        logits = self.backbone.model.logit_scale.exp() * sim
        probs = torch.softmax(logits, dim=1)
        return pouf_transport_loss(sim, logits) + self.options.im_weight * im_loss(probs, 1.0, marginal_eps=1e-6)

    def train_spec(self, context) -> TrainSpec:
        o = self.options
        return TrainSpec(
            groups={"prompt": ([self.prompt.ctx], o.lr_prompt),
                    "logit_scale": ([self.backbone.model.logit_scale], o.lr_logit_scale)},
            epochs=o.epochs, batch_size=o.batch_size, iters_per_epoch=o.iters_per_epoch, optimizer="sgd",
            momentum=0.9, nesterov=True, weight_decay=1e-3, schedule=pouf_decay, drop_last=True,
            transform=square_resize_then_crop(self.backbone, (o.aug_scale_min, 1.0)),
            eval_every=o.eval_every,
        )
