"""CaRot (Oh et al., NeurIPS 2024; MLAI-Yonsei/CaRot): contrastive fine-tuning of all of CLIP + orthogonality + EMA self-distillation.

As the released ``src/models/carot_loss.py`` computes it (``example_scripts/carot.sh``). Every CLIP weight trains
(both towers, ``visual.proj``, ``text_projection``, the logit scale) with one AdamW (lr 1e-5, weight decay 0.1 on
every parameter, the logit scale included and never clamped) on (image, class caption) pairs of a batch:

    L = ½[CE(s·I Tᵀ, arange) + CE(s·T Iᵀ, arange)]            FLYP's symmetric InfoNCE, s = exp(logit_scale)
      + 0.05 · ‖W_v W_tᵀ‖_F                                    the released extra Frobenius term (below)
      + 0.2  · ‖W_vᵀ W_v − I‖_F                                 orthogonality of the visual projection
      + 1.5  · L_SD  (from the second step on)                  self-distillation from an EMA teacher

- The InfoNCE targets are the diagonal: two images of the same class in a batch are negatives of each other.
- ``0.05 · ‖W_v W_tᵀ‖_F`` (``--cross_fnorm 0.05``, commented "d-rank SVD approximation" in the code) is in the
  released script and code but is **not named in the paper**; it is kept because the reference runs it
  (``cross_fnorm=0`` removes it). W_v = ``visual.proj`` [width, D], W_t = ``text_projection`` [width_t, D]; the
  orthogonality norm is the square root of the sum of squares, not squared.
- L_SD = −mean_rows Σ_j [softmax(s_T·I_T T_Tᵀ) · log(softmax(s·I Tᵀ)) + the text-to-image term], the teacher's
  logits at the teacher's own (EMA'd) scale, no temperature, ``log(softmax)`` as released.
- The teacher is a copy of the zero-shot model (eval mode, no gradients). After the optimiser step of step t
  (t = 0, 1, ...), when t % ema_every == 0: θ_T ← m·θ_T + (1 − m)·θ_S over the parameters (not the buffers), with
  m = 0.05 + 0.85·t/(0.2·T) for t < 0.2·T, else 0.9. The first update is at step 0 (m = 0.05).
- lr: linear warm-up (step + 1)/W, then a cosine to 0 (``cosine_lr``, min_lr added), set before every step.

**Rescaled schedule (this harness).** The reference runs ImageNet: 10 "epochs" of ⌈1,281,167/512⌉ = 2,503 steps
(T ≈ 25 k), a 500-step warm-up and an EMA update every 500 steps. On a source of a few thousand images
(4-8 steps per epoch) the warm-up would never end and the teacher would be updated once, at step 0. So the epochs
are kept, and the warm-up and the EMA cadence are fractions of the total steps: ``warmup_frac`` = ``ema_every_frac``
= 500/25,000 = 0.02 (each rounded to the nearest step, at least 1), the momentum ramp stays 20 % of T. The resolved
step counts are in the record (``info``); ``warmup_steps=500 ema_every=500`` gives the reference's absolute
schedule. The batch is 512, capped to the source size on small sources (recorded). Every step takes a full batch
(``full_batches``): the reference draws each step 512 rows of its 102 M-row (image × template) caption CSV and
never reaches the end of it, so an "epoch" is ⌈N/512⌉ full batches, not a pass; here the batches come from a
reshuffled stream of the source images (each pass drops its last N mod batch images, different ones each pass).
Augmentation: RandomResizedCrop(scale 0.9-1, bicubic), no flip (FLYP's ``train_preprocess``).

**Captions.** The reference pairs each image with one of the 80 OpenAI ImageNet templates and builds its evaluation
head from all 80. By default this uses the dataset's template (``context.prompt``) for both;
``templates=openai_imagenet`` draws one of the 80 per image and visit (seeded) and averages the 80 in the head.
Identical captions of a batch are encoded once (the text tower has no batch interaction, so this is the same
computation).

**Evaluation.** The student after the last step (no selection, as the reference); the teacher is not kept.
Class embeddings come from the fine-tuned text tower (each template normalised, averaged, renormalised);
predictions are the unscaled cosines through the fine-tuned image tower (``predict``), and ``logit_scale()`` is the
learned exp(logit_scale), which the reference's logits carry (ECE, scaled scores). fp32 on CPU; on CUDA the
trainer's autocast is the reference's fp16 path (the regularisers included).

For a ResNet the visual projection is the attention pool's ``c_proj`` (W_v = c_proj.weightᵀ); the released
orthogonality line raises a TypeError there (it multiplies by the module), this computes the evident intent.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ueobench import (
    AdaptContext,
    Method,
    Options,
    UeobenchError,
    option,
    register_method,
)
from ueobench.adapt import TrainSpec, fit
from ueobench.methods.ft import OPENAI_IMAGENET_TEMPLATES, TEMPLATE_SETS, steps_of, warmup_cosine
from ueobench.methods.ft import resolve_schedule as ft_schedule
from ueobench.models import check_prompt_lengths, class_display_name

#: the reference's ImageNet schedule: 500 warm-up steps and an EMA update every 500 steps out of ~25,000
REFERENCE_FRACTION = 500 / 25_000


# ------------------------------------------------------------------------------------- the loss, as released


def clip_contrastive(img: torch.Tensor, txt: torch.Tensor, s: torch.Tensor):
    """``ClipLoss`` (clip/loss.py, one process, ls = 0): ½[CE(s·I Tᵀ) + CE(s·T Iᵀ)] with diagonal targets;
    returns (loss, logits_per_image, logits_per_text)."""
    lpi = s * img @ txt.T
    lpt = s * txt @ img.T
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(lpi, labels) + F.cross_entropy(lpt, labels)) / 2, lpi, lpt


def orthogonality(wv: torch.Tensor) -> torch.Tensor:
    """‖W_vᵀW_v − I‖_F, the square root of the sum of squares (carot_loss.py:165-170)."""
    c = wv.T @ wv
    return ((c - torch.eye(c.shape[0], device=c.device)) ** 2).sum() ** 0.5


def cross_frobenius(wv: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    """‖W_v W_tᵀ‖_F (carot_loss.py:157-162; not named in the paper)."""
    return torch.linalg.norm(wv @ wt.T, ord="fro")


def self_distillation(lpi, lpt, lpi_t, lpt_t, log_softmax: bool = False) -> torch.Tensor:
    """−mean_rows Σ_j [softmax(teacher) · log softmax(student)] over both directions (carot_loss.py:195-201);
    ``log(softmax)`` as released unless ``log_softmax``."""
    if log_softmax:
        li, lt = F.log_softmax(lpi, dim=1), F.log_softmax(lpt, dim=1)
    else:
        li, lt = torch.log(F.softmax(lpi, dim=1)), torch.log(F.softmax(lpt, dim=1))
    return -torch.sum(F.softmax(lpi_t, dim=1) * li + F.softmax(lpt_t, dim=1) * lt, dim=1).mean()


# --------------------------------------------------------------------------------------- schedule and EMA


def ema_momentum(step: int, total: int, ramp: float, start: float, end: float) -> float:
    """The teacher momentum (carot_loss.py:221-227): a linear ramp over the first ``ramp``·T steps, then ``end``."""
    if step < total * ramp:
        return (end - start) / (total * ramp) * step + start
    return end


def ema_due(step: int, total: int, every: int) -> bool:
    """carot_loss.py:215-220 (``step == total`` never happens: steps run 0..T−1)."""
    return every > 0 and (step % every == 0 or step == total)


@torch.no_grad()
def ema_update_(teacher: torch.nn.Module, student: torch.nn.Module, m: float) -> None:
    """θ_T ← m·θ_T + (1 − m)·θ_S over ``parameters()`` (buffers are not averaged)."""
    for q, k in zip(student.parameters(), teacher.parameters()):
        k.data.mul_(m).add_((1 - m) * q.detach().data)


def resolve_schedule(n_train: int, batch_size: int, epochs: int, warmup_frac: float, warmup_steps: int | None,
                     ema_every_frac: float | None = None, ema_every: int | None = None,
                     ema_ramp: float | None = None) -> dict[str, Any]:
    """FT's step counts (the batch capped to the source, ⌈N/batch⌉ steps per epoch, the warm-up as a fraction of
    the total unless given in steps), plus the EMA cadence, also a fraction of the total unless given."""
    out = ft_schedule(n_train, batch_size, epochs, warmup_frac, warmup_steps)
    if ema_every_frac is not None:
        total = out["total_steps"]
        every = ema_every if ema_every is not None else steps_of(ema_every_frac, total)
        updates = [t for t in range(total) if ema_due(t, total, every)]
        out.update({"ema_every": every,
                    "ema_every_from": "ema_every" if ema_every is not None else f"ema_every_frac={ema_every_frac:g}",
                    "ema_ramp_steps": total * ema_ramp, "ema_updates": len(updates),
                    "ema_update_steps": updates if len(updates) <= 64 else updates[:64] + ["..."]})
    return out


# ------------------------------------------------------------------------------------------------ the method


@dataclass
class ContrastiveOptions(Options):
    """What FLYP and CaRot share: the data, the optimiser and the schedule."""

    epochs: int = option(10, "epochs of ⌈N/batch⌉ steps", min=1)
    batch_size: int = option(512, "pairs per step (capped to the source size)", min=2)
    lr: float = option(1e-5, "AdamW learning rate, every parameter", min=0)
    weight_decay: float = option(0.1, "AdamW weight decay, every parameter (logit scale included)", min=0)
    min_lr: float = option(0.0, "added to the cosine (the reference's min_lr)", min=0)
    warmup_frac: float = option(REFERENCE_FRACTION, "linear warm-up as a fraction of the total steps "
                                "(reference: 500 of ~25,000)", min=0, max=1)
    warmup_steps: int | None = option(None, "absolute warm-up steps; overrides warmup_frac (the reference: 500)",
                                      min=0)
    templates: str = option("dataset", "captions and head: the dataset's template, or the 80 OpenAI ImageNet "
                            "templates (the reference's)", choices=TEMPLATE_SETS)
    prompt: str | None = option(None, "the template with templates=dataset (default: the dataset's)", contains="{}")
    aug_scale_min: float = option(0.9, "RandomResizedCrop scale lower bound (no flip)", min=0.01, max=1)
    full_batches: bool = option(True, "every step a full batch from a reshuffled stream (the reference); false: "
                                "one pass per epoch with a smaller last batch")


@register_method("carot")
class CaRot(Method):
    display_name = "CaRot"
    track = "labeled-source"

    @dataclass
    class Options(ContrastiveOptions):
        cross_fnorm: float = option(0.05, "weight of ‖W_v W_tᵀ‖_F (released code, not in the paper)", min=0)
        l_orth: float = option(0.2, "weight of ‖W_vᵀW_v − I‖_F on the visual projection", min=0)
        distil: float = option(1.5, "weight of the EMA self-distillation (0: no teacher)", min=0)
        ema_every_frac: float = option(REFERENCE_FRACTION, "EMA teacher update cadence as a fraction of the "
                                       "total steps (reference: every 500 of ~25,000)", min=0, max=1)
        ema_every: int | None = option(None, "absolute EMA cadence in steps; overrides ema_every_frac (0: never)",
                                       min=0)
        ema_ramp: float = option(0.2, "fraction of the steps over which the momentum ramps", min=0, max=1)
        ema_m_start: float = option(0.05, "teacher momentum at step 0", min=0, max=1)
        ema_m_end: float = option(0.9, "teacher momentum after the ramp", min=0, max=1)
        sd_log_softmax: bool = option(False, "log_softmax in the distillation (the reference: log(softmax), "
                                      "which can give NaN when a probability underflows)")

    # --------------------------------------------------------------------------------------------- setup

    def coefficients(self) -> tuple[float, float, float]:
        """(cross_fnorm, l_orth, distil): FLYP has none of these options, hence 0."""
        o = self.options
        return getattr(o, "cross_fnorm", 0.0), getattr(o, "l_orth", 0.0), getattr(o, "distil", 0.0)

    def setup(self, backbone, class_names: list[str], context: AdaptContext) -> None:
        super().setup(backbone, class_names, context)
        o = self.options
        model = backbone.model
        if o.templates == "dataset":
            self.templates = (o.prompt or context.prompt,)
            self.template = self.templates[0]
        else:
            self.templates = OPENAI_IMAGENET_TEMPLATES
            self.template = f"OpenAI ImageNet templates ({len(OPENAI_IMAGENET_TEMPLATES)})"
        names = [class_display_name(c) for c in class_names]
        captions = [t.format(c) for t in self.templates for c in names]  # caption (t, k) at t·K + k
        check_prompt_lengths(backbone.tokenizer, captions)
        self.tokens = backbone.tokenizer(captions)  # [n_templates · K, L]
        cross, orth, _ = self.coefficients()
        if cross or orth:
            self._projections()  # refuse a tower without projections before training
        self.teacher: torch.nn.Module | None = None
        self._head: torch.Tensor | None = None
        self._step = 0
        self._ema_done: list[tuple[int, float]] = []
        self._buffers0 = {n: b.detach().clone() for n, b in model.named_buffers()}
        n = (context.num_source or {}).get("train")
        self.schedule = self._resolve(n) if n else None

    def _resolve(self, n_train: int) -> dict[str, Any]:
        o = self.options
        _, _, distil = self.coefficients()
        ema = {"ema_every_frac": o.ema_every_frac, "ema_every": o.ema_every, "ema_ramp": o.ema_ramp} if distil else {}
        return resolve_schedule(n_train, o.batch_size, o.epochs, o.warmup_frac, o.warmup_steps, **ema)

    def trainable_parameters(self) -> dict[str, list[torch.nn.Parameter]]:
        model = self.backbone.model
        image = list(model.visual.parameters())
        scale = [model.logit_scale] + ([model.logit_bias] if getattr(model, "logit_bias", None) is not None else [])
        seen = {id(p) for p in image + scale}
        text = [p for p in model.parameters() if id(p) not in seen]
        return {"image": image, "text": text, "logit_scale": scale}

    def _projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_v [width, D], W_t [width_t, D]) as the reference names them."""
        model = self.backbone.model
        visual = model.visual
        if getattr(visual, "proj", None) is not None:
            wv = visual.proj
        elif getattr(getattr(visual, "attnpool", None), "c_proj", None) is not None:
            wv = visual.attnpool.c_proj.weight.T  # CLIP ResNet: x @ c_proj.weightᵀ
        else:
            raise UeobenchError(f"{type(self).name}: the image tower of {self.backbone.spec.name} has no output "
                                f"projection (visual.proj or attnpool.c_proj); use --set l_orth=0 cross_fnorm=0")
        wt = getattr(model, "text_projection", None)
        if isinstance(wt, torch.nn.Linear):
            wt = wt.weight.T
        if not isinstance(wt, torch.Tensor):
            raise UeobenchError(f"{type(self).name}: {self.backbone.spec.name} has no text_projection matrix; "
                                f"use --set cross_fnorm=0")
        return wv, wt

    def train_transform(self):
        from torchvision import transforms as T

        b = self.backbone
        interp = {"bilinear": T.InterpolationMode.BILINEAR}.get(b.info.get("interpolation", "bicubic"),
                                                                 T.InterpolationMode.BICUBIC)
        return T.Compose([T.RandomResizedCrop(b.image_size, scale=(self.options.aug_scale_min, 1.0),
                                              interpolation=interp),
                          T.Lambda(lambda im: im.convert("RGB")), T.ToTensor(), T.Normalize(b.mean, b.std)])

    # ------------------------------------------------------------------------------------------ training

    def lr_factor(self, step: int, total: int) -> float:
        s = self.schedule
        assert s is not None
        return warmup_cosine(step, total, s["warmup_steps"], self.options.min_lr / self.options.lr
                             if self.options.lr > 0 else 0.0)

    @staticmethod
    def _normalise(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    def _features(self, model: torch.nn.Module, images: torch.Tensor, ids: torch.Tensor):
        """L2-normalised image and caption features of a batch (each distinct caption encoded once)."""
        img = self._normalise(model.encode_image(images))
        unique, inverse = torch.unique(ids, return_inverse=True)
        txt = self._normalise(model.encode_text(self.tokens[unique].to(images.device)))[inverse.to(images.device)]
        return img, txt, model.logit_scale.exp()

    def caption_ids(self, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.cpu()
        if len(self.templates) == 1:
            return labels
        t = torch.randint(len(self.templates), (len(labels),), generator=self._gen)
        return t * len(self.class_names) + labels

    def step_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cross, orth, distil = self.coefficients()
        model = self.backbone.model
        ids = self.caption_ids(labels)
        img, txt, s = self._features(model, images, ids)
        loss, lpi, lpt = clip_contrastive(img, txt, s)
        if cross or orth:
            wv, wt = self._projections()
            if cross:
                loss = loss + cross * cross_frobenius(wv, wt)
            if orth:
                loss = loss + orth * orthogonality(wv)
        if distil and self._step > 0:
            assert self.teacher is not None
            with torch.no_grad():
                img_t, txt_t, s_t = self._features(self.teacher, images, ids)
                lpi_t, lpt_t = s_t * img_t @ txt_t.T, s_t * txt_t @ img_t.T
            loss = loss + distil * self_distillation(lpi, lpt, lpi_t, lpt_t,
                                                     getattr(self.options, "sd_log_softmax", False))
        return loss

    def after_step(self, step: int, total: int) -> None:
        s = self.schedule
        assert s is not None
        if total != s["total_steps"]:
            raise UeobenchError(f"{type(self).name}: the trainer runs {total} steps, the schedule was resolved for "
                                f"{s['total_steps']}")
        self._step = step + 1
        o = self.options
        if self.teacher is not None and ema_due(step, total, s["ema_every"]):
            m = ema_momentum(step, total, o.ema_ramp, o.ema_m_start, o.ema_m_end)
            ema_update_(self.teacher, self.backbone.model, m)
            self._ema_done.append((step, m))

    def train_spec(self) -> TrainSpec:
        o, s = self.options, self.schedule
        assert s is not None
        groups = {k: (v, o.lr) for k, v in self.trainable_parameters().items() if v}
        return TrainSpec(groups=groups, epochs=o.epochs, batch_size=s["batch_size"], transform=self.train_transform(),
                         optimizer="adamw", weight_decay=o.weight_decay, eps=1e-8, betas=(0.9, 0.999),
                         schedule=self.lr_factor, schedule_unit="iteration",
                         iters_per_epoch=s["steps_per_epoch"] if o.full_batches else None,
                         drop_last=o.full_batches, data="source", after_step=self.after_step)

    def adapt(self, context: AdaptContext) -> list[dict[str, Any]]:
        n = (context.num_source or {}).get("train")
        if not n:
            raise UeobenchError(f"{type(self).name} trains on labeled source images: pass --source DOMAIN")
        self.schedule = self._resolve(n)
        model = self.backbone.model
        _, _, distil = self.coefficients()
        self.teacher = None
        if distil:  # a copy of the zero-shot model, never trained (the reference's deepcopy, in eval mode)
            self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        self._gen = torch.Generator().manual_seed(int(context.seed))
        self._step, self._ema_done, self._head = 0, [], None
        model.train()  # the reference's student.train() (BatchNorm of ResNets then uses batch statistics)
        try:
            history = fit(self.train_spec(), context, self.step_loss, label=type(self).name)
        finally:
            model.eval()
            self._head = None
        if history:
            history[-1]["logit_scale"] = self.logit_scale()
            if self.teacher is not None:
                history[-1]["ema_updates"] = len(self._ema_done)
        return history

    def finish(self, context: AdaptContext) -> None:
        self.teacher = None  # not part of the evaluated model

    # ---------------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def class_head(self) -> torch.Tensor:
        """[K, D]: per class, each template's caption through the current text tower, normalised, averaged over
        the templates, renormalised (``get_zeroshot_classifier`` without its scale)."""
        if self._head is None:
            model = self.backbone.model
            dev = self.backbone.device
            k = len(self.class_names)
            emb = torch.stack([self._normalise(model.encode_text(self.tokens[t * k:(t + 1) * k].to(dev)))
                               for t in range(len(self.templates))])  # [T, K, D]
            self._head = self._normalise(emb.mean(dim=0))
        return self._head

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        head = self.class_head()
        img = self._normalise(self.backbone.model.encode_image(images.to(self.backbone.device)))
        return (img @ head.T).float()

    def logit_scale(self) -> float:
        return float(self.backbone.model.logit_scale.detach().exp().item())

    # ------------------------------------------------------------------------------- artifact and state

    def artifact_state(self) -> dict[str, torch.Tensor]:
        """The whole fine-tuned CLIP (parameters and persistent buffers, by state-dict name); no teacher."""
        return {k: v.detach().cpu().clone() for k, v in self.backbone.model.state_dict().items()}

    def load_artifact_state(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        model = self.backbone.model
        expected = model.state_dict()
        if set(expected) != set(state):
            missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
            raise ValueError(f"artifact does not match the model: missing {missing[:4]}, unexpected {extra[:4]}")
        for k, v in expected.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(f"artifact tensor {k} has shape {list(state[k].shape)}, expected {list(v.shape)}")
        model.load_state_dict(state, strict=True)
        model.eval()
        self._head = None
        self._ema_done = [tuple(x) for x in meta.get("ema_done", [])]

    def artifact_meta(self) -> dict[str, Any]:
        return {"ema_done": [[s, m] for s, m in self._ema_done]}

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            for n, b in self.backbone.model.named_buffers():
                if n in self._buffers0:
                    b.copy_(self._buffers0[n])
        self.backbone.model.eval()
        self.teacher, self._head, self._step, self._ema_done = None, None, 0, []

    def selection(self) -> dict[str, Any]:
        return {"rule": "the student after the last step (no selection, as the reference)", "on": None}

    def info(self) -> dict[str, Any]:
        cross, orth, distil = self.coefficients()
        out: dict[str, Any] = {"templates": self.options.templates, "n_templates": len(self.templates),
                               "cross_fnorm": cross, "l_orth": orth, "distil": distil,
                               "full_batches": self.options.full_batches}
        if self.schedule is not None:
            out.update(self.schedule)
        if self._ema_done:
            out["ema_momenta"] = [round(m, 6) for _, m in self._ema_done[:64]]
        return out

    @classmethod
    def work(cls, options, n_adapt: int, n_test: int, n_known: int) -> float:
        teacher = 1 if getattr(options, "distil", 0.0) else 0
        return float(options.epochs * (3 + teacher) * n_adapt + n_test + n_adapt)
