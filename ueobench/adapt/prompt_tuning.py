"""Shared machinery of the methods that tune a CoOp prompt and/or the visual norm affines (ent, im, UEO, TENT).

A subclass only supplies ``objective(probs, idx)``; the base builds the prompt learner, selects the norm
parameters, trains with the reference recipe of UEO (SGD without momentum, lr 1e-4 for both groups, cosine
schedule stepped per iteration, batch 64, RandomResizedCrop(0.5-1) + flip, 50 epochs or 5 on DomainNet) and
predicts with the learned prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..method.base import AdaptContext, Method
from ..method.options import Options, option
from ..models.clip_ops import encode_images
from ..models.norms import norm_parameters
from .prompt_learner import PromptLearner
from .trainer import TrainSpec, fit
from .transforms import random_resized_crop

TUNE = ("both", "prompt", "norm")


@dataclass
class PromptTuningOptions(Options):
    tune: str = option("both", "what to tune: both, prompt or norm (visual norm affines)", choices=TUNE)
    norm_rule: str = option("name", "name: the reference's 'bn'/'ln' substring rule; type: every norm module",
                            choices=("name", "type"))
    n_ctx: int = option(4, "context tokens of the prompt", min=1)
    ctx_init: str = option("a photo of a", "phrase the context starts from; empty for random init (std 0.02)")
    epochs: int = option(50, "passes over the adaptation data", min=1)
    batch_size: int = option(64, "adaptation batch size", min=1)
    lr_prompt: float = option(1e-4, "learning rate of the prompt", min=0)
    lr_norm: float = option(1e-4, "learning rate of the norm affines", min=0)
    eval_every: int = option(10, "evaluate test and target every N epochs (0: final only)", min=0)
    aug_scale_min: float = option(0.5, "smallest RandomResizedCrop area fraction", min=0, max=1, min_exclusive=True)


class PromptTuningMethod(Method):
    Options = PromptTuningOptions
    adaptation = "transductive"
    #: Reference schedule per dataset, applied unless the user overrides the option.
    dataset_defaults: ClassVar[dict[str, dict[str, Any]]] = {"domainnet": {"epochs": 5, "eval_every": 1}}

    def setup(self, backbone, class_names: list[str], context: AdaptContext) -> None:
        super().setup(backbone, class_names, context)
        o = self.options
        self.prompt = PromptLearner(backbone, class_names, o.n_ctx, o.ctx_init or None)
        self.norms = norm_parameters(backbone.model.visual, o.norm_rule) if o.tune in ("both", "norm") else {}
        self._text_cache: tuple[int, torch.Tensor] | None = None

    def trainable_parameters(self) -> dict[str, list[torch.nn.Parameter]]:
        groups: dict[str, list[torch.nn.Parameter]] = {}
        if self.options.tune in ("both", "prompt"):
            groups["prompt"] = [self.prompt.ctx]
        if self.options.tune in ("both", "norm"):
            groups["norm"] = list(self.norms.values())
        return groups

    # ------------------------------------------------------------------------------------------ forward

    def text_features(self) -> torch.Tensor:
        """Prompt features; recomputed with gradients while training, cached between optimiser steps otherwise."""
        if torch.is_grad_enabled() and self.prompt.ctx.requires_grad:
            return self.prompt()
        version = self.prompt.ctx._version
        if self._text_cache is None or self._text_cache[0] != version:
            with torch.no_grad():
                self._text_cache = (version, self.prompt())
        return self._text_cache[1]

    def cosine(self, images: torch.Tensor) -> torch.Tensor:
        return encode_images(self.backbone, images) @ self.text_features().T

    def scale(self) -> torch.Tensor:
        """Logit scale of the training softmax: CLIP's own (about 100 for OpenAI weights)."""
        return self.backbone.model.logit_scale.exp().detach()

    @torch.no_grad()
    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.text_features().T

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.cosine(images)

    # ----------------------------------------------------------------------------------------- training

    def objective(self, probs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step_loss(self, images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.scale() * self.cosine(images).float(), dim=1)
        return self.objective(probs, idx)

    def train_spec(self, context: AdaptContext) -> TrainSpec:
        o = self.options
        groups = self.trainable_parameters()
        lrs = {"prompt": o.lr_prompt, "norm": o.lr_norm}
        return TrainSpec(
            groups={k: (v, lrs[k]) for k, v in groups.items()},
            epochs=o.epochs, batch_size=o.batch_size, optimizer="sgd", schedule="cosine",
            transform=random_resized_crop(self.backbone, (o.aug_scale_min, 1.0)), eval_every=o.eval_every,
        )

    @classmethod
    def work(cls, options: Any, n_adapt: int, n_test: int, n_known: int) -> float:
        per_epoch = getattr(options, "iters_per_epoch", 0) * options.batch_size or n_adapt
        evals = 1 + (options.epochs // options.eval_every if options.eval_every else 0)
        return 3.0 * options.epochs * per_epoch + evals * (n_adapt + n_test)

    def before_training(self, context: AdaptContext) -> None:
        """Hook for work done once before the first step (e.g. UEO's confidence weights)."""

    def adapt(self, context: AdaptContext) -> list[dict[str, Any]]:
        self.before_training(context)
        return fit(self.train_spec(context), context, self.step_loss, label=f"{self.name} adapt")

    def reset(self) -> None:
        super().reset()
        self._text_cache = None
