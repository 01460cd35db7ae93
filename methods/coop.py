"""CoOp (Zhou et al., IJCV 2022), as CRoFT's repository runs it: 16 shared context tokens trained with CE on the labeled source.

What it computes (CRoFT's copy of CoOp, ``LinLLLL/CRoFT`` ``CoOp/trainers/coop.py``): the prompt of class k is
``[SOT] ctx_1 .. ctx_16 <class name> . [EOT]`` with one context shared by every class (CSC False), the class
token at the end, the context drawn at random (normal, std 0.02; ``ctx_init`` gives CoOp's CTX_INIT instead).
Both towers stay frozen. Each batch of labeled source images goes through the frozen image tower with the
training augmentation (RandomResizedCrop, scale 0.08-1, bicubic, + horizontal flip: Dassl's
``random_resized_crop``/``random_flip``), and the loss is ``CE(s * cos(image, prompts), label)`` with CLIP's own
frozen logit scale s. Predictions are those cosines, from the cached eval-transform features (the image tower
is untouched). The trained model, and the stored artifact, is the context vectors [16, width].

The defaults are CRoFT's scripts for CoOp (``scripts/coop/coop*.sh``: N_CTX 16, CSC False, CLASS_TOKEN_POSITION
end, no CTX_INIT) with its config ``configs/trainers/CoOp/ViT_ep30.yaml`` (the same for ``rn50_ep30``): SGD,
lr 0.002, batch 32 (``drop_last`` when there is at least one full batch, Dassl's data manager), 30 epochs,
cosine, 1 warm-up epoch at a constant 1e-5. From CRoFT's Dassl defaults (``dassl/config/defaults.py``): momentum
0.9, **weight decay 0.1** (stock Dassl: 5e-4), no dampening or Nesterov, WARMUP_RECOUNT (the cosine restarts
after the warm-up with T_max = 30 epochs), and ``TEST.FINAL_MODEL = "best_val"`` (stock Dassl: ``last_step``).
The schedule steps once per epoch: epoch 1 at 1e-5, epoch e >= 2 at 0.001 * (1 + cos(pi * (e - 2) / 30)), the
last (30th) at 2.2e-5. After every epoch the source_val top-1 accuracy is measured and the first epoch with the
highest value (strict ``>``, Dassl's ``after_epoch``) is the model kept (``model-best.pth.tar``, which CoOp's
``load_model`` and every evaluation script load).

Reports: the cosines (scale: the backbone's logit scale, which CoOp trains at); the selection (rule, epoch,
source_val accuracy). CRoFT's OOD score for CoOp is the energy ``logsumexp(s * cos)``: the registry's
``scaled_energy`` (``--score scaled_energy --rule idval:0.95``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ueobench import Method, Options, UeobenchError, option, register_method
from ueobench.adapt import PromptLearner, TrainSpec, fit, random_resized_crop
from ueobench.adapt.trainer import selected_epoch
from ueobench.models import encode_images

INIT_STD = 0.02  # CoOp's nn.init.normal_(ctx_vectors, std=0.02)


def dassl_warmup_cosine(base_lr: float, warmup_epochs: int, max_epochs: int, warmup_lr: float):
    """Dassl's ConstantWarmupScheduler(CosineAnnealingLR(T_max = max_epochs), cons_lr = warmup_lr) with
    WARMUP_RECOUNT, stepped once per epoch: the multiplier of ``base_lr`` for 0-based epoch ``step``."""

    def factor(step: int, total: int) -> float:
        if step < warmup_epochs:
            return warmup_lr / base_lr if base_lr > 0 else 0.0
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_epochs) / max_epochs))

    return factor


def coop_loss(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
              scale: torch.Tensor | float) -> torch.Tensor:
    """CoOp's ``F.cross_entropy(logit_scale.exp() * img @ txt.t(), label)`` on L2-normalised features."""
    return F.cross_entropy((scale * image_features @ text_features.T).float(), labels)


