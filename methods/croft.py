"""CRoFT (Zhu et al., ICML 2024; LinLLLL/CRoFT): frozen CLIP, feature adapters, a worst-case feature generator, EDR.

A labeled-source method. Both CLIP towers stay frozen; what trains is the official code's three D x D matrices
(D = the backbone's embedding width), all identity-initialised: the image adapter ``fc_i`` and the text adapter
``fc_t`` (``Adapter``) and the generator ``G`` (``OODImgGen.img2img_cov``). With raw image features x and raw
text features u (the dataset's prompt template through the text tower, not normalised, as the reference's
PACS/VLCS branch) and ``l2n(v) = v / (1e-6 + |v|)``::

    f = l2n(r * x fc_i^T + (1 - r) * x)       t = l2n(r_t * u fc_t^T + (1 - r_t) * u)      cos = f t^T

Predictions are those cosines (unscaled); the classifier's scale is the backbone's, frozen, as the reference's
``logit_scale.exp()``.

One training iteration, as ``CRoFT.forward_backward`` and Dassl's ``model_backward_and_update`` compute it
(zero_grad on both optimisers, ``backward(retain_graph=True)``, ``step()`` on both):

1. one forward at the batch's starting adapter values (the stale graph);
2. ``gen_step`` generator steps: ``L_gen = CE(s f_c t^T, y) + lambda1 * mean(M * f_c f^T)`` with
   ``f_c = l2n(f G + f)`` and M the same-label mask; every step descends L_gen on G **and** the adapters, the
   adapters' gradient taken through the stale graph (at the batch's starting values);
3. the main step: ``CE(s f t^T, y) + EDR`` with the post-generator G and adapters. EDR: in the covariate branch
   ``CE(s f~_c t^T, y) - lambda1 * mean(M * f_c f_zs^T)`` with ``f~_c = r f_c + (1-r) f_c fc_i`` (un-renormalised,
   the reference's transpose-free mix), plus ``lambda2 * loss2``, the squared gradient of the energy proxy
   ``sum exp(F' T'^T)`` with respect to a perturbation delta = 1e-4 added to both adapters, over the zero-shot
   rows stacked with the generated ones; outside the covariate branch plain ``CE(s f_c t^T, y)`` and the zero-shot
   rows only. All optimisers step on this loss too (the adapters through the stale graph plus their direct use in
   EDR).

How ueobench runs it: the shared trainer with ``steps_per_batch = gen_step + 1`` (one optimiser step per call).
The adapters' parameters reach the stale graph as ``W0 + (W - W.detach())``: the value of the batch's start, the
gradient into the live parameter, which is exactly what ``retain_graph=True`` on the first forward gives (the
features of the frozen image tower are computed once per batch and kept). The reference's two SGD optimisers
(adapter, generator) have identical settings and schedules and are zeroed and stepped together on every loss; SGD
updates each parameter from its own gradient and buffer only, so they are one SGD over both groups (proved in
tests/test_croft.py). Everything runs in fp32 outside autocast, the frozen image tower included (the reference
runs CLIP in fp32, and so does the shared feature cache that selection and evaluation read): ``--precision`` does
not change CRoFT's training.

Defaults: the authors' recipe (train.py:150-159, configs/trainers/CRoFT/*_ep30.yaml, this repo's Dassl defaults):
ratio 0.2, ratio_text 0.5, lambda1 1, lambda2 5, gen_step 1; SGD lr 0.002, momentum 0.9, weight decay 0.1 (on
every matrix, towards 0), batch 32 (the last incomplete batch dropped when there is a full one), 30 epochs, one
warm-up epoch at a constant 1e-5 then cosine over 30 epochs stepped per epoch (epoch e >= 1:
0.001 (1 + cos(pi (e-1) / 30))); RandomResizedCrop(scale 0.08-1, bicubic, the backbone's input size) + flip
through the frozen image tower every batch.

The two dataset-name switches of the reference become options. ``loss2=setup1`` (default) is the ImageNet46 form
(``'46' in DATASET.NAME``: g = d sum(P)/d delta, loss2 = mean(g^2)); ``setup2`` the PACS/VLCS form (g = d mean(P)/d
delta, loss2 = sum(g^2)), smaller by (B K / D)^2. The default is setup1 because the default lambdas (1, 5) and
gen_step 1 are the Setup I (ImageNet46, 16/32 shots) recipe, tuned and reported with that form; the authors never
ran lambda2 = 5 with the setup2 form (their Setup II runs use lambda1 = 15 and lambda2 in {0, 1, ..., 1000}: for a
Setup II-like run pass ``--set loss2=setup2 lambda1=15 lambda2=1000``). ``covariate=true`` (default) is every
dataset but VLCS (``'VLCS' not in DATASET.NAME``); the branch also needs ``wccf`` and ``gen_step > 0``, as there.

Selection: Dassl's ``best_val``, the first epoch of the highest source_val top-1 accuracy (strict >), on the cached
eval-transform features of source_val (the reference's test transform, Resize + CenterCrop). Only ``fc_i`` and
``fc_t`` are saved in the artifact (the generator is not used at prediction).

OOD score and threshold: CRoFT's numbers are ``--score scaled_energy --rule idval:0.95`` (energy
``logsumexp(s cos)`` at the backbone's scale s; known when above the 5th percentile of the energies of the
correctly classified source_val images), with the detection metrics ``auroc_idval`` / ``fpr95_idval``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ueobench import AdaptContext, Method, Options, UeobenchError, option, register_method
from ueobench.adapt import TrainSpec, fit, random_resized_crop
from ueobench.models import check_prompt_lengths, encode_images_raw, prompt_texts

EPS = 1e-6  # the reference's x / (1e-6 + |x|)
DELTA = 1e-4  # the perturbation at which EDR's energy gradient is taken (CRoFT.py:196)


def l2n(x: torch.Tensor) -> torch.Tensor:
    return x / (EPS + x.norm(dim=-1, keepdim=True))


def adapted(x: torch.Tensor, w: torch.Tensor, ratio: float) -> torch.Tensor:
    """The reference's adapter: a residual mix of ``x W^T`` and x, then normalised."""
    return l2n(ratio * (x @ w.t()) + (1.0 - ratio) * x)


