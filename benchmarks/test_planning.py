"""Planning cost at DomainNet scale: 1,000 planned runs over two domains whose lists hold 50,000 lines each.

The planner reads and fingerprints each (dataset, domain) once per command; the baseline plans every job on
its own (as ueobench 0.1 did), timed on a sample of jobs and scaled to the grid."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import report

LINES = 50_000
CLASSES = [f"class_{i:03d}" for i in range(345)]


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bigdata")
    doc = {"format": 1, "name": "bignet", "folder": "bignet", "classes": CLASSES,
           "domains": [{"name": d, "folder": d, "adapt": f"{d}_train.txt", "test": f"{d}_test.txt"} for d in ("a", "b")],
           "shifts": {"cda": {"known": [[0, 299]], "target": [[0, 299]]},
                      "pda": {"known": [[0, 299]], "target": [[0, 249]]},
                      "oda": {"known": [[0, 299]], "target": [[0, 329]]},
                      "opda": {"known": [[0, 299]], "target": [[0, 249], [300, 329]]},
                      "csda": {"known": "all", "target": "all"}}}
    proto = root / "bignet.json"
    proto.write_text(json.dumps(doc))
    data = root / "data" / "bignet"
    for d in ("a", "b"):
        folder = data / d
        folder.mkdir(parents=True)
        for split in ("train", "test"):
            lines = []
            for i in range(LINES // 2):
                rel = f"{d}/{split}_{i:06d}.jpg"
                (data / rel).touch()
                lines.append(f"{rel} {i % 345}")
            (data / f"{d}_{split}.txt").write_text("\n".join(lines) + "\n")
    return proto, root / "data"


def test_planning_a_thousand_runs(benchmark, big_dataset):
    from ueobench.sweeps.jobs import job_names
    from ueobench.sweeps.spec import SweepSpec, expand
    from ueobench.runs.plan import Planner

    proto, data_root = big_dataset
    spec = SweepSpec(methods=["zeroshot", "ent", "im", "ueo", "tent"], protocols=["cda", "pda", "oda", "opda", "csda"],
                        domains=["a", "b"], datasets=[str(proto)], seeds=list(range(20)), backbones=["tiny-vit:random"],
                        data_root=str(data_root))
    jobs = expand(spec)
    assert len(jobs) == 1000
    t = time.perf_counter()
    names = job_names(jobs)
    shared = time.perf_counter() - t
    assert len(set(names)) == 1000
    sample = jobs[:10]
    t = time.perf_counter()
    for j in sample:
        Planner().plan(j)
    per_job = (time.perf_counter() - t) / len(sample) * len(jobs)
    report(benchmark, "plan 1000 runs, 2 x 50k-line lists", per_job, shared)
    # the same through the command line, as a user would run it
    args = ["--method", "zeroshot,ent,im,ueo,tent", "--protocol", "all", "--domain", "a,b", "--dataset", str(proto),
            "--seed", "0-19", "--backbone", "tiny-vit:random", "--data-root", str(data_root)]
    for cmd in (["sweep", *args, "--dry-run"], ["status", *args]):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "ueobench.cli", *cmd], capture_output=True, text=True, timeout=600,
                             cwd=Path(proto).parent)
        wall = time.perf_counter() - t
        assert out.returncode == 0, out.stderr[-2000:]
        print(f"ueobench {cmd[0]}{' --dry-run' if '--dry-run' in cmd else ''} over 1000 runs: {wall:.1f} s")
        benchmark.extra_info[f"cli_{cmd[0]}_s"] = wall
    benchmark.pedantic(lambda: None, rounds=1)
