"""UniEnt (Gao et al., CVPR 2024) on CLIP, as the CLIPTTA repository ports it: GMM-weighted entropy on the LNs.

Faithful to the CLIP port ``MarcLafon/cliptta`` (``ttavlm/methods/unient.py`` at f4221f4, run by
``scripts/open_set/*/unient.sh``), which adapts the soft variant of ``gaozhengqing/UniEnt`` (``ent_unf``,
"UniEnt+") to CLIP. Online, continual, one pass over a seeded shuffled stream. For every batch, ``steps`` (10)
times, at the current parameters:

1. cosines c = f·tᵀ of the **adapted** image features with the frozen class text features;
2. partition score: the max softmax at the training scale s, m = max_k softmax(s·c), min-max normalised over the
   batch, u = 1 − m (high = unknown). The original UniEnt scores the frozen source model's max cosine instead;
   the port leaves that line commented out;
3. a 2-component Gaussian mixture on u, **refit at every step** (scikit-learn ``GaussianMixture`` with its
   defaults: full covariance, k-means initialisation, one init); w₀ = P(component with the lower mean) is the
   pseudo-known weight, w₁ = 1 − w₀ the pseudo-unknown one;
4. loss = β_tta · mean_n(w₀ H_n) − β_reg · H(mean_n softmax(s·c)) − [β_ood · mean_n(w₁ H_n)], with
   H_n = −Σ softmax(s·c + ε)·log_softmax(s·c + ε) and the marginal entropy −Σ p̄ log(p̄ + ε), ε = 1e-6 (the
   port's library; the ε on the logits is a no-op). Both means divide by the batch size, not by Σw (as the
   original's ``ent_unf``); the marginal term covers the whole batch, unknowns included;
5. one Adam step on the visual norm affines (every LayerNorm of a ViT; every BatchNorm/LayerNorm/GroupNorm of a
   ResNet, whose BatchNorms then use batch statistics, as TENT here).

Defaults and where they come from:

- ``steps`` 10, ``lr_norm`` 1e-4, Adam, β_tta = β_reg = 1: the port's scripts (``unient.sh``, every dataset);
  Adam's eps 1e-6 (the port's ``torch.optim.Adam(..., eps=1e-6)``);
- ``use_ood_loss`` off: the released scripts never pass ``--use_ood_loss``, so the entropy *maximisation* on the
  pseudo-unknowns, UniEnt's second term, is off in every run the CLIPTTA paper reports; turn it on with
  ``--set use_ood_loss=true`` (β_ood 0.1, the port's ``configuration.py`` default; the original UniEnt grid-
  searched λ₂ in {1, 0.5, 0.2, 0.1} on the labelled test stream, so it has no label-free value);
- ``batch_size`` 256: the port's 128 known + 128 unknown (``--batch_size``/``--ood_batch_size`` defaults, every
  open-set script); here the stream mixes known and unknown at the protocol's own ratio;
- training scale s: the backbone's ``logit_scale`` by default; the port hard-codes 100 (``scale=100``);
- the mixture's ``random_state`` is the run's seed, the same for every fit (the official code passes none and
  draws its k-means initialisation from numpy's global generator, seeded once), so a fit depends only on its
  batch and the seed, and a rerun is identical.

Degenerate batches, where the official code gives NaN or raises (a batch of one image, or all partition scores
equal): every image is taken as pseudo-known (w₀ = 1).

What is reported (as the port, whose ``forward_and_adapt`` returns the outputs of the last step): on the
adaptation ("target") split, each batch's cosines recomputed **after** its 10 steps (``report=before``: those of
the batch's first forward, before any update, as the original UniEnt and TENT report); on the test split, the
cosines of the final state. The port's OOD score is MCM at T = 1 (``score_type max_prob``,
``ood_logit_scale 1``): ueobench's ``mcm``, so no score of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ueobench import option, register_method
from ueobench.adapt import PromptTuningMethod, PromptTuningOptions, TrainSpec
from ueobench.models import batchnorms, encode_images

EPS = 1e-6  # the port's lib.softmax_entropy / softmax_mean_entropy
ADAM_EPS = 1e-6  # the port's Adam epsilon


def softmax_entropy(logits: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-row entropy of softmax(logits), as the port's library (the eps on the logits is a no-op)."""
    z = logits + eps
    return -(z.softmax(1) * z.log_softmax(1)).sum(1)


