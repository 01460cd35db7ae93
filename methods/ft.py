"""Full fine-tuning (FT), as CaRot's repository runs it (MLAI-Yonsei/CaRot ft.sh): image tower + zero-shot head, CE, AdamW.

What it computes (``src/main.py`` 72-101, ``src/models/ft_loss.py``, ``src/models/modeling.py``,
``src/models/zeroshot.py`` 20-81). The model is the reference's ``ImageClassifier``: the image tower followed by a
``ClassificationHead(normalize=True)``, a linear layer on the L2-normalised image feature whose weight starts as
the zero-shot classifier ``s · t_k`` (t_k: per class, each template's text embedding normalised, averaged over
the templates, renormalised; s = exp(logit_scale) of the loaded CLIP) and whose bias starts at 0. Both the
image tower (every parameter, ``visual.proj`` included) and the head train; the text tower is used once to
build the head and never again (the reference deletes it). The loss of a batch of labeled source images is
``CE(W · x/‖x‖ + b, y)``.

Defaults (``example_scripts/ft.sh`` + ``src/args.py``): AdamW lr 3e-5, weight decay 0.1 on every parameter
(LayerNorms, biases, embeddings and the head included), betas (0.9, 0.999), eps 1e-8; batch 512 (shuffled,
last batch kept); 10 epochs (passes over the source); the lr is set before every step by ``cosine_lr``: a
linear warm-up ``(step + 1)/W`` then a cosine to 0 over the remaining steps. Training view:
RandomResizedCrop(scale 0.9-1, bicubic), no flip (``clip.load``'s ``train_preprocess``, which ``finetune`` uses).
No selection: the model after the last step is the one evaluated and saved.

**Rescaled warm-up.** The reference's W = 500 steps is out of 10 × ⌈1,281,167/512⌉ = 25,030 ImageNet steps; on a
source of a few thousand images (a handful of steps per epoch) that warm-up would never end. So W is the same
fraction of this run's total steps (``warmup_frac`` = 500/25,030, rounded to the nearest step, at least 1;
``warmup_steps=500`` restores the absolute count). The batch is capped to the source size. The resolved batch,
steps and warm-up are in the record (``info``).

**The gradient clip.** ``ft_loss.py`` 133-137 calls ``clip_grad_norm_(params, 1.0)`` on the GradScaler-*scaled*
gradients, without ``unscale_``, under fp16 (``--use_fp16 1``, the default). The scaled norm is S·‖g‖ with S =
2**16 (GradScaler's initial scale, which grows only after 2,000 overflow-free steps), so the clip fires on every
step (unless ‖g‖ < 2**-16) and the gradient AdamW receives is g / (S·‖g‖): every gradient rescaled to norm
2**-16. Under AdamW that is not "no clipping": it makes AdamW's eps (1e-8) large next to the per-parameter
gradients (on ViT-B/16 their RMS is ~2e-9), which shrinks the steps. The default ``grad_clip`` = 2**-16 computes
exactly that on any precision (the trainer clips the unscaled gradient to this norm; the reference's +1e-6 in the
clip's denominator moves the result by ~1e-6 relative); ``grad_clip=1`` is the intended clip (the reference's own
fp32 branch, ``--use_fp16 0``, and mlfoundations/wise-ft's ``finetune.py``) and ``grad_clip=none`` no clip.

Reports: ``predict`` returns the head's logits divided by s (the head's initial scale, the backbone's logit
scale), and ``logit_scale()`` returns s, so softmax(logit_scale() · output) is the reference classifier's
softmax (to float rounding) and the zero-shot head gives the zero-shot cosines (to the rounding of s·t/s,
~1e-7). The head's norm may change during training, so the effective temperature is learned inside the head, as
in the reference. The artifact is the image tower's state (parameters and buffers) and the head. WiSE-FT
(``wiseft``) evaluates the same artifact with its weights interpolated towards the zero-shot model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ueobench import AdaptContext, Method, Options, UeobenchError, option, register_method
from ueobench.adapt import TrainSpec, fit
from ueobench.models import check_prompt_lengths, class_display_name, openai_imagenet_templates

#: ft.sh on ImageNet: 500 warm-up steps of 10 epochs × ⌈1,281,167 / 512⌉ = 25,030 steps
REFERENCE_WARMUP_FRACTION = 500 / 25_030
#: the GradScaler's initial loss scale (torch.cuda.amp.GradScaler(init_scale=2.**16)): the reference clips the
#: scaled gradients to norm 1, i.e. the true gradients to norm 1 / 2**16
REFERENCE_CLIP = 2.0 ** -16
TEMPLATE_SETS = ("dataset", "openai_imagenet")
#: ``src/templates/openai_imagenet_template.py``: the 80 templates of the reference's head (ft.sh's --template),
#: which are CLIP's own ImageNet templates
OPENAI_IMAGENET_TEMPLATES = openai_imagenet_templates()


# ----------------------------------------------------------------------------------- the reference pieces


def zeroshot_head(text_embeddings: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """``get_zeroshot_classifier``'s weight [K, D] from raw text embeddings [K, T, D] (T templates): each
    embedding normalised, averaged over the templates, renormalised, times the logit scale."""
    e = text_embeddings / text_embeddings.norm(dim=-1, keepdim=True)
    e = e.mean(dim=1)
    e = e / e.norm(dim=-1, keepdim=True)
    return e * scale


def head_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``ClassificationHead(normalize=True)``: ``inputs / inputs.norm()`` then the linear layer (weight, bias)."""
    return F.linear(features / features.norm(dim=-1, keepdim=True), weight, bias)


