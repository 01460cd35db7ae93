"""The torch side of the data: a dataset of (image tensor, label, index) and the seeded loader every run uses."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image


def per_batch(transform) -> tuple[Callable, Callable | None]:
    """Split ``Compose([..., ToTensor, Normalize])`` so the last two run once per batch: the per-image part returns
    uint8 tensors, and the collate function stacks them, then divides by 255 and normalises the whole batch. The
    same float32 element-wise operations in the same order, so every pixel is bit-identical to the per-image
    transform (tests/test_decoded.py); other transforms are returned unchanged with no collate function."""
    from torchvision import transforms as T

    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, T.Compose) or not steps or len(steps) < 2:
        return transform, None
    *head, to_tensor, norm = steps
    if not (isinstance(to_tensor, T.ToTensor) and type(norm) is T.Normalize and not norm.inplace):
        return transform, None
    dtype = torch.get_default_dtype()
    mean = torch.as_tensor(norm.mean, dtype=dtype).view(-1, 1, 1)
    std = torch.as_tensor(norm.std, dtype=dtype).view(-1, 1, 1)
    head_t = T.Compose(head)

    def image(im):
        im = head_t(im)
        if isinstance(im, Image.Image) and im.mode == "RGB":
            return torch.from_numpy(np.array(im, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
        return transform.transforms[-1](to_tensor(im))  # anything else: the per-image path, already float

    def collate(batch):
        out = torch.utils.data.default_collate(batch)
        x = out[0]
        if x.dtype == torch.uint8:
            out[0] = x.to(dtype=dtype).div(255).sub_(mean).div_(std)
        return out

    return image, collate


class ImageDataset(torch.utils.data.Dataset):
    """(image tensor, benchmark label, index), or (image tensor, index) when labels are hidden (adaptation)."""

    def __init__(self, items: Sequence[tuple[str | int, int]], opener: Callable[[str | int], Image.Image], transform,
                 hide_labels: bool = False, indices: Sequence[int] | None = None):
        self.items = list(items)
        self.opener = opener
        self.transform = transform
        self.hide_labels = hide_labels
        self.indices = list(range(len(self.items))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = self.indices[j]
        ref, label = self.items[i]
        image = self.transform(self.opener(ref))
        return (image, i) if self.hide_labels else (image, label, i)


def make_loader(
    items: Sequence[tuple[str | int, int]],
    opener: Callable[[str | int], Image.Image],
    transform,
    batch_size: int,
    shuffle: bool = False,
    workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
    hide_labels: bool = False,
    indices: Sequence[int] | None = None,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    gen = torch.Generator()
    gen.manual_seed(seed)
    image, collate = per_batch(transform)
    return torch.utils.data.DataLoader(
        ImageDataset(items, opener, image, hide_labels, indices),
        batch_size=batch_size,
        collate_fn=collate,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=workers,
        generator=gen,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


