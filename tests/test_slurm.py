"""Sweeps on a real SLURM: a throw-away single-node controller and daemon on localhost (tests/slurm_cluster.py)
run array jobs submitted by ``ueobench sweep --launcher slurm``. Skipped, with the reason, where SLURM cannot be
installed or started (``.ci/run`` installs Debian's slurm-wlm and munge)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, make_toy_tree, toy_protocol
from slurm_cluster import cluster, missing

pytest.importorskip("submitit")
if missing():
    pytest.skip(missing(), allow_module_level=True)

EXE = [sys.executable, "-m", "ueobench.cli"]
BASE = ["--backbone", TINY, "--device", "cpu"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    with cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def cli(env, *args, cwd, check=True):
    out = subprocess.run([*EXE, *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, **env},
                         timeout=600)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def queue_empty(env, timeout=600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env={**os.environ, **env}).stdout
        if not out.strip():
            return
        time.sleep(1)
    raise AssertionError(f"the queue never emptied: {out}")


def metrics(results: Path) -> dict:
    return {d.name: json.loads((d / "record.json").read_text())["metrics"]
            for d in sorted((results / "runs").iterdir()) if not d.name.startswith(".")}


def test_a_sweep_runs_on_slurm_as_it_runs_here(slurm, tmp_path):
    grid = ["sweep", "--method", "zeroshot,ueo", "--protocol", "oda", "--domain", "clipart,real", "--epochs", "1",
            "--set", "eval_every=0", *BASE]
    out = cli(slurm, *grid, "--launcher", "slurm", "--partition", "debug", "--time", "10", cwd=tmp_path)
    assert "submitted 4 array tasks (0 GPU(s) each)" in out.stdout
    during = cli(slurm, "status", cwd=tmp_path)
    assert "4 runs" in during.stdout
    queue_empty(slurm)
    after = cli(slurm, "status", "-v", cwd=tmp_path)
    assert "4 done, 0 running, 0 failed, 0 pending" in after.stdout, after.stdout
    logs = "\n".join(p.read_text() for p in (tmp_path / "results" / "submitit").rglob("*_log.err"))
    assert logs.count("ueobench: run ") == 4 and "done" in logs
    cli(slurm, *grid, "--results", "local", cwd=tmp_path)  # the same runs here: the same ids, the same numbers
    assert metrics(tmp_path / "results") == metrics(tmp_path / "local")


def test_a_cancelled_task_leaves_no_torn_record_and_a_resumed_sweep_redoes_it(slurm, tmp_path):
    grid = ["sweep", "--method", "ueo", "--protocol", "oda", "--domain", "real", "--epochs", "150",
            "--set", "eval_every=0", *BASE]
    cli(slurm, *grid, "--launcher", "slurm", "--partition", "debug", cwd=tmp_path)
    claims = tmp_path / "results" / "claims"
    deadline = time.time() + 300
    while time.time() < deadline and not list(claims.glob("*.lock")):
        time.sleep(0.5)
    time.sleep(2)  # inside the run (150 epochs outlast this by far, even with decoding cached)
    env = {**os.environ, **slurm}
    subprocess.run(["scancel", "--user", "root"], check=True, env=env)
    queue_empty(slurm)
    runs = tmp_path / "results" / "runs"
    assert not [d for d in runs.iterdir() if not d.name.startswith(".")] if runs.exists() else True
    assert "0 done, 0 running, 0 failed, 1 pending" in cli(slurm, "status", cwd=tmp_path).stdout
    cli(slurm, *grid, cwd=tmp_path)  # resumed (here, to keep the test short): the run is redone
    assert "1 done" in cli(slurm, "status", cwd=tmp_path).stdout


def test_a_failing_task_keeps_its_failure_record_and_the_others_finish(slurm, tmp_path):
    proto = toy_protocol(tmp_path)
    for domain in ("Art", "Clipart"):
        make_toy_tree(tmp_path / "data" / "toy", domain, per_class=2)
    next((tmp_path / "data" / "toy" / "Clipart").rglob("*.png")).write_bytes(b"not an image")
    cli(slurm, "sweep", "--method", "zeroshot", "--protocol", "opda", "--domain", "Art,Clipart", "--dataset",
        str(proto), "--data-root", str(tmp_path / "data"), *BASE, "--launcher", "slurm", cwd=tmp_path)
    queue_empty(slurm)
    status = cli(slurm, "status", "-v", cwd=tmp_path)
    assert "1 done, 0 running, 1 failed" in status.stdout and "cannot read image" in status.stdout
    assert list((tmp_path / "results" / "failed").glob("zeroshot_toy_opda_Clipart*.json"))
    logs = "\n".join(p.read_text() for p in (tmp_path / "results" / "submitit").rglob("*_log.err"))
    assert "failed" in logs and "cannot read image" in logs
