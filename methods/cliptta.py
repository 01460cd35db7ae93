"""CLIPTTA (Lafon et al., NeurIPS 2025): soft contrastive TTA on batch pseudo-captions, with an open-set OCE term.

Faithful to ``MarcLafon/cliptta`` at f4221f4: the class ``CLIPTTA`` of ``ttavlm/methods/cliptta_otsu.py`` (what
``--adaptation cliptta`` runs), its base ``abstract_model.py``, the memory ``memory/ccm.py`` and the open-set
scripts ``scripts/open_set/{cifar10,cifar100}/cliptta.sh``. Online and continual: one pass over a seeded shuffled
stream; the visual norm affines (every LayerNorm of a ViT) and, in its own Adam group at the same learning rate,
the scalar threshold α are tuned with Adam (lr 1e-4, no weight decay). Text features are frozen.

For every batch, α is first set to the Otsu threshold (256 bins, as ``skimage.filters.threshold_otsu``) of the
batch's OOD scores at the current parameters; its Adam moments carry over from batch to batch. Then ``steps`` (10)
times, with f the L2-normalised features of all N images, c = f·tᵀ and s the training scale:

1. L_reg = H(mean_n softmax(s·c_n)) over **all** images (unknowns included), −Σ p̄ log(p̄ + 1e-6);
2. OOD score with gradient, z_n = log max_k softmax(c_n) (T = 1);
3. OCE: w = sigmoid((z − α)/γ), γ = 0.005; μ_in = Σ w z / Σ w, μ_out = Σ (1 − w) z / Σ (1 − w);
   L_ood = −(μ_in − μ_out)² (``avg_contrastive``; ``max_inter_var`` and ``min_intra_var`` as options);
4. filter: keep the images with z > α (strict, hard);
5. soft contrastive loss on the kept features f′: pseudo-captions P = t[argmax f′·tᵀ] (one per image,
   duplicates kept), Q = softmax over columns of s·f′·Pᵀ [B′, B′], L_tta = mean_i H(Q_i). The reference averages
   this row term with "logits_per_text", which is the same matrix, not its transpose, when the text is frozen;
   so there is no column term;
6. class memory (CCM), updated at step 0 only, after filtering, with the kept images, their predicted class and
   their MCM at T = 1: per class the ``num_shots`` (16) most confident. At every step it is sampled anew
   (per class ``max(1, int(sample_size / K))`` items at random, ``sample_size`` first clipped to
   ``num_shots·K``), re-encoded with gradient, and adds its L_tta and its L_reg;
7. loss = β_tta·L_tta − β_reg·L_reg + β_ood·L_ood, then one Adam step.

Defaults: the open-set CIFAR scripts, the closest setting CLIPTTA reports to the category-shift benchmarks here
(CIFAR-10/100 against SVHN): 10 steps, lr 1e-4, β_tta = β_reg = β_ood = 1, γ = 0.005, ``num_shots`` 16,
``sample_size`` 128, ``avg_contrastive``, α learned and ``detect_ood`` on, batch 256 (the scripts' 128 known +
128 unknown; here the stream mixes known and unknown at the protocol's ratio). The ImageNet scripts use lr 1e-5
(clean) and β_reg 0.5 (ImageNet-C); ``--set`` them. The training scale s is the backbone's ``logit_scale`` by
default; the reference hard-codes 100 (``scale=100``). The scores and γ stay in T = 1 units, as the reference's.
The memory draws come from a torch generator seeded with the run's seed. Adam's eps is the reference's 1e-6.
Under autocast only the image tower runs in low precision: cosines, scores, the Otsu
threshold and the losses are fp32 (the reference runs CLIP in fp16, which quantises the scores).

Guards where the reference gives NaN: when no image passes the filter the batch adds no L_tta (and nothing to the
memory); an empty memory adds nothing; an OCE term with Σw = 0 or Σ(1 − w) = 0 is dropped for that step.

What is reported (as the reference): on the adaptation ("target") split, each batch's cosines recomputed **after**
its 10 steps (causal: a batch never sees later batches, but it is predicted after adapting on itself, unlike
TENT here); on the test split, the cosines of the final state. The reference's OOD score, log MCM at T = 1, ranks
the images as ueobench's ``mcm`` does, so there is no score of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ueobench import option, register_method
from ueobench.adapt import PromptTuningMethod, PromptTuningOptions, TrainSpec
from ueobench.models import batchnorms, encode_images

EPS = 1e-6  # the reference's lib.softmax_entropy / softmax_mean_entropy
ADAM_EPS = 1e-6  # the reference's Adam epsilon
OOD_LOSSES = ("avg_contrastive", "max_inter_var", "min_intra_var")


def softmax_entropy(logits: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-row entropy of softmax(logits), as the reference's library (the eps on the logits is a no-op)."""
    z = logits + eps
    return -(z.softmax(1) * z.log_softmax(1)).sum(1)


