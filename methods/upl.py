"""UPL (Huang et al., 2022; tonyhuang2022/UPL): prompts trained with cross-entropy on zero-shot pseudo-labels.

Zero-shot CLIP (the dataset's prompt, CLIP's logit scale) labels the adaptation set; the ``shots`` = 16 most
confident samples per predicted class become pseudo-labels. A 16-token generic context, randomly initialised
(std 0.02), is trained on them, as the reference's Dassl trainer does: SGD lr 0.002, momentum 0.9, weight decay
5e-4, batch 32 (``drop_last`` when there is at least one full batch), RandomResizedCrop + flip, 50 epochs; the
schedule steps **once per epoch**: one warm-up epoch at a constant 1e-5, then a cosine over 50 epochs that
counts from 0 after the warm-up (epoch 2 at 0.002, the last near 8e-6). The reference averages the predictions
of 16 prompts trained from seeds 1..16: ``ensemble`` = 16 by default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ueobench import Method, Options, option, register_method
from ueobench.adapt import PromptLearner, TrainSpec, fit, random_resized_crop
from ueobench.models import encode_images, encode_texts, prompt_texts

WARMUP_LR = 1e-5  # Dassl's WARMUP_CONS_LR in UPL's configs


def dassl_cosine_with_warmup(base_lr: float, warmup_epochs: int, max_epochs: int):
    """Dassl's ConstantWarmupScheduler around CosineAnnealingLR(T_max = max_epochs), with WARMUP_RECOUNT: the
    factor for the epoch with index ``step`` (0-based), as a multiplier of ``base_lr``."""

    def factor(step: int, total: int) -> float:
        if step < warmup_epochs:
            return WARMUP_LR / base_lr
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_epochs) / max_epochs))

    return factor


@register_method("upl")
class UPL(Method):
    display_name = "UPL"
    adaptation = "transductive"

    @dataclass
    class Options(Options):
        shots: int = option(16, "pseudo-labels kept per predicted class (the most confident)", min=1)
        n_ctx: int = option(16, "random context tokens per prompt", min=1)
        ensemble: int = option(16, "prompts trained and averaged (the reference: 16)", min=1)
        epochs: int = option(50, "epochs per prompt", min=1)
        batch_size: int = option(32, "batch size", min=1)
        lr: float = option(0.002, "SGD learning rate after the warm-up", min=0)
        warmup_epochs: int = option(1, "epochs at the constant warm-up lr 1e-5", min=0)
        eval_every: int = option(0, "evaluate every N epochs (0: final only)", min=0)

    @classmethod
    def work(cls, options, n_adapt, n_test, n_known):
        return 3.0 * options.ensemble * options.epochs * min(n_adapt, options.shots * n_known) + n_adapt + n_test

    def setup(self, backbone, class_names, context):
        super().setup(backbone, class_names, context)
        self.learners = [PromptLearner(backbone, class_names, self.options.n_ctx, init=None)
                         for _ in range(self.options.ensemble)]
        self._text_cache: dict[int, tuple[int, torch.Tensor]] = {}  # new learners: nothing cached is theirs

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
        self.stream_seeds = [self.stream_seed(context.seed, 0), self.stream_seed(context.seed, o.ensemble - 1)]
        pred = pred.to(context.device)
        scale = self.backbone.model.logit_scale.exp().detach()
        history = []
        for i, learner in enumerate(self.learners):
            # prompt i of seed s draws its augmentations from stream s * ensemble + i: the streams of different
            # run seeds never overlap (with s + i, seeds 0 and 1 would share 15 of 16 streams and look less noisy)
            torch.manual_seed(self.stream_seed(context.seed, i))

            def step_loss(images, idx, learner=learner):
                logits = scale * encode_images(self.backbone, images) @ learner().T
                return F.cross_entropy(logits.float(), pred[idx.to(pred.device)])

            spec = TrainSpec(groups={"prompt": ([learner.ctx], o.lr)}, epochs=o.epochs, batch_size=o.batch_size,
                             optimizer="sgd", momentum=0.9, weight_decay=5e-4,
                             schedule=dassl_cosine_with_warmup(o.lr, o.warmup_epochs, o.epochs), schedule_unit="epoch",
                             indices=chosen, drop_last=len(chosen) >= o.batch_size,
                             transform=random_resized_crop(self.backbone, (0.08, 1.0)), eval_every=o.eval_every)
            history += [{**h, "prompt": i} for h in fit(spec, context, step_loss, label=f"upl prompt {i + 1}/{o.ensemble}")]
        return history

    def stream_seed(self, seed: int, i: int) -> int:
        return seed * self.options.ensemble + i

    @torch.no_grad()
    def _text(self, i: int) -> torch.Tensor:
        """Prompt i's class features, computed once per state of its context (evaluation runs over many batches;
        the prompt pass is deterministic, so the cached features are the ones a fresh pass gives, bit for bit)."""
        cache = self._text_cache
        version = self.learners[i].ctx._version
        if i not in cache or cache[i][0] != version:
            cache[i] = (version, self.learners[i]())
        return cache[i][1]

    @torch.no_grad()
    def predict_features(self, features):
        return torch.stack([features @ self._text(i).T for i in range(len(self.learners))]).mean(0)

    @torch.no_grad()
    def predict(self, images):
        return self.predict_features(encode_images(self.backbone, images))

    def info(self):
        return {"ensemble": self.options.ensemble, "pseudo_labelled": getattr(self, "num_pseudo", None),
                "prompt_stream_seeds": getattr(self, "stream_seeds", None)}