def warmup_cosine(step: int, total: int, warmup: int, min_lr_ratio: float = 0.0) -> float:
    """``cosine_lr`` (src/models/utils.py 19-34) as a multiplier of the base lr, set before step ``step``:
    a linear warm-up, then a cosine to 0, plus ``min_lr_ratio`` (the reference's min_lr / lr; FT's is 0)."""
    if step < warmup:
        return (step + 1) / warmup
    e, es = step - warmup, total - warmup
    if es <= 0:  # only past the last step (LambdaLR evaluates step == total after the last one)
        return 0.0 + min_lr_ratio
    return 0.5 * (1 + math.cos(math.pi * e / es)) + min_lr_ratio


def steps_of(fraction: float, total: int) -> int:
    """A fraction of ``total`` steps: the nearest step, at least 1 when the fraction is positive."""
    return 0 if fraction == 0 else max(1, int(math.floor(fraction * total + 0.5)))


def resolve_schedule(n_train: int, batch_size: int, epochs: int, warmup_frac: float,
                     warmup_steps: int | None) -> dict[str, Any]:
    """The batch capped to the source, ⌈N/batch⌉ steps per epoch (the last batch kept), the warm-up as a fraction
    of the total steps (nearest step, at least 1 when the fraction is positive) unless given in steps."""
    if n_train < 1:
        raise UeobenchError("no labeled source images to train on")
    batch = min(batch_size, n_train)
    per_epoch = math.ceil(n_train / batch)
    total = epochs * per_epoch
    if warmup_steps is not None:
        warm, origin = warmup_steps, "warmup_steps"
    else:
        warm = steps_of(warmup_frac, total)
        origin = f"warmup_frac={warmup_frac:.6g}"
    return {"n_train": n_train, "batch_size": batch, "batch_size_requested": batch_size,
            "batch_capped": batch < batch_size, "steps_per_epoch": per_epoch, "total_steps": total,
            "warmup_steps": warm, "warmup_from": origin}


# ------------------------------------------------------------------------------------------------ the method