@register_method("coop")
class CoOp(Method):
    display_name = "CoOp"
    track = "labeled-source"
    adaptation = "none"

    @dataclass
    class Options(Options):
        n_ctx: int = option(16, "shared context tokens in front of the class name (N_CTX)", min=1)
        ctx_init: str = option("", "initialise the context from this phrase (CTX_INIT; its token count must equal "
                                   "n_ctx); empty: at random, std 0.02")
        epochs: int = option(30, "training epochs (OPTIM.MAX_EPOCH; also the cosine's T_max)", min=1)
        batch_size: int = option(32, "training batch (drop_last when there is at least one full batch)", min=1)
        lr: float = option(0.002, "SGD learning rate after the warm-up (OPTIM.LR)", min=0)
        momentum: float = option(0.9, "SGD momentum", min=0, max=1)
        weight_decay: float = option(0.1, "SGD weight decay (CRoFT's Dassl default; stock Dassl/CoOp: 5e-4)", min=0)
        warmup_epochs: int = option(1, "epochs at the constant warm-up lr before the cosine", min=0)
        warmup_lr: float = option(1e-5, "the constant warm-up lr (WARMUP_CONS_LR)", min=0)
        aug_scale_min: float = option(0.08, "smallest RandomResizedCrop area fraction of the training view",
                                      min=0, max=1, min_exclusive=True)
        final_model: str = option("best_val", "best_val: the first epoch with the best source_val top-1 (CRoFT's "
                                  "TEST.FINAL_MODEL); last_step: the last epoch", choices=("best_val", "last_step"))

    @classmethod
    def work(cls, options, n_adapt, n_test, n_known):
        # one frozen image-tower forward per training image and epoch (the target's size stands in for the source's)
        return float(options.epochs * n_adapt + n_adapt + n_test)

    def setup(self, backbone, class_names, context):
        super().setup(backbone, class_names, context)
        o = self.options
        self.learner = PromptLearner(backbone, class_names, o.n_ctx, init=o.ctx_init or None, init_std=INIT_STD)
        if not o.ctx_init:  # the random draw from a generator seeded by the run's seed: the same on every device
            g = torch.Generator().manual_seed(int(context.seed))
            ctx = torch.empty(tuple(self.learner.ctx.shape), dtype=torch.float32).normal_(0.0, INIT_STD, generator=g)
            with torch.no_grad():
                self.learner.ctx.copy_(ctx.to(self.learner.ctx.device))
        self.scale = backbone.model.logit_scale.exp().detach()
        self.chosen: dict | None = None  # {"epoch", "value"} of the kept epoch (best_val), set by adapt or the artifact

    def trainable_parameters(self):
        return {"prompt": [self.learner.ctx]}

    def reset(self):
        super().reset()
        self.chosen = None

    def train_transform(self):
        return random_resized_crop(self.backbone, (self.options.aug_scale_min, 1.0))

    def train_spec(self, n_train: int, select=None) -> TrainSpec:
        o = self.options
        return TrainSpec(groups={"prompt": ([self.learner.ctx], o.lr)}, epochs=o.epochs, batch_size=o.batch_size,
                         optimizer="sgd", momentum=o.momentum, weight_decay=o.weight_decay,
                         schedule=dassl_warmup_cosine(o.lr, o.warmup_epochs, o.epochs, o.warmup_lr),
                         schedule_unit="epoch", data="source", drop_last=n_train >= o.batch_size,
                         transform=self.train_transform(), select=select)

    @torch.no_grad()
    def val_accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy on source_val (what Dassl's ``test(split="val")`` returns, as a fraction)."""
        return float((self.predict_features(features).argmax(1) == labels).double().mean().item())

    def adapt(self, context):
        o = self.options
        n_train = context.num_source["train"]
        select = None
        if o.final_model == "best_val":
            if not context.num_source.get("val"):
                raise UeobenchError("coop keeps the epoch with the best source_val accuracy, but source_val is empty "
                                    "(too few images per class); pass --set final_model=last_step")
            fv = context.source_features("val").float()
            yv = torch.as_tensor(context.source_labels("val"), device=fv.device)
            select = lambda: self.val_accuracy(fv, yv)

        def step_loss(images, labels):
            with torch.no_grad():  # the image tower is frozen
                feats = encode_images(self.backbone, images)
            return coop_loss(feats, self.learner(), labels.to(feats.device), self.scale)

        history = fit(self.train_spec(n_train, select), context, step_loss, label="coop")
        chosen = selected_epoch(history)
        self.chosen = None if chosen is None else {"epoch": chosen["epoch"], "value": chosen["value"]}
        return history

    @torch.no_grad()
    def predict_features(self, features):
        return features.float() @ self.learner().T.to(features.device)

    @torch.no_grad()
    def predict(self, images):
        return self.predict_features(encode_images(self.backbone, images))

    def artifact_meta(self):
        return {"selected": self.chosen}

    def load_artifact_state(self, state, meta):
        super().load_artifact_state(state, meta)
        self.chosen = meta.get("selected")

    def selection(self):
        if self.options.final_model == "last_step":
            return {"rule": "last epoch (final_model=last_step)", "on": None}
        c = self.chosen or {}
        return {"rule": "best_val: the first epoch with the highest source_val top-1 (strict >), Dassl's "
                        "TEST.FINAL_MODEL in CRoFT's copy", "on": "source_val", "epoch": c.get("epoch"),
                "source_val_acc": c.get("value")}

    def info(self):
        c = self.chosen or {}
        return {"n_ctx": self.options.n_ctx, "init": self.options.ctx_init or f"random (std {INIT_STD})",
                "selected_epoch": c.get("epoch"), "logit_scale": float(self.scale)}