def forward(x, u, wi, wt, ratio: float, ratio_text: float, scale: float):
    """``CustomCLIP.forward`` from raw image features x and raw text features u: logits, f, t, f_zs, t_zs."""
    f, t = adapted(x, wi, ratio), adapted(u, wt, ratio_text)
    return scale * f @ t.t(), f, t, l2n(x), l2n(u)


def same_label(y: torch.Tensor, dtype) -> torch.Tensor:
    return (y[:, None] == y[None, :]).to(dtype)


def generator_loss(f, t, y, g, lambda1: float, scale: float):
    """``feature_perturbation``: the generated features f_c = l2n(f G + f) and the generator's loss."""
    fc = l2n(f @ g + f)
    disalign = (same_label(y, f.dtype) * (fc @ f.t())).mean()
    return F.cross_entropy(scale * fc @ t.t(), y) + lambda1 * disalign, fc


def edr_loss(f, fc, t, y, wi, wt, f_zs, t_zs, *, lambda1: float, lambda2: float, ratio: float, ratio_text: float,
             covariate: bool, loss2: str, wccf: bool, scale: float):
    """``CustomCLIP.EDR`` with theta = (wi, wt) the current adapters. ``covariate``: the resolved branch
    (wccf, not VLCS, gen_step > 0). f is unused but for its shape, as in the reference (its stacking has no effect)."""
    disalign = (same_label(y, fc.dtype) * (fc @ f_zs.t())).mean()
    mixed = ratio * fc + (1.0 - ratio) * (fc @ wi)  # as the reference: no transpose, not renormalised
    if covariate:
        loss1 = F.cross_entropy(scale * mixed @ t.t(), y) - lambda1 * disalign
        z = torch.cat([f_zs, fc], 0)  # the generated (adapted) rows join the zero-shot ones
    else:
        loss1 = F.cross_entropy(scale * fc @ t.t(), y)
        z = f_zs
    delta = torch.full_like(wi, DELTA).requires_grad_(True)  # one delta on both matrices
    fi = l2n(ratio * (z @ (wi + delta)) + (1.0 - ratio) * z)
    ti = l2n(ratio_text * (t_zs @ (wt + delta)) + (1.0 - ratio_text) * t_zs)
    p = torch.exp(fi @ ti.t())  # the reference subtracts exp(f t^T), which does not depend on delta
    if loss2 == "setup1":
        grad = torch.autograd.grad(p.sum(), delta, create_graph=True)[0]
        l2 = (grad ** 2).mean()
    else:
        grad = torch.autograd.grad(p.mean(), delta, create_graph=True)[0]
        l2 = (grad ** 2).sum()
    return loss1 + lambda2 * l2 if wccf else lambda2 * l2