def mean_softmax_entropy(logits: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Entropy of the batch-mean prediction, -sum p log(p + eps)."""
    p = (logits + eps).softmax(1).mean(0)
    return -(p * torch.log(p + eps)).sum()


def otsu_threshold(x: np.ndarray, nbins: int = 256) -> float:
    """``skimage.filters.threshold_otsu`` of a 1-D array: the bin centre maximising the between-class variance."""
    x = np.asarray(x).reshape(-1)
    if np.all(x == x[0]):
        return float(x[0])
    counts, edges = np.histogram(x, bins=nbins)
    centres = (edges[:-1] + edges[1:]) / 2
    w1 = np.cumsum(counts)
    w2 = np.cumsum(counts[::-1])[::-1]
    m1 = np.cumsum(counts * centres) / w1
    m2 = (np.cumsum((counts * centres)[::-1]) / w2[::-1])[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centres[np.argmax(between)])


def ood_score(cos: torch.Tensor) -> torch.Tensor:
    """log max_k softmax(cos) at T = 1 (``max_log_prob``); higher = known."""
    return cos.softmax(1).log().max(1).values


def oce_loss(scores: torch.Tensor, alpha: torch.Tensor, gamma: float = 0.005,
             kind: str = "avg_contrastive") -> torch.Tensor | None:
    """The OCE open-set term around the threshold alpha; None where a side has zero weight (NaN otherwise)."""
    w = torch.sigmoid((scores - alpha) / gamma)
    s_in, s_out = w.sum(), (1 - w).sum()
    if not (bool(s_in > 0) and bool(s_out > 0)):
        return None
    mu_in, mu_out = torch.dot(w, scores) / s_in, torch.dot(1 - w, scores) / s_out
    p_in, p_out = w.mean(), (1 - w).mean()
    if kind == "avg_contrastive":
        return -(mu_in - mu_out).pow(2)
    if kind == "max_inter_var":
        return -p_in * p_out * (mu_in - mu_out).pow(2)
    if kind == "min_intra_var":
        return -p_out * mu_out.pow(2) - p_in * mu_in.pow(2)
    raise ValueError(f"unknown OOD loss {kind!r}")


def tta_loss(feats: torch.Tensor, text: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Soft contrastive loss against the batch's pseudo-captions: mean_i H(softmax_j(s <f_i, t_pred(j)>))."""
    pred = (feats @ text.T).topk(1, 1, True, True).indices[:, 0]
    logits_per_image = scale * feats @ text[pred].T
    logits_per_text = logits_per_image  # the reference, frozen text: the same matrix, not its transpose
    return (softmax_entropy(logits_per_image).mean(0) + softmax_entropy(logits_per_text).mean(0)) / 2


class ClassMemory:
    """CCM: per predicted class, the ``num_shots`` most confident images seen (confidence frozen at insertion)."""

    def __init__(self, num_shots: int, num_classes: int, sample_size: int):
        self.num_shots, self.num_classes = num_shots, num_classes
        self.sample_size = min(sample_size, num_shots * num_classes)
        self.reset()

    def reset(self) -> None:
        self.data: list[torch.Tensor | None] = [None] * self.num_classes
        self.conf: list[torch.Tensor] = [torch.empty(0) for _ in range(self.num_classes)]

    def __len__(self) -> int:
        return sum(len(c) for c in self.conf)

    def update(self, images: torch.Tensor, preds: torch.Tensor, conf: torch.Tensor) -> None:
        for i in range(self.num_classes):
            m = preds == i
            if m.sum().item() == 0:
                continue
            data = images[m] if self.data[i] is None else torch.cat([self.data[i], images[m]])
            c = torch.cat([self.conf[i], conf[m]])
            if len(c) > self.num_shots:
                top = c.topk(k=self.num_shots).indices
                data, c = data[top], c[top]
            self.data[i], self.conf[i] = data, c

    def sample(self, generator: torch.Generator) -> torch.Tensor | None:
        per_class = max(1, int(self.sample_size / self.num_classes))
        out = []
        for i in range(self.num_classes):
            if self.data[i] is None:
                continue
            size = len(self.conf[i])
            if size > per_class:
                pick = torch.randperm(size, generator=generator, dtype=torch.int32)[:per_class].long()
                out.append(self.data[i][pick])
            else:
                out.append(self.data[i])
        return torch.cat(out) if out else None


@register_method("cliptta")
class CLIPTTA(PromptTuningMethod):
    display_name = "CLIPTTA"
    adaptation = "online"
    streams = True  # reads the adaptation data in context.stream_order() (--stream)

    @dataclass
    class Options(PromptTuningOptions):
        tune: str = option("norm", "what to tune: the visual norm affines (the reference)", choices=("norm",))
        norm_rule: str = option("type", "type: every norm module (the reference); name: the 'bn'/'ln' substring rule",
                                choices=("name", "type"))
        epochs: int = option(1, "passes over the stream (the reference: one)", min=1)
        batch_size: int = option(256, "stream batch size (the open-set scripts: 128 known + 128 unknown)", min=1)
        steps: int = option(10, "Adam steps on each batch", min=1)
        lr_norm: float = option(1e-4, "Adam learning rate of the norm affines and of alpha (CIFAR; ImageNet 1e-5)",
                                min=0)
        beta_tta: float = option(1.0, "weight of the soft contrastive loss", min=0)
        beta_reg: float = option(1.0, "weight of the marginal-entropy regulariser (ImageNet-C: 0.5)", min=0)
        beta_ood: float = option(1.0, "weight of the OCE open-set term", min=0)
        gamma: float = option(0.005, "temperature of the OCE sigmoid (T = 1 log-probability units)", min=0,
                              min_exclusive=True)
        loss_ood_type: str = option("avg_contrastive", "form of the OCE term", choices=OOD_LOSSES)
        use_ood_loss: bool = option(True, "add the OCE open-set term (the open-set scripts)")
        detect_ood: bool = option(True, "feed only the images above the threshold to the contrastive loss and memory")
        update_alpha: bool = option(True, "learn the threshold alpha (else: the filter recomputes Otsu every step)")
        use_memory: bool = option(True, "the class-wise confident memory (CCM)")
        num_shots: int = option(16, "memory images per predicted class", min=1)
        sample_size: int = option(128, "memory sample size per step (per class: max(1, int(sample_size / K)))",
                                  min=1)
        scale: float | None = option(None, "logit scale of the training softmax (default: the backbone's; 100 is the "
                                           "reference's hard-coded value)", min=0, min_exclusive=True)
        eval_every: int = option(0, "evaluate every N epochs (0: final only)", min=0)

    dataset_defaults = {}

    @classmethod
    def work(cls, options, n_adapt, n_test, n_known):
        batches = -(-n_adapt // options.batch_size)
        per_class = max(1, int(min(options.sample_size, options.num_shots * n_known) / max(n_known, 1)))
        memory = min(per_class, options.num_shots) * n_known if options.use_memory else 0  # an upper bound
        per_epoch = n_adapt * (3 * options.steps + 1) + batches * options.steps * 3 * memory
        return float(options.epochs * per_epoch + n_test)

    def setup(self, backbone, class_names, context):
        super().setup(backbone, class_names, context)
        o = self.options
        self.prompt.ctx.requires_grad_(False)  # frozen class text features
        self._bn = batchnorms(backbone.model.visual)
        for bn in self._bn:  # ResNets: batch statistics, always (the reference trains in train mode)
            bn.train()
            bn.track_running_stats = False
            bn.running_mean = None
            bn.running_var = None
        learned = o.update_alpha and o.use_ood_loss
        self.alpha = torch.nn.Parameter(torch.tensor([0.5], device=context.device),  # the reference's initial value
                                        requires_grad=learned)
        self.memory = ClassMemory(o.num_shots, len(class_names), o.sample_size)
        self._seed = context.seed
        self._amp = context.amp_dtype
        self._n, self._k = context.num_adapt, len(class_names)
        self._clear()

    def _clear(self) -> None:
        self.memory.reset()
        self._generator = torch.Generator().manual_seed(self._seed)
        self._online = np.zeros((self._n, self._k), dtype=np.float32)
        self._step = 0
        self._stats = {"batches": 0, "steps": 0, "kept": 0, "seen": 0, "empty_filter_steps": 0,
                       "dropped_ood_steps": 0, "alpha_start": [], "alpha_end": []}

    def trainable_parameters(self):
        groups = super().trainable_parameters()
        if self.options.update_alpha and self.options.use_ood_loss:
            groups["alpha"] = [self.alpha]
        return groups

    def reset(self) -> None:
        super().reset()
        self._clear()

    def before_training(self, context) -> None:
        self._clear()

    def scale(self):
        return self.options.scale if self.options.scale is not None else super().scale()

    def _encode(self, images):
        """Image features under the run's autocast (fp32 out); everything after them runs in fp32."""
        with torch.autocast(images.device.type, dtype=self._amp, enabled=self._amp is not None):
            return encode_images(self.backbone, images).float()

    def step_loss(self, images, idx):
        feats = self._encode(images)
        with torch.autocast(images.device.type, enabled=False):  # cosines, scores, Otsu and losses in fp32
            return self._loss(images, feats)

    def _loss(self, images, feats):
        o, st = self.options, self._stats
        first = self._step == 0
        self._step += 1
        st["steps"] += 1
        text = self.text_features().float()
        cos = feats @ text.T
        s = self.scale()
        loss_tta = loss_ood = (cos * 0).sum()  # zero with a graph: every term below may be absent
        loss_reg = mean_softmax_entropy(s * cos) if o.beta_reg != 0 else (cos * 0).sum()
        keep = None
        if o.use_ood_loss or o.detect_ood:
            scores = ood_score(cos)
            if first:  # every batch starts from the Otsu threshold of its own scores at the current parameters
                with torch.no_grad():
                    self.alpha.fill_(otsu_threshold(scores.detach().cpu().numpy()))
                st["alpha_start"].append(float(self.alpha.detach()))
            if o.use_ood_loss:
                term = oce_loss(scores, self.alpha, o.gamma, o.loss_ood_type)
                if term is None:
                    st["dropped_ood_steps"] += 1
                else:
                    loss_ood = term
            if o.detect_ood:
                if o.update_alpha:
                    threshold = self.alpha.detach()
                else:
                    threshold = torch.tensor([otsu_threshold(scores.detach().cpu().numpy())], device=cos.device)
                keep = scores.detach() > threshold
        kept = feats if keep is None else feats[keep]
        st["kept"] += len(kept)
        st["seen"] += len(feats)
        if len(kept):
            loss_tta = tta_loss(kept, text, s)
        else:
            st["empty_filter_steps"] += 1
        if o.use_memory:
            if first and len(kept):  # after filtering, before sampling: this batch's images can be drawn at once
                with torch.no_grad():
                    c = kept.detach() @ text.T
                    pred = c.topk(1, 1, True, True).indices[:, 0]
                    conf = c.softmax(1).max(1).values
                kept_images = images if keep is None else images[keep]
                self.memory.update(kept_images.detach().cpu(), pred.cpu(), conf.cpu())
            mem = self.memory.sample(self._generator)
            if mem is not None:
                mem_feats = self._encode(mem.to(images.device))
                loss_tta = loss_tta + tta_loss(mem_feats, text, s)
                loss_reg = loss_reg + mean_softmax_entropy(s * (mem_feats @ text.T))
        return o.beta_tta * loss_tta - o.beta_reg * loss_reg + o.beta_ood * loss_ood

    @torch.no_grad()
    def _after_batch(self, images, idx):
        self._step = 0
        self._stats["batches"] += 1
        if self.options.use_ood_loss or self.options.detect_ood:
            self._stats["alpha_end"].append(float(self.alpha.detach()))
        self._online[idx.cpu().numpy()] = self.cosine(images).float().cpu().numpy()

    def online_predictions(self):
        return self._online

    def eval_batching(self):
        return (self.options.batch_size, True) if self._bn else None

    def train_spec(self, context) -> TrainSpec:
        o = self.options
        groups = {k: (v, o.lr_norm) for k, v in self.trainable_parameters().items()}
        return TrainSpec(groups=groups, epochs=o.epochs, batch_size=o.batch_size, optimizer="adam",
                         schedule="constant", transform=None, eval_every=o.eval_every, steps_per_batch=o.steps,
                         on_batch_end=self._after_batch, eps=ADAM_EPS)

    def info(self) -> dict:
        st = self._stats
        out = {"scale": float(self.scale()), "batches": st["batches"], "steps": st["steps"],
               "memory_images": len(self.memory), "memory_seed": int(self._seed),
               "empty_filter_steps": st["empty_filter_steps"], "dropped_ood_steps": st["dropped_ood_steps"],
               "online_outputs": "after the batch's steps"}
        if st["seen"]:
            out["kept_fraction"] = st["kept"] / st["seen"]
        if st["alpha_start"]:
            moves = [b - a for a, b in zip(st["alpha_start"], st["alpha_end"])]
            out["alpha_last"] = st["alpha_end"][-1] if st["alpha_end"] else st["alpha_start"][-1]
            if moves:
                out["alpha_mean_move_per_batch"] = float(np.mean(moves))
        return out
