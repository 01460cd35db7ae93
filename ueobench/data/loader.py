"""The torch side of the data: a dataset of (image tensor, label, index) and the seeded loader every run uses."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image


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
    return torch.utils.data.DataLoader(
        ImageDataset(items, opener, transform, hide_labels, indices),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=workers,
        generator=gen,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


