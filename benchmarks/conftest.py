"""Benchmarks are opt-in: ``pytest benchmarks --benchmark-enable``. Each reports a ratio against a baseline
measured in the same run (``extra_info``), never an absolute time target."""
from __future__ import annotations

import os
import time
from typing import Callable

import pytest


@pytest.fixture(scope="session", autouse=True)
def _env(tmp_path_factory):
    os.environ.setdefault("UEOBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    os.environ["UEOBENCH_NO_PROGRESS"] = "1"


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def report(benchmark, name: str, baseline_s: float, candidate_s: float, target: float | None = None) -> float:
    ratio = baseline_s / candidate_s
    benchmark.extra_info.update({f"{name}_baseline_s": baseline_s, f"{name}_candidate_s": candidate_s,
                                 f"{name}_speedup": ratio})
    print(f"\n{name}: baseline {baseline_s * 1000:.1f} ms, ueobench {candidate_s * 1000:.1f} ms, speedup {ratio:.2f}x")
    if target is not None:
        assert ratio >= target, f"{name}: {ratio:.2f}x < target {target}x"
    return ratio
