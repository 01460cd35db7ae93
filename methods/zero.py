"""ZERO, test-time augmentation with a "zero" temperature (Farina et al., NeurIPS 2024; FarinaMatteo/zero).

Episodic and training-free: no parameter changes and no backward pass. For every image, independently:

1. 64 views: view 0 is the eval transform of the image, 63 are RandomResizedCrop (area 0.08-1) + horizontal flip
   of the original image, normalised; no AugMix (``ueobench.adapt.TPTViews`` with ``augmix=False``);
2. the views' unscaled cosines l [64, K] with the class prompts, probabilities softmax(s·l) at the backbone's
   logit scale s (CLIP's own, not a hard-coded 100);
3. confidence filter: keep the int(64·0.3) = 19 views with the lowest entropy −Σ p·log p (view 0 competes like
   any other view);
4. "zero temperature" voting: p̄ = Σ over the kept views of softmax(l / τ0), a sum of near-one-hot votes;
5. prediction argmax p̄; exact ties (float equality with the maximum) are broken by the discarded views, most
   confident first: the first whose argmax is a tied class wins. If none is, the reference falls back to the
   most confident discarded view's argmax after ``logit[~ties] = -inf`` on an integer tensor, a bitwise NOT that
   masks classes K−1−t instead of the non-tied ones, so it may pick a class outside the ties. That bug is
   reproduced by default (``tie_fallback=reference``); ``tie_fallback=ties`` takes the argmax over the tied
   classes, the evident intent. The chosen class gets one more vote.

τ0 is explicit: the reference takes ``torch.finfo(dtype).eps`` of its cosines, which are fp16 under the official
autocast, so its effective τ0 is 2⁻¹⁰ ≈ 9.8e-4 (slightly soft votes for near-ties); that is the default here.
``zero_temp=1.1920929e-07`` (fp32 eps) gives practically hard votes.

Defaults are the reference's (64 views, γ = 0.3, the prompt "a photo of a {}.", the dataset template here); it
has no per-dataset hyperparameters.

What is reported: on both splits each image's vote fractions p̄ / int(views·γ) [K] (the tie-broken class can reach
1 + 1/19): argmax-preserving, in [0, 1] like cosines, which the [N, K] interface asks for. The reference
returns the counts p̄ and computes accuracy only; it defines no OOD score and neither does this port. Of the
registry's scores, ``maxlogit`` on these outputs is the winning class's share of the confident views' votes
(agreement), the confidence a vote-based method has (it takes about 20 distinct values); mcm, energy and msp are
defined on the fractions but treat them as cosines and are not ZERO's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ueobench import AdaptContext, Method, Options, UeobenchError, option, register_method
from ueobench.adapt import TPTViews
from ueobench.models import encode_images, encode_texts, prompt_texts

IMAGES_PER_FORWARD = 4  # images (each with all its views) encoded in one forward pass
FP16_EPS = 2.0 ** -10  # torch.finfo(torch.float16).eps: the reference's τ0 under its fp16 autocast


def zero_votes(cos: torch.Tensor, logit_scale: float, gamma: float, zero_temp: float,
               tie_fallback: str = "reference") -> tuple[torch.Tensor, str]:
    """ZERO on one image's view cosines [V, K] (row 0 the plain image): the vote counts p̄ [K] with the tie-break
    bump, and how the prediction was decided ("votes", "tie: discarded view" or "tie: fallback")."""
    p = (cos / (1.0 / logit_scale)).softmax(1)  # the reference divides by its temperature 1 / exp(logit_scale)
    h = -(p * p.log()).sum(1)  # no clamp, as the reference
    order = torch.argsort(h)
    kept = int(len(cos) * gamma)
    votes = (cos[order[:kept]] / zero_temp).softmax(1).sum(0)
    top = votes.max()
    ties = [int(c) for c in torch.nonzero(votes == top).flatten()]  # exact equality, as the reference
    if len(ties) < 2:
        return votes, "votes"
    rest = cos[order[kept:]]  # the discarded views, most confident first
    for c in rest.argmax(1).tolist():
        if c in ties:
            votes[c] += 1
            return votes, "tie: discarded view"
    row = rest[0].clone()
    if tie_fallback == "reference":
        row[[len(row) - 1 - t for t in ties]] = -torch.inf  # the reference's logit[~ties]: bitwise NOT indices
    else:
        mask = torch.ones_like(row, dtype=torch.bool)
        mask[ties] = False
        row[mask] = -torch.inf
    choice = int(row.argmax())
    votes[choice] += 1
    return votes, "tie: fallback"


@register_method("zero")
class Zero(Method):
    display_name = "ZERO"
    adaptation = "episodic"

    @dataclass
    class Options(Options):
        views: int = option(64, "views per image, the image itself included (reference: 64)", min=2)
        gamma: float = option(0.3, "fraction of the lowest-entropy views that vote (reference: 0.3)", min=0, max=1,
                              min_exclusive=True)
        zero_temp: float = option(FP16_EPS, "the 'zero' temperature of the votes; the reference's is the eps of its "
                                            "fp16 cosines, 2^-10; 1.1920929e-07 (fp32 eps) votes practically hard",
                                  min=0, min_exclusive=True)
        tie_fallback: str = option("reference", "ties no discarded view breaks: 'reference' reproduces its bitwise-"
                                                "NOT mask (may pick an untied class), 'ties' the argmax over the ties",
                                   choices=("reference", "ties"))
        scale_min: float = option(0.08, "smallest RandomResizedCrop area fraction", min=0, max=1, min_exclusive=True)
        prompt: str | None = option(None, "prompt template with {} (default: the dataset's)", contains="{}")

    def setup(self, backbone, class_names: list[str], context: AdaptContext) -> None:
        super().setup(backbone, class_names, context)
        o = self.options
        self.kept = int(o.views * o.gamma)
        if not 1 <= self.kept < o.views:
            raise UeobenchError(f"zero: views={o.views} with gamma={o.gamma} keeps {self.kept} views; int(views * "
                                f"gamma) must be between 1 and views - 1 (the discarded views break ties)")
        self.template = o.prompt or context.prompt
        self.text = encode_texts(backbone, prompt_texts(self.template, class_names))
        self.scale = backbone.logit_scale
        self._counts = {"votes": 0, "tie: discarded view": 0, "tie: fallback": 0}

    def reset(self) -> None:
        super().reset()
        self._counts = dict.fromkeys(self._counts, 0)

    def prediction_transform(self, eval_transform):
        o, b = self.options, self.backbone
        return TPTViews(eval_transform, b.image_size, b.mean, b.std, views=o.views, augmix=False,
                        scale=(o.scale_min, 1.0))

    def eval_batching(self):
        # Each image is its own episode, so batching does not change a prediction (with loader workers, which
        # worker draws an image's views does); a few images per forward only save per-call overhead.
        return IMAGES_PER_FORWARD, False

    def predict_views(self, feats: torch.Tensor) -> torch.Tensor:
        """Vote fractions [K] from one image's L2-normalised view features [V, D]."""
        o = self.options
        votes, how = zero_votes(feats @ self.text.to(feats.dtype).T, self.scale, o.gamma, o.zero_temp,
                                o.tie_fallback)
        self._counts[how] += 1
        return votes / self.kept

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: [B, views, 3, H, W] from ``prediction_transform`` (view 0 is the plain image)."""
        b, v = images.shape[:2]
        feats = encode_images(self.backbone, images.flatten(0, 1)).reshape(b, v, -1)
        return torch.stack([self.predict_views(f) for f in feats])

    def info(self) -> dict:
        return {"kept_views": self.kept, "zero_temp": self.options.zero_temp, "logit_scale": float(self.scale),
                "decided_by": dict(self._counts)}
