"""What the training-free methods cost beyond zero-shot at Office-Home scale, measured in the same run.

Both work on cached frozen features, so the baseline is the zero-shot classification of the same features (one
matrix product); GDA adds its EM fit, TDA its one-image-at-a-time stream. Shapes: 4,000 adaptation images,
512-dimensional features (ViT-B/16), 65 classes."""
from __future__ import annotations

import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from conftest import report

N, D, K = 4000, 512, 65


def _features():
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(K, D, generator=g), dim=-1)
    labels = torch.randint(0, K, (N,), generator=g)
    feats = F.normalize(text[labels] + 1.5 * torch.randn(N, D, generator=g) / D ** 0.5 * 8, dim=-1)
    return feats, text


def _method(name: str, text: torch.Tensor, **options):
    from ueobench.method.options import build_options
    from ueobench.method.registry import get_method

    cls = get_method(name)
    m = cls(build_options(cls, {k: str(v) for k, v in options.items()}))
    m.class_names, m.text, m.scale = [str(i) for i in range(K)], text, 100.0
    if name == "gda":
        m.w = m.b = None
        m._info = {}
    else:
        m._new_caches()
    return m


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_gda_and_tda_cost_against_zero_shot(benchmark):
    feats, text = _features()
    zero_shot = min(_time(lambda: (100 * feats @ text.T).softmax(1)) for _ in range(5))
    ctx = SimpleNamespace(image_features=lambda: feats, seed=0)
    gda = _method("gda", text)
    gda_s = _time(lambda: gda.adapt(ctx))
    tda = _method("tda", text)
    tda_s = _time(lambda: tda.adapt(ctx))
    report(benchmark, "GDA EM fit (4,000 x 512, 65 classes) vs zero-shot", zero_shot, gda_s)
    report(benchmark, "TDA stream (4,000 images) vs zero-shot", zero_shot, tda_s)
    benchmark.extra_info.update({"gda_fit_s": gda_s, "gda_iterations": gda.info()["em_iterations"], "tda_stream_s": tda_s})
    print(f"GDA: {gda_s:.2f} s ({gda.info()['em_iterations']} EM iterations); TDA: {tda_s:.2f} s; "
          f"zero-shot: {zero_shot * 1000:.1f} ms")
    benchmark.pedantic(lambda: None, rounds=1)