def stale(p: torch.Tensor, p0: torch.Tensor) -> torch.Tensor:
    """The value p0 (the batch's start), the gradient into p: the retained graph of the batch's first forward."""
    return p0 + (p - p.detach())


def dassl_schedule(lr: float, warmup_epochs: int, warmup_lr: float):
    """Dassl's ConstantWarmupScheduler(CosineAnnealingLR(T_max = epochs)) as a per-epoch multiplier of lr."""
    def factor(epoch: int, total: int) -> float:
        if epoch < warmup_epochs:
            return warmup_lr / lr if lr > 0 else 0.0
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / total))
    return factor


@register_method("croft")
class CRoFT(Method):
    display_name = "CRoFT"
    track = "labeled-source"
    adaptation = "none"
    feature_kind = "raw"

    @dataclass
    class Options(Options):
        ratio: float = option(0.2, "image adapter mix r: r * x W^T + (1 - r) * x", min=0, max=1)
        ratio_text: float = option(0.5, "text adapter mix", min=0, max=1)
        lambda1: float = option(1.0, "weight of the (dis)alignment terms", min=0)
        lambda2: float = option(5.0, "weight of the energy-gradient penalty loss2", min=0)
        gen_step: int = option(1, "generator steps per batch (the reference: 1; 10 for 1-shot ImageNet46; 5 VLCS)",
                               min=0, max=100)
        wccf: bool = option(True, "the worst-case covariate feature generator and loss1 (off: lambda2 * loss2 only)")
        covariate: bool = option(True, "EDR's covariate branch (the reference: every dataset but VLCS); needs wccf "
                                       "and gen_step > 0")
        loss2: str = option("setup1", "form of the energy-gradient penalty: setup1 = mean((d sum P/d delta)^2) "
                                      "(ImageNet46), setup2 = sum((d mean P/d delta)^2) (PACS/VLCS)",
                            choices=("setup1", "setup2"))
        epochs: int = option(30, "training epochs", min=1)
        batch_size: int = option(32, "training batch size", min=1)
        lr: float = option(0.002, "SGD learning rate (every matrix)", min=0)
        momentum: float = option(0.9, "SGD momentum", min=0, max=1)
        weight_decay: float = option(0.1, "SGD weight decay (this repo's Dassl default; towards 0)", min=0)
        warmup_epochs: int = option(1, "epochs at the constant warm-up lr before the cosine", min=0)
        warmup_lr: float = option(1e-5, "the constant warm-up learning rate (absolute)", min=0)
        aug_scale_min: float = option(0.08, "RandomResizedCrop's smallest scale (the upper one is 1)", min=0.01, max=1)
        drop_last: bool = option(True, "drop the last incomplete batch when there is a full one (Dassl)")
        select: str = option("best_val", "best_val: the first epoch of the best source_val top-1 (Dassl); last",
                             choices=("best_val", "last"))

    # ------------------------------------------------------------------------------------------- state

    def setup(self, backbone, class_names: list[str], context: AdaptContext) -> None:
        super().setup(backbone, class_names, context)
        texts = prompt_texts(context.prompt, class_names)
        check_prompt_lengths(backbone.tokenizer, texts)
        with torch.no_grad():
            tokens = backbone.tokenizer(texts).to(backbone.device)
            u = backbone.model.encode_text(tokens).float()  # raw, as the reference's single-template branch
        self.init_state(u, float(backbone.logit_scale))

    def init_state(self, text_raw: torch.Tensor, scale: float) -> None:
        """The trainable matrices at identity and the fixed text features (``setup`` without a backbone)."""
        d = text_raw.shape[1]
        eye = torch.eye(d, dtype=text_raw.dtype, device=text_raw.device)
        self.text_raw = text_raw
        self.scale = scale
        self.fc_i = torch.nn.Parameter(eye.clone())
        self.fc_t = torch.nn.Parameter(eye.clone())
        self.generator = torch.nn.Parameter(eye.clone())
        self._batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._call = 0
        self._losses: list[tuple[str, float]] = []
        self.selected: dict[str, Any] | None = None

    def trainable_parameters(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"adapter": [self.fc_i, self.fc_t], "generator": [self.generator]}

    def reset(self) -> None:
        super().reset()
        self._batch, self._call, self._losses, self.selected = None, 0, [], None

    def covariate_branch(self) -> bool:
        o = self.options
        return bool(o.wccf and o.covariate and o.gen_step > 0)

    def generator_steps(self) -> int:
        return self.options.gen_step if self.options.wccf else 0

    # ---------------------------------------------------------------------------------------- training

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Raw features of the frozen image tower, in fp32 outside autocast (the reference runs CLIP in fp32; the
        shared feature cache that evaluation and selection read is fp32 too), in the matrices' dtype."""
        with torch.no_grad(), torch.autocast(self.fc_i.device.type, enabled=False):
            return self.backbone.model.encode_image(images.to(self.fc_i.device)).to(self.fc_i.dtype)

    def step_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of the next optimiser step: steps 0..gen_step-1 of a batch are generator steps, the last is
        the main step. The trainer calls it ``gen_step + 1`` times per batch with the same batch."""
        steps = self.generator_steps() + 1
        k = self._call % steps
        if k == 0:
            self._batch = (self.encode(images), labels.to(self.fc_i.device), self.fc_i.detach().clone(),
                           self.fc_t.detach().clone())
        assert self._batch is not None
        self._call += 1
        with torch.autocast(self.fc_i.device.type, enabled=False):
            loss = self.iteration_loss(k, *self._batch)
        self._losses.append(("gen" if k < steps - 1 else "main", float(loss.detach())))
        return loss

    def iteration_loss(self, k: int, x, y, wi0, wt0) -> torch.Tensor:
        o = self.options
        logits, f, t, f_zs, t_zs = forward(x, self.text_raw.to(x.dtype), stale(self.fc_i, wi0),
                                           stale(self.fc_t, wt0), o.ratio, o.ratio_text, self.scale)
        if k < self.generator_steps():
            return generator_loss(f, t, y, self.generator, o.lambda1, self.scale)[0]
        _, fc = generator_loss(f, t, y, self.generator, o.lambda1, self.scale)
        edr = edr_loss(f, fc, t, y, self.fc_i, self.fc_t, f_zs, t_zs, lambda1=o.lambda1, lambda2=o.lambda2,
                       ratio=o.ratio, ratio_text=o.ratio_text, covariate=self.covariate_branch(), loss2=o.loss2,
                       wccf=o.wccf, scale=self.scale)
        return F.cross_entropy(logits, y) + edr

    def val_accuracy(self, context: AdaptContext):
        """Top-1 accuracy on source_val (cached eval-transform features), the reference's best_val criterion."""
        xv = context.source_features("val", "raw")
        yv = torch.as_tensor(context.source_labels("val"), device=xv.device)

        def score() -> float:
            with torch.no_grad():
                return float((self.predict_features(xv).argmax(1) == yv).double().mean().item() * 100.0)
        return score

    def train_spec(self, context: AdaptContext) -> TrainSpec:
        o = self.options
        n_val = (context.num_source or {}).get("val", 0)
        n_train = (context.num_source or {}).get("train", 0)
        if o.select == "best_val" and n_val == 0:
            raise UeobenchError("croft selects its epoch on source_val, which is empty (every class has one image): "
                                "use --set select=last")
        return TrainSpec(
            groups={"adapter": ([self.fc_i, self.fc_t], o.lr), "generator": ([self.generator], o.lr)},
            epochs=o.epochs, batch_size=o.batch_size,
            transform=random_resized_crop(self.backbone, scale=(o.aug_scale_min, 1.0)),
            optimizer="sgd", momentum=o.momentum, weight_decay=o.weight_decay,
            schedule=dassl_schedule(o.lr, o.warmup_epochs, o.warmup_lr), schedule_unit="epoch",
            drop_last=o.drop_last and n_train >= o.batch_size, steps_per_batch=self.generator_steps() + 1,
            data="source", select=self.val_accuracy(context) if o.select == "best_val" else None)

    def adapt(self, context: AdaptContext) -> list[dict]:
        spec = self.train_spec(context)
        self._call, self._losses = 0, []
        history = fit(spec, context, self.step_loss, label="croft")
        self._batch = None
        per_epoch = len(self._losses) // max(len(history), 1)
        for e, entry in enumerate(history):
            chunk = self._losses[e * per_epoch:(e + 1) * per_epoch]
            for kind in ("main", "gen"):
                vals = [v for k, v in chunk if k == kind]
                if vals:
                    entry[f"{kind}_loss"] = sum(vals) / len(vals)
        self.selected = next((h["selected"] for h in history if "selected" in h), None)
        if self.selected is None:
            self.selected = {"epoch": len(history), "value": None, "on": None}
        return history

    # -------------------------------------------------------------------------------------- prediction

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        o = self.options
        x = features.to(self.fc_i.device, self.fc_i.dtype)
        f = adapted(x, self.fc_i, o.ratio)
        t = adapted(self.text_raw.to(x.dtype), self.fc_t, o.ratio_text)
        return f @ t.t()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_features(encode_images_raw(self.backbone, images))

    # --------------------------------------------------------------------------------------- artifacts

    def artifact_state(self) -> dict[str, torch.Tensor]:
        return {"fc_i": self.fc_i.detach().cpu().clone(), "fc_t": self.fc_t.detach().cpu().clone()}

    def load_artifact_state(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if set(state) != {"fc_i", "fc_t"}:
            raise ValueError(f"a croft artifact holds fc_i and fc_t, this one {sorted(state)}")
        with torch.no_grad():
            for name in ("fc_i", "fc_t"):
                p = getattr(self, name)
                if tuple(state[name].shape) != tuple(p.shape):
                    raise ValueError(f"artifact tensor {name} has shape {list(state[name].shape)}, expected "
                                     f"{list(p.shape)}")
                p.copy_(state[name].to(p.device, p.dtype))
        self.selected = meta.get("selected")

    def artifact_meta(self) -> dict[str, Any]:
        return {"selected": self.selected}

    def selection(self) -> dict[str, Any]:
        sel = self.selected or {}
        if self.options.select == "last":
            return {"rule": "last epoch", "on": None, "epoch": sel.get("epoch")}
        return {"rule": "best epoch by source_val top-1 accuracy (strict >: the first of ties; Dassl best_val)",
                "on": "source_val", "epoch": sel.get("epoch"), "source_val_acc": sel.get("value")}

    def info(self) -> dict[str, Any]:
        return {"dim": int(self.fc_i.shape[0]), "scale": self.scale, "covariate_branch": self.covariate_branch(),
                "steps_per_batch": self.generator_steps() + 1, "loss2": self.options.loss2,
                "selected_epoch": (self.selected or {}).get("epoch")}

    @classmethod
    def work(cls, options, n_adapt: int, n_test: int, n_known: int) -> float:
        return float(options.epochs * n_adapt + n_test)  # the source is about the target's size; tower forward only
