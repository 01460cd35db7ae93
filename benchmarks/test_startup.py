"""Start-up of the command line against bare Python, measured in the same run (goal: under 0.5 s above it)."""
from __future__ import annotations

import subprocess
import sys
import time

from conftest import report


def _wall(args: list[str], cwd) -> float:
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run(args, capture_output=True, check=False, cwd=cwd)
        best = min(best, time.perf_counter() - t)
    return best


def test_cli_start_up_against_bare_python(benchmark, tmp_path):
    exe = [sys.executable, "-m", "ueobench.cli"]
    subprocess.run([*exe, "run", "--method", "zeroshot", "--protocol", "opda", "--domain", "clipart", "--dataset",
                    "shapes", "--backbone", "tiny-vit:random"], check=True, capture_output=True, cwd=tmp_path)
    bare = _wall([sys.executable, "-c", "pass"], tmp_path)
    for name, args in (("--help", ["--help"]), ("table", ["table"]), ("list methods", ["list", "methods"])):
        wall = _wall([*exe, *args], tmp_path)
        report(benchmark, f"ueobench {name} vs python -c pass", bare, wall)
        print(f"ueobench {name}: {wall:.2f} s, {wall - bare:.2f} s above bare Python ({bare:.3f} s)")
        benchmark.extra_info[f"{name}_above_python_s"] = wall - bare
    benchmark.pedantic(lambda: None, rounds=1)
