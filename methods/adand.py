"""AdaND (ZS-NTTA; Cao et al., ICLR 2025; Aboriginer/ZS-NTTA): zero-shot CLIP plus an online linear noise detector.

Classification is zero-shot CLIP, unchanged: the cosines f·tᵀ with "a photo of a {}." (the dataset's prompt).
What AdaND adds is a separate noise detector, one ``nn.Linear(D, 2)`` (column 0 = noise, 1 = clean) on the
frozen, **unnormalised** image embedding ``model.encode_image(x)``, trained online, as the official
``ZeroShotNTTA`` (ttda_method/zs_noisytta.py, zs_clip.py; main.py's test loop) does:

1. the stream is the adaptation set plus ``int(0.125·N)`` injected pseudo-noise images (torch ``randn``
   3×H×W at the backbone's input size, min-max scaled to [0, 255], truncated to uint8, then /255 and the
   backbone's mean/std normalisation), shuffled together by a seeded permutation and read in batches of 128,
   the last one smaller;
2. per batch, the zero-shot noise score zs = 1 − max softmax(s·f·tᵀ) (MSP at CLIP's logit scale s) joins a
   queue of the last 512 values, and an Otsu-style search over τ ∈ {0, 0.01, …, 0.99} (classes q ≥ τ and
   q < τ, population variances, first minimum, 0.0 if no τ splits the queue) gives the pseudo-labels
   noise = zs > τ; injected images are always "noise";
3. the detector's output on the batch is computed, then one Adam step (lr 5e-4, betas (0.9, 0.999), no
   weight decay) on the mean cross-entropy over every sample of the batch, injected ones included; warm-up
   batches train too;
4. after the warm-up (batches 0..10: ``step·bs > 10·bs``) each sample's OOD score is the detector's clean
   probability p_clean = softmax(W x + b)[1] from the output computed *before* that batch's step, and its own
   decision is p_noise > Otsu(τ over the last 512 p_noise); during the warm-up the score is MSP and the
   decision the zero-shot one. At batch size 1 the official code instead steps every 64 samples on the 64
   stored (stale) outputs and warms up for 640 samples; that path is reproduced too.

Defaults are the official ones, the same for every dataset there (configs/default_configs.py,
zs_noisytta_configs.py; the ViT-B/16 runs of the paper). Its settings were ablated on its benchmark streams;
nothing here is tuned per dataset.

What is reported: predictions are zero-shot cosines on both splits (the classifier is never changed). The
method's own OOD score is ``own_score`` (pick it with ``--score own``; higher = known): on the adaptation
("target") split the online per-image values, mixed as the official AUROC mixes them (MSP for the warm-up
samples, p_clean after); on the test split the final detector's p_clean (MSP if the stream never left the
warm-up). The test split reaches ``extra_outputs`` only as L2-normalised features, so there the detector reads
f·r̄, r̄ = the mean raw-embedding norm of the adaptation images (``info`` records how closely this tracks the
exact raw input on the adaptation set). AdaND's own accept/reject decision (the Otsu threshold on p_noise) is
not what ueobench's H-score uses: the H-score's rule reads the cosines (normalised entropy, kmeans2), which
are zero-shot, so AdaND's H-score equals zero-shot's; ``info`` records the rate of its own online rejections.

Cost: the faithful detector input needs one extra pass of the adaptation images through the image tower (the
cached features are normalised, and the norm cannot be recovered from them) plus the injected images;
``detector_input=normalised`` trains the detector on the cached unit features instead (no image pass for the
real images; a different detector, not the official one).

Randomness: the stream order is ``randperm(N + M)`` from a generator seeded with the run's seed, the injected
images come from a generator seeded with seed + 1, and the detector's initial weights (nn.Linear's default
U(±1/√D)) from one seeded with seed + 2; the official draws come from the global RNG after two CLIP builds.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ueobench import AdaptContext, Method, Options, UeobenchError, option, register_method
from ueobench.models import encode_images, encode_texts, prompt_texts

#: the official Otsu grid, np.arange(0, 1, 0.01)
GRID = np.arange(0, 1, 0.01)
NOISE_TYPES = ("gaussian", "uniform", "salt_and_pepper", "poisson")


def otsu_criterion(queue: np.ndarray, tau: float) -> float:
    """Within-class variance of the split {q ≥ τ} / {q < τ} (population variances); inf when a class is empty."""
    upper = queue >= tau
    w_upper = np.count_nonzero(upper) / queue.size
    w_lower = 1 - w_upper
    if w_upper == 0 or w_lower == 0:
        return math.inf
    return w_lower * np.var(queue[~upper]) + w_upper * np.var(queue[upper])


def otsu_threshold(queue) -> float:
    """The grid value with the smallest criterion, the first on ties; 0.0 when no grid value splits the queue."""
    q = np.asarray(queue, dtype=np.float64)
    best, best_tau = math.inf, float(GRID[0])
    for tau in GRID:
        c = otsu_criterion(q, tau)
        if c < best:
            best, best_tau = c, float(tau)
    return best_tau


def pseudo_noise_images(count: int, size: int, mean, std, generator: torch.Generator,
                        noise_type: str = "gaussian") -> torch.Tensor:
    """``count`` injected images [count, 3, size, size], normalised like the backbone's inputs: raw noise,
    min-max to [0, 255] over the whole image, truncated to uint8 (``.byte()``), /255 (ToTensor), then mean/std."""
    shape = (3, size, size)
    out = torch.empty(count, *shape)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    for j in range(count):
        if noise_type == "gaussian":
            img = torch.randn(shape, generator=generator)
        elif noise_type == "uniform":
            img = torch.rand(shape, generator=generator)
        elif noise_type == "salt_and_pepper":  # the official p = 0.05: half salt (255), half pepper (0)
            r = torch.rand(shape, generator=generator)
            img = (r < 0.025).float() * 255
        elif noise_type == "poisson":
            img = torch.poisson(torch.ones(shape), generator=generator)
        else:
            raise UeobenchError(f"unknown noise type '{noise_type}'; use one of {', '.join(NOISE_TYPES)}")
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo) * 255 if hi > lo else torch.zeros(shape)  # a flat image: the official divides by 0
        out[j] = (img.byte().float() / 255 - m) / s
    return out


class DetectorStream:
    """The per-batch AdaND update on one detector: zero-shot pseudo-labels, one Adam step, the decision and score."""

    def __init__(self, detector: torch.nn.Linear, text: torch.Tensor, scale: float, o):
        self.detector, self.text, self.scale, self.o = detector, text, scale, o
        self.opt = torch.optim.Adam(detector.parameters(), lr=o.lr, betas=(o.beta1, 0.999),
                                    weight_decay=o.weight_decay)
        self.zs_queue: list[float] = []
        self.det_queue: list[float] = []
        self.losses: list[float] = []
        self.stored: deque = deque(maxlen=o.bs1_queue_length)  # batch size 1 only: (output, pseudo-label) pairs
        self.batches = 0

    def threshold(self, queue: list[float]) -> float:
        return otsu_threshold(queue) if self.o.threshold == "adaptive" else self.o.fixed_threshold

    def warm(self, step: int) -> bool:
        """True while ``step`` (the batch index, from 0) is in the warm-up, judged with the configured batch size."""
        o = self.o
        period = o.bs1_queue_length if o.batch_size == 1 else o.batch_size
        return not step * o.batch_size > o.warmup_steps * period

    def _adam_step(self, out: torch.Tensor, noise: torch.Tensor) -> None:
        loss = F.cross_entropy(out, (~noise).long())  # 1 = clean, 0 = noise; the mean over every sample
        self.opt.zero_grad()
        loss.backward()
        self.losses.append(loss.item())
        self.opt.step()

    def step(self, step: int, feats: torch.Tensor, x: torch.Tensor, injected: torch.Tensor):
        """One batch: L2-normalised ``feats`` [B, D] for the zero-shot score, detector input ``x`` [B, D],
        ``injected`` [B] bool. Returns (the method's noise decision [B], its OOD score [B], higher = clean)."""
        o = self.o
        probs = (self.scale * feats @ self.text.T).softmax(1)
        msp = probs.max(1).values
        zs = 1 - msp
        self.zs_queue = (self.zs_queue + zs.tolist())[-o.queue_length:]  # this batch is in the queue
        pseudo_noise = (zs > self.threshold(self.zs_queue)) | injected
        with torch.enable_grad():
            out = self.detector(x)
            if o.batch_size == 1:
                self.stored.append((out, pseudo_noise))
                if step != 0 and step % o.bs1_queue_length == 0:  # stale outputs: computed when each arrived
                    self._adam_step(torch.cat([e[0] for e in self.stored]), torch.cat([e[1] for e in self.stored]))
            else:
                self._adam_step(out, pseudo_noise)
        self.batches = step + 1
        p = out.detach().softmax(1)  # before this batch's step: predict, then adapt
        if not self.warm(step):
            self.det_queue = (self.det_queue + p[:, 0].tolist())[-o.queue_length:]
            return p[:, 0] > self.threshold(self.det_queue), p[:, 1]
        return pseudo_noise, (p[:, 1] if o.warmup_score == "detector" else msp)


@register_method("adand")
class AdaND(Method):
    display_name = "AdaND"
    adaptation = "online"
    extras = ("own_score",)

    @dataclass
    class Options(Options):
        batch_size: int = option(128, "stream batch size (official inference.batch_size; 1 uses the official "
                                      "per-sample path)", min=1)
        lr: float = option(5e-4, "Adam learning rate of the detector (official optim.lr)", min=0)
        beta1: float = option(0.9, "Adam beta1 (beta2 is 0.999)", min=0, max=1)
        weight_decay: float = option(0.0, "Adam weight decay", min=0)
        queue_length: int = option(512, "length of both Otsu score queues", min=1)
        warmup_steps: int = option(10, "warm-up: batches with step·bs ≤ this·bs use the zero-shot decision and "
                                        "MSP (official using_ttda_step)", min=0)
        bs1_queue_length: int = option(64, "batch size 1 only: step every this many samples on the stored "
                                           "outputs (official ttda_queue_length)", min=1)
        noise_rate: float = option(0.125, "injected pseudo-noise images per adaptation image (official "
                                          "gaussian_rate)", min=0)
        noise_type: str = option("gaussian", "injected noise (official inject_noise_type)", choices=NOISE_TYPES)
        threshold: str = option("adaptive", "adaptive: Otsu over the queue; fixed: fixed_threshold",
                                choices=("adaptive", "fixed"))
        fixed_threshold: float = option(0.5, "threshold when threshold=fixed", min=0, max=1)
        detector_input: str = option("raw", "raw: the unnormalised encode_image output (official; one extra pass "
                                            "over the adaptation images); normalised: the cached unit features",
                                     choices=("raw", "normalised"))
        warmup_score: str = option("msp", "OOD score of warm-up samples: msp (official) or the detector's",
                                   choices=("msp", "detector"))
        prompt: str | None = option(None, "prompt template with {} (default: the dataset's)", contains="{}")
        scale: float | None = option(None, "logit scale of the zero-shot score (default: the backbone's, as the "
                                           "official code uses the model's own)", min=0, min_exclusive=True)

    def setup(self, backbone, class_names: list[str], context: AdaptContext) -> None:
        super().setup(backbone, class_names, context)
        self.template = self.options.prompt or context.prompt
        self.text = encode_texts(backbone, prompt_texts(self.template, class_names))
        self.scale = self.options.scale or backbone.logit_scale
        self.build_detector(self.text.shape[1], context.seed, context.device)

    def build_detector(self, dim: int, seed: int, device, dtype=torch.float32) -> None:
        """nn.Linear(dim, 2)'s default initialisation (kaiming_uniform(a=√5) weights and U(±1/√dim) bias, i.e. both
        U(±1/√dim)) drawn from a generator seeded with seed + 2."""
        g = torch.Generator().manual_seed(seed + 2)
        det = torch.nn.Linear(dim, 2)
        bound_w = math.sqrt(3.0) * math.sqrt(2.0 / (1 + math.sqrt(5) ** 2)) / math.sqrt(dim)
        bound_b = 1 / math.sqrt(dim)
        with torch.no_grad():
            det.weight.uniform_(-bound_w, bound_w, generator=g)
            det.bias.uniform_(-bound_b, bound_b, generator=g)
        self.detector = det.to(device=device, dtype=dtype)
        self._clear()

    def _clear(self) -> None:
        self.stream: DetectorStream | None = None
        self.raw_norm: float | None = None
        self._online_pred: np.ndarray | None = None
        self._online_score: np.ndarray | None = None
        self._stats: dict = {}

    def trainable_parameters(self):
        return {"detector": list(self.detector.parameters())}

    def reset(self) -> None:
        super().reset()  # the detector's initial weights; the optimiser and queues start again with the stream
        self._clear()

    # ----------------------------------------------------------------------------------------- features

    def _encode_raw(self, images: torch.Tensor, context) -> torch.Tensor:
        dtype = getattr(context, "amp_dtype", None)
        device = self.backbone.device
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return self.backbone.model.encode_image(images.to(device)).float()

    def raw_features(self, context) -> torch.Tensor:
        """Unnormalised eval-transform embeddings of the adaptation set [N, D], in adaptation index order."""
        o = self.options
        loader = context.make_loader(transform=context.eval_transform, shuffle=False, batch_size=o.batch_size)
        out = torch.zeros(context.num_adapt, self.text.shape[1], device=self.text.device)
        seen = 0
        for images, idx in loader:
            out[torch.as_tensor(idx).to(out.device)] = self._encode_raw(images, context).to(out.dtype)
            seen += len(idx)
        if seen != context.num_adapt:
            raise UeobenchError(f"adand: the adaptation loader gave {seen} images, expected {context.num_adapt}")
        return out

    def noise_features(self, count: int, context) -> torch.Tensor:
        """Unnormalised embeddings of the ``count`` injected images [count, D], generated in chunks of the batch size."""
        bb, o = self.backbone, self.options
        g = torch.Generator().manual_seed(context.seed + 1)
        parts = [torch.zeros(0, self.text.shape[1], device=self.text.device)]
        for start in range(0, count, o.batch_size):
            n = min(o.batch_size, count - start)
            images = pseudo_noise_images(n, bb.image_size, bb.mean, bb.std, g, o.noise_type)
            parts.append(self._encode_raw(images, context).to(self.text.dtype))
        return torch.cat(parts)

    # -------------------------------------------------------------------------------------------- adapt

    def adapt(self, context: AdaptContext) -> list[dict]:
        o = self.options
        t0 = time.perf_counter()
        feats = context.image_features().to(self.text.dtype)
        n = feats.shape[0]
        raw = self.raw_features(context) if o.detector_input == "raw" else None
        t1 = time.perf_counter()
        m = int(n * o.noise_rate)
        noise_raw = self.noise_features(m, context)
        noise_feats = F.normalize(noise_raw, dim=-1)
        t2 = time.perf_counter()
        all_feats = torch.cat([feats, noise_feats])
        all_x = torch.cat([raw if raw is not None else feats, noise_raw if raw is not None else noise_feats])
        all_x = all_x.to(self.detector.weight.dtype)
        injected = torch.arange(n + m, device=feats.device) >= n
        order = torch.randperm(n + m, generator=torch.Generator().manual_seed(context.seed)).to(feats.device)

        self.stream = st = DetectorStream(self.detector, self.text, self.scale, o)
        score = np.zeros(n, dtype=np.float32)
        reject = np.zeros(n, dtype=bool)
        for step, start in enumerate(range(0, n + m, o.batch_size)):
            idx = order[start: start + o.batch_size]
            noise_mask, s = st.step(step, all_feats[idx], all_x[idx], injected[idx])
            real = ~injected[idx]
            rows = idx[real].cpu().numpy()
            score[rows] = s[real].detach().float().cpu().numpy()
            reject[rows] = noise_mask[real].cpu().numpy()
        t3 = time.perf_counter()

        self._online_score = score
        self._online_pred = self.predict_features(feats).float().cpu().numpy()  # zero-shot, unchanged
        stats = {"n_adapt": n, "n_injected": m, "batches": st.batches, "adam_steps": len(st.losses),
                 "warmup_batches": sum(st.warm(i) for i in range(st.batches)),
                 "detector_scores_test": self._detector_scores_test(),
                 "loss_first": st.losses[0] if st.losses else None, "loss_last": st.losses[-1] if st.losses else None,
                 "zero_shot_threshold_last": otsu_threshold(st.zs_queue) if st.zs_queue else None,
                 "detector_threshold_last": otsu_threshold(st.det_queue) if st.det_queue else None,
                 "own_reject_rate_online": float(reject.mean()) if n else None,
                 "stream_order_seed": context.seed, "noise_seed": context.seed + 1,
                 "detector_init_seed": context.seed + 2,
                 "seconds_raw_pass": round(t1 - t0, 3), "seconds_injected": round(t2 - t1, 3),
                 "seconds_stream": round(t3 - t2, 3)}
        if raw is not None and n:
            norms = raw.norm(dim=-1).double()
            self.raw_norm = float(norms.mean())
            exact = self._p_clean(raw)
            proxy = self._p_clean(feats * self.raw_norm)
            stats.update(raw_norm_mean=self.raw_norm, raw_norm_cv=float(norms.std() / norms.mean()) if n > 1 else 0.0,
                         injected_norm_mean=float(noise_raw.norm(dim=-1).double().mean()) if m else None,
                         test_proxy_max_abs_diff=float((exact - proxy).abs().max()),
                         test_proxy_rank_corr=_rank_corr(exact.cpu().numpy(), proxy.cpu().numpy()))
        self._stats = stats
        return []

    def _detector_scores_test(self) -> bool:
        """Whether the batch after the stream would be scored by the detector (else MSP, as in the warm-up)."""
        st = self.stream
        return st is not None and (self.options.warmup_score == "detector" or not st.warm(st.batches))

    @torch.no_grad()
    def _p_clean(self, x: torch.Tensor) -> torch.Tensor:
        return self.detector(x.to(self.detector.weight.dtype)).softmax(1)[:, 1]

    # ------------------------------------------------------------------------------------------ outputs

    def online_predictions(self):
        return self._online_pred

    def online_extra_outputs(self):
        return None if self._online_score is None else {"own_score": self._online_score}

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.text.dtype) @ self.text.T

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_features(encode_images(self.backbone, images))

    @torch.no_grad()
    def extra_outputs(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """The final state's own score from L2-normalised features: p_clean of the final detector on f·r̄ (raw
        input) or f (normalised input); MSP at s when the stream never left the warm-up."""
        f = features.to(self.text.dtype)
        if not self._detector_scores_test():
            return {"own_score": (self.scale * f @ self.text.T).softmax(1).max(1).values}
        x = f * self.raw_norm if self.options.detector_input == "raw" else f
        return {"own_score": self._p_clean(x)}

    def info(self) -> dict:
        return dict(self._stats)


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (ties broken by position; enough for a fidelity note)."""
    if len(a) < 2:
        return None
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    c = np.corrcoef(ra, rb)[0, 1]
    return None if not np.isfinite(c) else float(c)
