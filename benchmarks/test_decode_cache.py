"""The decode cache (``ueobench.data.decoded``) against decoding every pass: the second and later passes of an
epoch-based method over shapes65's 32-pixel PNGs, through the real loader and UEO's training augmentation."""
from __future__ import annotations

import torch

from conftest import best_time, report


def test_a_second_pass_with_decoding_cached(benchmark):
    from ueobench.adapt import random_resized_crop
    from ueobench.data.dataset import DataResolver
    from ueobench.data.decoded import DecodedImages
    from ueobench.data.loader import make_loader
    from ueobench.data.protocols import load_protocol

    torch.set_num_threads(1)
    sd = DataResolver().resolve(load_protocol("shapes65"), "sketch", "opda", None).shift
    from types import SimpleNamespace

    clip = SimpleNamespace(image_size=32, info={"interpolation": "bicubic"}, mean=(0.48145466, 0.4578275, 0.40821073),
                           std=(0.26862954, 0.26130258, 0.27577711))  # tiny-shapes65's input, UEO's augmentation
    transform = random_resized_crop(clip, (0.5, 1.0))
    cached = DecodedImages(sd.domain.opener, sd.domain.content, budget=2**30)

    def epoch(opener):
        for _ in make_loader(sd.adapt, opener, transform, 64, shuffle=True, seed=0, hide_labels=True):
            pass

    epoch(cached)  # the first pass fills the cache
    base = best_time(lambda: epoch(sd.domain.opener), repeats=2)
    ours = best_time(lambda: epoch(cached), repeats=2)
    report(benchmark, "epoch_input_pipeline_decode_cached", base, ours, target=1.1)
    benchmark.pedantic(lambda: epoch(cached), rounds=1, iterations=1)