@register_method("ft")
class FineTune(Method):
    display_name = "FT"
    track = "labeled-source"
    adaptation = "none"

    @dataclass
    class Options(Options):
        epochs: int = option(10, "passes over the labeled source", min=1)
        batch_size: int = option(512, "images per step (capped to the source size; the last batch is kept)", min=1)
        lr: float = option(3e-5, "AdamW learning rate (image tower and head)", min=0)
        weight_decay: float = option(0.1, "AdamW weight decay, on every trained parameter", min=0)
        warmup_frac: float = option(REFERENCE_WARMUP_FRACTION, "linear warm-up as a fraction of the total steps "
                                    "(the reference: 500 of 25,030)", min=0, max=1)
        warmup_steps: int | None = option(None, "absolute warm-up steps; overrides warmup_frac (the reference: 500)",
                                          min=0)
        grad_clip: float | None = option(REFERENCE_CLIP, "clip the gradient's global norm to this (default 2**-16: "
                                         "what the reference's clip of GradScaler-scaled gradients does; 1: the "
                                         "intended clip; none: no clip)", min=0, min_exclusive=True)
        aug_scale_min: float = option(0.9, "RandomResizedCrop scale lower bound of the training view (no flip)",
                                      min=0, max=1, min_exclusive=True)
        templates: str = option("dataset", "the head's text: the dataset's template, or the 80 OpenAI ImageNet "
                                "templates averaged (the reference's)", choices=TEMPLATE_SETS)
        prompt: str | None = option(None, "the template with templates=dataset (default: the dataset's)",
                                    contains="{}")

    # --------------------------------------------------------------------------------------------- setup

    def setup(self, backbone, class_names: list[str], context: AdaptContext) -> None:
        super().setup(backbone, class_names, context)
        o = self.options
        if o.templates == "dataset":
            templates: tuple[str, ...] = (o.prompt or context.prompt,)
            self.template = templates[0]
        else:
            templates = OPENAI_IMAGENET_TEMPLATES
            self.template = f"OpenAI ImageNet templates ({len(templates)})"
        self.n_templates = len(templates)
        model = backbone.model
        self.scale = float(model.logit_scale.detach().exp().item())  # the head's s, fixed at construction
        with torch.no_grad():
            names = [class_display_name(c) for c in class_names]
            per_template = []
            for t in templates:
                texts = [t.format(c) for c in names]
                check_prompt_lengths(backbone.tokenizer, texts)
                tokens = backbone.tokenizer(texts).to(backbone.device)
                per_template.append(model.encode_text(tokens).float())
            raw = torch.stack(per_template, dim=1)  # [K, T, D]
            weight = zeroshot_head(raw, self.scale)
        self.head_weight = torch.nn.Parameter(weight.contiguous())
        self.head_bias = torch.nn.Parameter(torch.zeros(len(class_names), device=weight.device))
        self._buffers0 = {n: b.detach().clone() for n, b in model.visual.named_buffers()}
        n = (context.num_source or {}).get("train")
        self.schedule = self._resolve(n) if n else None

    def _resolve(self, n_train: int) -> dict[str, Any]:
        o = self.options
        return resolve_schedule(n_train, o.batch_size, o.epochs, o.warmup_frac, o.warmup_steps)

    def trainable_parameters(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"image": list(self.backbone.model.visual.parameters()), "head": [self.head_weight, self.head_bias]}

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            for n, b in self.backbone.model.visual.named_buffers():
                if n in self._buffers0:
                    b.copy_(self._buffers0[n])
        self.backbone.model.eval()

    # ------------------------------------------------------------------------------------------ training

    def train_transform(self):
        from torchvision import transforms as T

        b = self.backbone
        interp = {"bilinear": T.InterpolationMode.BILINEAR}.get(b.info.get("interpolation", "bicubic"),
                                                                 T.InterpolationMode.BICUBIC)
        return T.Compose([T.RandomResizedCrop(b.image_size, scale=(self.options.aug_scale_min, 1.0),
                                              interpolation=interp),
                          T.Lambda(lambda im: im.convert("RGB")), T.ToTensor(), T.Normalize(b.mean, b.std)])

    def lr_factor(self, step: int, total: int) -> float:
        s = self.schedule
        assert s is not None
        if total != s["total_steps"]:
            raise UeobenchError(f"ft: the trainer runs {total} steps, the schedule was resolved for "
                                f"{s['total_steps']}")
        return warmup_cosine(step, total, s["warmup_steps"])

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The reference ImageClassifier's logits (at the head's scale)."""
        feats = self.backbone.model.encode_image(images)
        return head_logits(feats, self.head_weight, self.head_bias)

    def step_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(images).float(), labels)

    def train_spec(self) -> TrainSpec:
        o, s = self.options, self.schedule
        assert s is not None
        groups = {k: (v, o.lr) for k, v in self.trainable_parameters().items() if v}
        return TrainSpec(groups=groups, epochs=o.epochs, batch_size=s["batch_size"], transform=self.train_transform(),
                         optimizer="adamw", weight_decay=o.weight_decay, eps=1e-8, betas=(0.9, 0.999),
                         schedule=self.lr_factor, schedule_unit="iteration", drop_last=False, data="source",
                         grad_clip=o.grad_clip)

    def adapt(self, context: AdaptContext) -> list[dict[str, Any]]:
        n = (context.num_source or {}).get("train")
        if not n:
            raise UeobenchError("ft trains on labeled source images: pass --source DOMAIN")
        self.schedule = self._resolve(n)
        model = self.backbone.model
        model.train()  # the reference's model.train() (a ResNet's BatchNorm then uses batch statistics)
        try:
            history = fit(self.train_spec(), context, self.step_loss, label="ft")
        finally:
            model.eval()
        return history

    # ---------------------------------------------------------------------------------------- evaluation

    def logit_scale(self) -> float:
        return self.scale

    @torch.no_grad()
    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        """From L2-normalised features (the cached ones, while the tower is the zero-shot one): the head's logits
        divided by its scale."""
        w, b = self.head_weight, self.head_bias
        return ((features.to(w.device, w.dtype) @ w.T + b) / self.scale).float()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return (self.logits(images.to(self.backbone.device)).float() / self.scale)

    # ------------------------------------------------------------------------------- artifact and state

    def artifact_state(self) -> dict[str, torch.Tensor]:
        """The fine-tuned image tower (parameters and buffers, by state-dict name) and the head."""
        state = {f"visual.{k}": v.detach().cpu().clone() for k, v in self.backbone.model.visual.state_dict().items()}
        state["head.weight"] = self.head_weight.detach().cpu().clone()
        state["head.bias"] = self.head_bias.detach().cpu().clone()
        return state

    def load_artifact_state(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        visual = self.backbone.model.visual
        expected = {f"visual.{k}": v for k, v in visual.state_dict().items()}
        expected.update({"head.weight": self.head_weight, "head.bias": self.head_bias})
        if set(expected) != set(state):
            missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
            raise ValueError(f"artifact does not match the model: missing {missing[:4]}, unexpected {extra[:4]}")
        for k, v in expected.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(f"artifact tensor {k} has shape {list(state[k].shape)}, expected {list(v.shape)}")
        visual.load_state_dict({k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")},
                               strict=True)
        with torch.no_grad():
            self.head_weight.copy_(state["head.weight"].to(self.head_weight.device, self.head_weight.dtype))
            self.head_bias.copy_(state["head.bias"].to(self.head_bias.device, self.head_bias.dtype))
        self.backbone.model.eval()

    def selection(self) -> dict[str, Any]:
        return {"rule": "the model after the last step (no selection, as the reference)", "on": None}

    def info(self) -> dict[str, Any]:
        o = self.options
        out: dict[str, Any] = {"templates": o.templates, "n_templates": self.n_templates, "head_scale": self.scale,
                               "grad_clip": o.grad_clip, "lr": o.lr, "weight_decay": o.weight_decay}
        if self.schedule is not None:
            out.update(self.schedule)
        return out

    @classmethod
    def work(cls, options, n_adapt: int, n_test: int, n_known: int) -> float:
        # a forward and a backward through the image tower per training image and epoch (the target's size
        # stands in for the source's), then a pass over each evaluated split
        return float(options.epochs * 3 * n_adapt + n_test + n_adapt)
