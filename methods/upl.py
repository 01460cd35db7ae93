"""UPL (Huang et al., 2022): a prompt trained with cross-entropy on zero-shot pseudo-labels.

Zero-shot CLIP (the dataset's prompt, CLIP's logit scale) labels the adaptation set; the ``shots`` = 16 most
confident samples per predicted class become pseudo-labels. A 16-token generic context, randomly initialised
(std 0.02), is trained on them: SGD lr 0.002, momentum 0.9, weight decay 5e-4, cosine over 50 epochs after one
warm-up epoch at 1e-5, batch 32, RandomResizedCrop + flip. The reference averages 16 prompts trained from
different seeds; ``ensemble`` sets that count (default 1 here, for cost; the record keeps both numbers).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ueobench.clip_ops import encode_images, encode_texts, prompt_texts
from ueobench.method import Method, Options, register_method
from ueobench.prompt_learner import PromptLearner
from ueobench.trainer import TrainSpec, fit
from ueobench.transforms import random_resized_crop

REFERENCE_ENSEMBLE = 16


@register_method("upl")
class UPL(Method):
    adaptation = "transductive"

    @dataclass
    class Options(Options):
        shots: int = 16
        n_ctx: int = 16
        ensemble: int = 1
        epochs: int = 50
        batch_size: int = 32
        lr: float = 0.002
        warmup_epochs: int = 1
        eval_every: int = 0

    def setup(self, backbone, class_names, context):
        super().setup(backbone, class_names, context)
        self.learners = [PromptLearner(backbone, class_names, self.options.n_ctx, init=None)
                         for _ in range(self.options.ensemble)]
        self._initial = [pl.ctx.detach().clone() for pl in self.learners]
        self.history = []

    def trainable_parameters(self):
        return {f"prompt{i}": [pl.ctx] for i, pl in enumerate(self.learners)}

    @torch.no_grad()
    def pseudo_labels(self, context) -> tuple[list[int], torch.Tensor]:
        text = encode_texts(self.backbone, prompt_texts(context.prompt, self.class_names))
        scale = self.backbone.model.logit_scale.exp().item()
        probs = torch.softmax(scale * context.image_features() @ text.T, dim=1).cpu()
        conf, pred = probs.max(dim=1)
        chosen: list[int] = []
        for k in range(len(self.class_names)):
            members = (pred == k).nonzero().flatten()
            top = members[conf[members].argsort(descending=True)[: self.options.shots]]
            chosen.extend(sorted(top.tolist()))
        return chosen, pred

    def adapt(self, context):
        o = self.options
        chosen, pred = self.pseudo_labels(context)
        self.num_pseudo = len(chosen)
        pred = pred.to(context.device)
        scale = self.backbone.model.logit_scale.exp().detach()
        for i, learner in enumerate(self.learners):
            torch.manual_seed(context.seed + i)

            def step_loss(images, idx, learner=learner):
                logits = scale * encode_images(self.backbone, images) @ learner().T
                return F.cross_entropy(logits.float(), pred[idx.to(pred.device)])

            spec = TrainSpec(groups={"prompt": ([learner.ctx], o.lr)}, epochs=o.epochs, batch_size=o.batch_size,
                             optimizer="sgd", momentum=0.9, weight_decay=5e-4, schedule="cosine",
                             warmup_epochs=o.warmup_epochs, warmup_lr=1e-5, indices=chosen,
                             transform=random_resized_crop(self.backbone, (0.08, 1.0)), eval_every=o.eval_every)
            self.history += fit(spec, context, step_loss, label=f"upl prompt {i + 1}/{o.ensemble}")

    def uses_frozen_features(self) -> bool:
        return True

    @torch.no_grad()
    def predict_features(self, features):
        return torch.stack([features @ pl().T for pl in self.learners]).mean(0)

    @torch.no_grad()
    def predict(self, images):
        return self.predict_features(encode_images(self.backbone, images))

    def reset(self):
        with torch.no_grad():
            for pl, init in zip(self.learners, self._initial):
                pl.ctx.copy_(init)

    def info(self):
        return {"ensemble": self.options.ensemble, "reference_ensemble": REFERENCE_ENSEMBLE,
                "pseudo_labelled": getattr(self, "num_pseudo", None)}
