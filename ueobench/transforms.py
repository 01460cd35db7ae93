"""Training augmentations, built from the backbone's own input size, interpolation and normalisation."""
from __future__ import annotations

from torchvision import transforms as T


def _interp(name: str) -> T.InterpolationMode:
    return {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}.get(
        name, T.InterpolationMode.BICUBIC
    )


def random_resized_crop(backbone, scale: tuple[float, float] = (0.5, 1.0), resize_first: bool = False) -> T.Compose:
    """RandomResizedCrop + horizontal flip + CLIP normalisation (UEO: scale 0.5-1; POUF: Resize 256 first, 0.08-1)."""
    size = backbone.image_size
    interp = _interp(backbone.info.get("interpolation", "bicubic"))
    steps = [T.Resize(round(size * 256 / 224), interpolation=interp)] if resize_first else []
    steps += [
        T.RandomResizedCrop(size, scale=scale, interpolation=interp),
        T.RandomHorizontalFlip(),
        T.Lambda(lambda im: im.convert("RGB")),
        T.ToTensor(),
        T.Normalize(backbone.mean, backbone.std),
    ]
    return T.Compose(steps)
