"""Training augmentations, built from the backbone's own input size, interpolation and normalisation."""
from __future__ import annotations

from torchvision import transforms as T


def _interp(name: str) -> T.InterpolationMode:
    return {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}.get(
        name, T.InterpolationMode.BICUBIC
    )


def _to_tensor(backbone) -> list:
    return [T.Lambda(lambda im: im.convert("RGB")), T.ToTensor(), T.Normalize(backbone.mean, backbone.std)]


def random_resized_crop(backbone, scale: tuple[float, float] = (0.5, 1.0)) -> T.Compose:
    """RandomResizedCrop (the backbone's interpolation, bicubic for CLIP) + horizontal flip + CLIP normalisation
    (UEO: scale 0.5-1; UPL: 0.08-1)."""
    size = backbone.image_size
    interp = _interp(backbone.info.get("interpolation", "bicubic"))
    return T.Compose([T.RandomResizedCrop(size, scale=scale, interpolation=interp), T.RandomHorizontalFlip(),
                      *_to_tensor(backbone)])


def square_resize_then_crop(backbone, scale: tuple[float, float] = (0.08, 1.0)) -> T.Compose:
    """POUF's training view, as tllib builds it: ``ResizeImage(256)`` resizes to a 256 x 256 **square** (aspect
    not kept, PIL bicubic), then RandomResizedCrop(224) with torchvision's default **bilinear** interpolation, then
    a flip. Sizes scale with the backbone's input (256/224 of it)."""
    size = backbone.image_size
    square = round(size * 256 / 224)
    return T.Compose([
        T.Resize((square, square), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BILINEAR),
        T.RandomHorizontalFlip(),
        *_to_tensor(backbone),
    ])
