"""Each image decoded once per process: a memory cache around a domain's opener, keyed by the image's content.

Decoding draws nothing at random, so handing out copies of the first decode changes no pixel and no random
stream: a run is bit-identical with and without it (tests/test_decoded.py). Small images are decoded again
every epoch otherwise (13-18 % of a UEO or POUF step on ``shapes65``, ``../shared/reference/perf-notes.md``).
The key is the content key the data fingerprint computed (the SHA-256 of the file's bytes), never the path.
The budget is ``UEOBENCH_DECODE_CACHE_MB`` (default 1024; 0 turns it off) per process; a loader worker process
holds its own copy, so the session divides the budget by the worker count.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
from PIL import Image

ENV = "UEOBENCH_DECODE_CACHE_MB"
DEFAULT_MB = 1024


def budget_bytes(workers: int = 0) -> int:
    try:
        mb = float(os.environ.get(ENV, DEFAULT_MB))
    except ValueError:
        mb = DEFAULT_MB
    return max(0, int(mb * 2**20 / max(1, workers)))


class DecodedImages:
    """``opener``, with each decoded RGB image kept (as uint8 pixels) until ``budget`` bytes are held; later
    calls for the same content get a fresh PIL copy. Images of other modes are passed through uncached."""

    def __init__(self, opener: Callable[[str | int], Image.Image], content: dict, budget: int):
        self.opener, self.content, self.budget = opener, content, budget
        self._pixels: dict[str, np.ndarray] = {}
        self.held = 0
        self.hits = self.misses = 0

    def __call__(self, ref: str | int) -> Image.Image:
        key = self.content.get(ref)
        if key is not None and key != "missing":
            px = self._pixels.get(key)
            if px is not None:
                self.hits += 1
                return Image.fromarray(px.copy(), "RGB")
        im = self.opener(ref)
        self.misses += 1
        if key is not None and key != "missing" and im.mode == "RGB" and self.held < self.budget:
            px = np.asarray(im, dtype=np.uint8).copy()
            if self.held + px.nbytes <= self.budget:
                self._pixels[key] = px
                self.held += px.nbytes
        return im

    def stats(self) -> dict[str, int]:
        return {"decoded": self.misses, "reused": self.hits, "bytes_held": self.held, "budget": self.budget}


def cached_opener(opener: Callable, content: dict, workers: int = 0) -> Callable:
    """The opener wrapped in a decode cache, or the opener itself when the budget is 0."""
    budget = budget_bytes(workers)
    return DecodedImages(opener, content, budget) if budget > 0 else opener
