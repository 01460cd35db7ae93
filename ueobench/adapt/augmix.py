"""AugMix views as TPT builds them for every non-ImageNet set (azshue/TPT; methods.md section 4).

A view is cut from the **original** image: RandomResizedCrop(size) (torchvision defaults: scale 0.08-1,
bilinear) + horizontal flip, then normalised. With AugMix, three chains of 1-3 operations drawn from nine
(autocontrast, equalize, posterize, rotate, solarize, shear x/y, translate x/y) at severity 1 are applied to
that crop; the chains are mixed with Dirichlet(1, 1, 1) weights and blended with the plain crop with a
Beta(1, 1) weight. Magnitudes follow the reference: a level drawn uniformly from [0.1, severity] scales each
operation's maximum by level / 10. Randomness comes from a generator seeded from torch's RNG, so views are
reproducible under a seeded run, in loader workers too.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

Op = Callable[[Image.Image, float, np.random.Generator], Image.Image]
CHUNK = 16  # plain crops normalised per call


def _magnitude(rng: np.random.Generator, severity: float, maximum: float) -> float:
    return float(rng.uniform(0.1, severity)) * maximum / 10.0


def _signed(rng: np.random.Generator, value: float) -> float:
    return -value if rng.uniform() > 0.5 else value


def _affine(im: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return im.transform(im.size, Image.AFFINE, coeffs, resample=Image.BILINEAR)


def autocontrast(im, severity, rng):
    return ImageOps.autocontrast(im)


def equalize(im, severity, rng):
    return ImageOps.equalize(im)


def posterize(im, severity, rng):
    return ImageOps.posterize(im, 4 - int(_magnitude(rng, severity, 4)))


def rotate(im, severity, rng):
    return im.rotate(_signed(rng, int(_magnitude(rng, severity, 30))), resample=Image.BILINEAR)


def solarize(im, severity, rng):
    return ImageOps.solarize(im, 256 - int(_magnitude(rng, severity, 256)))


def shear_x(im, severity, rng):
    return _affine(im, (1, _signed(rng, _magnitude(rng, severity, 0.3)), 0, 0, 1, 0))


def shear_y(im, severity, rng):
    return _affine(im, (1, 0, 0, _signed(rng, _magnitude(rng, severity, 0.3)), 1, 0))


def translate_x(im, severity, rng):
    return _affine(im, (1, 0, _signed(rng, int(_magnitude(rng, severity, im.size[0] / 3))), 0, 1, 0))


def translate_y(im, severity, rng):
    return _affine(im, (1, 0, 0, 0, 1, _signed(rng, int(_magnitude(rng, severity, im.size[1] / 3)))))


OPERATIONS: tuple[Op, ...] = (autocontrast, equalize, posterize, rotate, solarize, shear_x, shear_y, translate_x,
                              translate_y)


class TPTViews:
    """PIL image -> tensor [views, 3, size, size]: view 0 is the eval transform of the image, the others are
    augmented crops of the original image (AugMix-mixed when ``augmix``)."""

    def __init__(self, eval_transform: Any, size: int, mean, std, views: int = 64, augmix: bool = True,
                 scale: tuple[float, float] = (0.08, 1.0), severity: float = 1.0):
        self.eval_transform = eval_transform
        self.crop = T.Compose([T.RandomResizedCrop(size, scale=scale), T.RandomHorizontalFlip()])
        self.normalise = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
        self._mean = torch.as_tensor(mean, dtype=torch.get_default_dtype()).view(-1, 1, 1)
        self._std = torch.as_tensor(std, dtype=torch.get_default_dtype()).view(-1, 1, 1)
        self.views, self.augmix, self.severity = views, augmix, severity

    def _plan(self, image: Image.Image) -> tuple[list[Image.Image], Any]:
        """One view's PIL images (the crop, then its three chains) and its mixing weights, drawing from the random
        streams in the reference's order (crop, seed, weights, blend, each chain's operations)."""
        crop = self.crop(image)
        if not self.augmix:
            return [crop], None
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        weights = rng.dirichlet([1.0, 1.0, 1.0]).astype(np.float32)
        blend = np.float32(rng.beta(1.0, 1.0))
        chains = []
        for _ in weights:
            chain = crop.copy()
            for _ in range(int(rng.integers(1, 4))):
                chain = OPERATIONS[int(rng.integers(len(OPERATIONS)))](chain, self.severity, rng)
            chains.append(chain)
        return [crop, *chains], (weights, blend)

    def _normalised(self, images: list[Image.Image]) -> torch.Tensor:
        """ToTensor + Normalize of many RGB images at once: the same float32 element-wise operations as per
        image (``ueobench.data.loader.per_batch``), so the same bits, at a fraction of the per-call overhead."""
        if any(im.mode != "RGB" for im in images):
            return torch.stack([self.normalise(im) for im in images])
        x = torch.stack([torch.from_numpy(np.array(im, np.uint8, copy=True)).permute(2, 0, 1) for im in images])
        return x.to(dtype=self._mean.dtype).div(255).sub_(self._mean).div_(self._std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        first = self.eval_transform(image)
        plans = [self._plan(image) for _ in range(self.views - 1)]  # every draw first, in the reference's order
        out = torch.empty((self.views, *first.shape), dtype=first.dtype)
        out[0] = first
        if not self.augmix:  # the plain crops, normalised in chunks small enough to stay in cache
            for i in range(0, len(plans), CHUNK):
                out[1 + i:1 + i + CHUNK] = self._normalised([ims[0] for ims, _ in plans[i:i + CHUNK]])
            return out
        for v, (ims, (weights, blend)) in enumerate(plans, 1):
            x = self._normalised(ims)  # the crop and its three chains
            mixed = torch.zeros_like(x[0])
            for j, w in enumerate(weights):
                mixed += float(w) * x[1 + j]
            torch.add(float(blend) * x[0], (1.0 - float(blend)) * mixed, out=out[v])
        return out