def mean_softmax_entropy(logits: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Entropy of the batch-mean prediction, -sum p log(p + eps)."""
    p = (logits + eps).softmax(1).mean(0)
    return -(p * torch.log(p + eps)).sum()


def partition_score(cos: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """The port's csOOD score: 1 - minmax(max_k softmax(s * cos)); high = unknown. All zeros when constant."""
    m = (cos * scale).softmax(1).max(1).values
    spread = m.max() - m.min()
    if not bool(spread > 0):
        return torch.zeros_like(m)
    return 1 - (m - m.min()) / spread


def gmm_weights(score: torch.Tensor, random_state: int) -> torch.Tensor:
    """[N, 2] float64: P(known), P(unknown) from a 2-component GaussianMixture fitted on the score.

    The component with the lower mean score is the known one. Fewer than two images or a constant score: all
    known."""
    x = score.detach().double().cpu().numpy().reshape(-1, 1)
    if len(x) < 2 or not np.isfinite(x).all() or np.ptp(x) == 0:
        w = np.zeros((len(x), 2))
        w[:, 0] = 1.0
        return torch.from_numpy(w)
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(n_components=2, random_state=random_state).fit(x)
    w = gm.predict_proba(x)
    if not gm.means_[0, 0] < gm.means_[1, 0]:
        w = 1 - w  # swaps the two columns
    return torch.from_numpy(w)


def unient_loss(cos: torch.Tensor, weights: torch.Tensor, scale: float | torch.Tensor, beta_tta: float = 1.0,
                beta_reg: float = 1.0, beta_ood: float = 0.1, use_ood_loss: bool = False) -> torch.Tensor:
    """The port's loss of one batch from the adapted cosines [N, K] and the GMM weights [N, 2]."""
    logits = scale * cos
    ent = softmax_entropy(logits)
    w = weights.to(ent.device)
    loss = beta_tta * (ent * w[:, 0]).mean(0) - beta_reg * mean_softmax_entropy(logits)
    if use_ood_loss:
        loss = loss - beta_ood * (ent * w[:, 1]).mean(0)
    return loss


@register_method("unient")
class UniEnt(PromptTuningMethod):
    display_name = "UniEnt"
    adaptation = "online"
    streams = True  # reads the adaptation data in context.stream_order() (--stream)

    @dataclass
    class Options(PromptTuningOptions):
        tune: str = option("norm", "what to tune: the visual norm affines (the reference)", choices=("norm",))
        norm_rule: str = option("type", "type: every norm module (the reference); name: the 'bn'/'ln' substring rule",
                                choices=("name", "type"))
        epochs: int = option(1, "passes over the stream (the reference: one)", min=1)
        batch_size: int = option(256, "stream batch size (the port: 128 known + 128 unknown)", min=1)
        steps: int = option(10, "Adam steps on each batch (the port's scripts)", min=1)
        lr_norm: float = option(1e-4, "Adam learning rate of the norm affines (the port's scripts)", min=0)
        beta_tta: float = option(1.0, "weight of the GMM-weighted entropy minimisation", min=0)
        beta_reg: float = option(1.0, "weight of the marginal-entropy (diversity) term", min=0)
        use_ood_loss: bool = option(False, "add the entropy maximisation on pseudo-unknowns (off in the released "
                                           "scripts)")
        beta_ood: float = option(0.1, "weight of the entropy maximisation when use_ood_loss (the port's default)",
                                 min=0)
        scale: float | None = option(None, "logit scale of the training softmax and the partition score (default: "
                                           "the backbone's; 100 is the port's hard-coded value)",
                                     min=0, min_exclusive=True)
        report: str = option("after", "online outputs: after the batch's steps (the port) or before (the original "
                                      "UniEnt, TENT)", choices=("after", "before"))
        eval_every: int = option(0, "evaluate every N epochs (0: final only)", min=0)

    dataset_defaults = {}

    @classmethod
    def work(cls, options, n_adapt, n_test, n_known):
        return float(options.epochs * n_adapt * (3 * options.steps + 1) + n_test)

    def setup(self, backbone, class_names, context):
        super().setup(backbone, class_names, context)
        self.prompt.ctx.requires_grad_(False)  # frozen class text features
        self._bn = batchnorms(backbone.model.visual)
        for bn in self._bn:  # ResNets: batch statistics, always (the reference trains in train mode)
            bn.train()
            bn.track_running_stats = False
            bn.running_mean = None
            bn.running_var = None
        self.random_state = context.seed % 2**32
        self._n, self._k = context.num_adapt, len(class_names)
        self._clear()

    def _clear(self) -> None:
        self._online = np.zeros((self._n, self._k), dtype=np.float32)
        self._step = 0
        self._stats = {"batches": 0, "gmm_fits": 0, "degenerate_batches": 0, "known_weight_sum": 0.0,
                       "weighted_images": 0}

    def reset(self) -> None:
        super().reset()
        self._clear()

    def scale(self):
        return self.options.scale if self.options.scale is not None else super().scale()

    def step_loss(self, images, idx):
        feats = encode_images(self.backbone, images)  # under the run's autocast
        with torch.autocast(feats.device.type, enabled=False):  # cosines, scores and the loss in fp32
            return self._loss(feats.float(), idx)

    def _loss(self, feats, idx):
        o = self.options
        first = self._step == 0
        self._step += 1
        cos = feats @ self.text_features().float().T
        if first and o.report == "before":
            self._online[idx.cpu().numpy()] = cos.detach().cpu().numpy()
        s = self.scale()
        u = partition_score(cos.detach(), s)
        w = gmm_weights(u, self.random_state)
        st = self._stats
        if len(u) >= 2 and bool(u.max() > u.min()):
            st["gmm_fits"] += 1
        elif first:
            st["degenerate_batches"] += 1
        st["known_weight_sum"] += float(w[:, 0].sum())
        st["weighted_images"] += len(w)
        return unient_loss(cos, w, s, o.beta_tta, o.beta_reg, o.beta_ood, o.use_ood_loss)

    @torch.no_grad()
    def _after_batch(self, images, idx):
        self._step = 0
        self._stats["batches"] += 1
        if self.options.report == "after":
            self._online[idx.cpu().numpy()] = self.cosine(images).float().cpu().numpy()

    def online_predictions(self):
        return self._online

    def eval_batching(self):
        return (self.options.batch_size, True) if self._bn else None

    def train_spec(self, context) -> TrainSpec:
        o = self.options
        return TrainSpec(groups={"norm": (self.trainable_parameters()["norm"], o.lr_norm)}, epochs=o.epochs,
                         batch_size=o.batch_size, optimizer="adam", schedule="constant", transform=None,
                         eval_every=o.eval_every, steps_per_batch=o.steps, on_batch_end=self._after_batch,
                         eps=ADAM_EPS)

    def info(self) -> dict:
        st = self._stats
        s = self.scale()
        out = {"scale": float(s), "gmm_random_state": int(self.random_state), "batches": st["batches"],
               "gmm_fits": st["gmm_fits"], "degenerate_batches": st["degenerate_batches"],
               "ood_loss": bool(self.options.use_ood_loss), "online_outputs": f"{self.options.report} the batch's steps"}
        if st["weighted_images"]:
            out["mean_known_weight"] = st["known_weight_sum"] / st["weighted_images"]
        return out
