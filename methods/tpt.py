"""TPT (Shu et al., NeurIPS 2022; azshue/TPT): per-image test-time prompt tuning.

For every image: reset the prompt (4 tokens from "a photo of a") and the optimiser, build 64 views (view 0 is
the eval transform of the image; 63 are cut from the **original** image with RandomResizedCrop + flip and, as
the reference does for every non-ImageNet set, Office-Home and DomainNet included, mixed with AugMix), keep the
10% of views with the lowest entropy (chosen at the first step), take one AdamW step (lr 5e-3) on the entropy
of their averaged probability, then predict view 0 with the updated prompt. Images are processed one at a time,
as in the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ueobench import Method, Options, option, register_method
from ueobench.adapt import PromptLearner, TPTViews
from ueobench.models import encode_images


@register_method("tpt")
class TPT(Method):
    display_name = "TPT"
    adaptation = "episodic"

    @dataclass
    class Options(Options):
        views: int = option(64, "views per image, the image itself included", min=2)
        select: float = option(0.1, "fraction of the most confident views kept", min=0, max=1, min_exclusive=True)
        lr: float = option(5e-3, "AdamW learning rate", min=0)
        steps: int = option(1, "optimiser steps per image", min=1)
        n_ctx: int = option(4, "context tokens of the prompt", min=1)
        ctx_init: str = option("a photo of a", "phrase the context starts from")
        scale_min: float = option(0.08, "smallest RandomResizedCrop area fraction", min=0, max=1, min_exclusive=True)
        augmix: bool = option(True, "AugMix views, as the reference for every non-ImageNet set")

    @classmethod
    def work(cls, options, n_adapt, n_test, n_known):
        return float(options.views * (n_adapt + n_test))  # every view of every image, once

    def setup(self, backbone, class_names, context):
        super().setup(backbone, class_names, context)
        o = self.options
        self.prompt = PromptLearner(backbone, class_names, o.n_ctx, o.ctx_init or None)
        self._initial = self.prompt.ctx.detach().clone()
        self._text0 = None
        self.amp_dtype = context.amp_dtype

    def trainable_parameters(self):
        return {"prompt": [self.prompt.ctx]}

    def prediction_transform(self, eval_transform):
        o, b = self.options, self.backbone
        return TPTViews(eval_transform, b.image_size, b.mean, b.std, views=o.views, augmix=o.augmix,
                        scale=(o.scale_min, 1.0))

    def eval_batching(self):
        return 1, False  # one image (64 views) at a time, as the reference

    def _reset_text(self) -> torch.Tensor:
        """The class features of the reset prompt, with their graph: the same for every image (the prompt is reset
        before each), so computed once and back-propagated through again, which gives the same gradients."""
        if self._text0 is None:
            self._text0 = self.prompt()
        return self._text0

    def _reset_prompt(self) -> None:
        with torch.no_grad():
            self.prompt.ctx.copy_(self._initial)

    def _tune_on(self, views: torch.Tensor) -> torch.Tensor:
        o = self.options
        device = self.backbone.device
        self._reset_prompt()
        optimizer = torch.optim.AdamW([self.prompt.ctx], lr=o.lr)  # fresh optimiser state per image
        with torch.no_grad():
            feats = encode_images(self.backbone, views.to(device))
        scale = self.backbone.model.logit_scale.exp().detach()
        keep = max(1, int(len(views) * o.select))
        dtype = self.amp_dtype
        selected = None
        with torch.enable_grad():
            for step in range(o.steps):
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    text = self._reset_text() if step == 0 else self.prompt()
                    logits = (scale * feats @ text.T).float()
                if selected is None:  # chosen at the first step and reused, as in the reference
                    p = logits.detach().softmax(1)
                    selected = (-(p * p.clamp_min(1e-12).log()).sum(1)).argsort()[:keep]
                logp = logits[selected].log_softmax(1)
                avg = torch.logsumexp(logp, dim=0) - math.log(keep)
                loss = -(avg.exp() * avg).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward(retain_graph=step == 0)  # the reset prompt's text graph serves every image
                optimizer.step()
        with torch.no_grad():
            return feats[0] @ self.prompt().T

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: [B, views, 3, H, W] from ``prediction_transform`` (view 0 is the plain image)."""
        out = torch.stack([self._tune_on(v) for v in images])
        self._reset_prompt()
        return out
