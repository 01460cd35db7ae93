"""Day two with ueobench (issue 32): sweeps that stop with their workers, cluster logs that say what happened,
tables a paper can take, the code of every run kept, run options on sweeps, progress that counts work."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, make_toy_tree, toy_protocol

EXE = [sys.executable, "-m", "ueobench.cli"]
GRID = ["sweep", "--method", "ueo", "--protocol", "oda,opda,cda", "--domain", "real", "--backbone", TINY,
        "--epochs", "30", "--set", "eval_every=0"]


def _workers_of(plan_marker: str) -> list[int]:
    out = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "ueobench.sweeps.worker" in line
            and plan_marker in line]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_sweep_stops_its_workers_and_says_how_to_resume(tmp_path, sig):
    results = tmp_path / "res"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([*EXE, *GRID, "--workers", "2", "--results", str(results)], env=env, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not list((results / "claims").glob("*.lock")):
        time.sleep(0.5)
    assert p.poll() is None and _workers_of(str(results)), p.communicate()
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, (out, err)
    assert "rerun the same ueobench sweep command to resume" in err and "Traceback" not in err, err
    deadline = time.time() + 30
    while time.time() < deadline and _workers_of(str(results)):
        time.sleep(0.5)
    assert not _workers_of(str(results)), "workers outlived their sweep"


def test_slurm_gpus_follow_the_device():
    from ueobench.sweeps.launchers import slurm_gpus
    from ueobench.sweeps.spec import SlurmOptions, SweepRequest, SweepSpec

    def req(device, gpus=None):
        spec = SweepSpec(methods=["zeroshot"], protocols=["oda"], domains=["real"], datasets=["shapes"], seeds=[0],
                         backbones=[None], device=device)
        return SweepRequest(spec, "slurm", slurm=SlurmOptions(gpus=gpus))

    assert slurm_gpus(req("cpu")) == 0 and slurm_gpus(req("cuda")) == 1 and slurm_gpus(req("cpu", 2)) == 2
    import torch

    assert slurm_gpus(req("auto")) == (1 if torch.cuda.is_available() else 0)


def test_array_task_logs_hold_the_run_and_a_failed_run_fails_its_task(cli, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    proto = toy_protocol(tmp_path)
    make_toy_tree(tmp_path / "data" / "toy", "Art", per_class=2)
    make_toy_tree(tmp_path / "data" / "toy", "Clipart", per_class=2)
    next((tmp_path / "data" / "toy" / "Clipart").rglob("*.png")).write_bytes(b"not an image")  # its run fails
    r = cli("sweep", "--method", "zeroshot", "--protocol", "opda", "--domain", "Art,Clipart", "--dataset", str(proto),
            "--backbone", TINY, "--data-root", str(tmp_path / "data"), "--launcher", "submitit-local")
    assert r.exit_code == 1, r.output
    logs = "\n".join(p.read_text() for p in Path("results/submitit").rglob("*.err"))
    assert "ueobench: run zeroshot_toy_opda_Art" in logs and "done" in logs
    failed = cli("status", "-v")
    assert "failed" in failed.output and "cannot read image" in failed.output  # the one-line reason


def test_tables_a_paper_can_take(cli):
    from test_leaderboard import fake_run

    for seed in (0, 1):
        fake_run(Path("results"), "ueo", "opda", "clipart", seed, 2.0)
    fake_run(Path("results"), "zeroshot", "opda", "clipart", 0, 1.0)
    cols = cli("table", "--metric", "acc,auroc", "--cols", "metric").output
    assert "| method | acc | auroc |" in cols
    md = cli("table").output
    assert "<u>" not in md and "second in italics" in md
    assert "mean ± std over seeds where a cell has several" in md
    single = cli("table", "--method", "zeroshot").output
    assert "one seed per cell" in single and "±" not in single
    tex = cli("table", "--format", "latex").output
    assert "\\begin{table}" in tex and "\\caption{" in tex and "\\label{tab:ueobench-" in tex and "\\toprule" in tex


def test_real_runs_show_the_methods_display_name(cli):
    assert cli("run", "--method", "ueo", "--protocol", "oda", "--domain", "real", "--backbone", TINY, "--epochs", "1",
               "--set", "eval_every=0").exit_code == 0
    out = cli("table").output
    assert "| UEO (epochs=1, eval_every=0) |" in out
    assert cli("table", "--method", "ueo").exit_code == 0  # the registered name still selects it


def test_the_caption_counts_only_the_runs_of_its_own_table(cli):
    from test_leaderboard import fake_run

    fake_run(Path("results"), "ueo", "opda", "clipart", 0, 1.0)
    fake_run(Path("results"), "ueo", "cda", "clipart", 0, 1.0)
    runs = sorted(Path("results/runs").iterdir())
    doc = json.loads((runs[0] / "record.json").read_text())
    doc["method"]["code"] = {"fingerprint": "sha256:old", "ueobench": "0.0.1", "files": {}}  # other code
    (runs[0] / "record.json").write_text(json.dumps(doc))
    shift = doc["config"]["shift"]
    other = "opda" if shift == "cda" else "cda"
    assert "made by other code" not in cli("table", "--protocol", other).output
    assert "made by other code" not in cli("table").output  # the only table left holds none of them


def test_a_plugins_source_is_kept_with_its_runs(cli, tmp_path):
    plugins = tmp_path / "p"
    plugins.mkdir()
    src = ('"""Sharp UEO."""\nfrom ueobench import register_method\nfrom ueobench.adapt import PromptTuningMethod, '
           'entropy\n\n@register_method("ueo_sharp")\nclass Sharp(PromptTuningMethod):\n'
           '    def objective(self, p, i):\n        return entropy(p).mean()  # VERSION ONE\n')
    (plugins / "sharp.py").write_text(src)
    r = cli("--plugins", str(plugins), "run", "--method", "ueo_sharp", "--protocol", "oda", "--domain", "real",
            "--backbone", TINY, "--epochs", "1")
    assert r.exit_code == 0, r.output
    (plugins / "sharp.py").write_text(src.replace("VERSION ONE", "VERSION TWO"))
    [run] = [d.name for d in Path("results/runs").iterdir()]
    r = cli("show", "run", run[:12], "--code")
    assert r.exit_code == 0 and "VERSION ONE" in r.output and "VERSION TWO" not in r.output
    loss = cli("show", "run", run[:12], "--code", "--module", "ueobench.adapt.losses")
    assert loss.exit_code == 0 and "def entropy" in loss.output
    assert "code sha256:" in cli("show", "run", run[:12]).output


def test_sweep_takes_the_options_run_takes(cli):
    r = cli("sweep", "--method", "ueo", "--protocol", "oda", "--domain", "real", "--backbone", TINY, "--epochs", "1",
            "--set", "eval_every=0", "--batch-size", "16", "--eval-batch-size", "64", "--precision", "fp32",
            "--rule", "kmeans2", "--no-cache", "--loader-workers", "0")
    assert r.exit_code == 0, r.output
    [d] = list(Path("results/runs").iterdir())
    rec = json.loads((d / "record.json").read_text())
    assert rec["config"]["precision"] == "fp32" and rec["config"]["rule"] == "kmeans2"
    assert rec["config"]["eval_batch_size"] == 64 and rec["config"]["options"]["batch_size"] == 16
    assert rec["feature_cache"]["enabled"] is False and rec["request"]["loader_workers"] == 0


def test_sweep_progress_counts_work_not_runs():
    from ueobench.sweeps.launchers import run_local
    from ueobench.sweeps.spec import SweepSpec, expand
    from ueobench.sweeps.jobs import plan_jobs

    jobs = expand(SweepSpec(methods=["zeroshot", "ueo"], protocols=["oda"], domains=["real"], datasets=["shapes"],
                            seeds=[0], backbones=[TINY], options={"epochs": "1", "eval_every": "0"}))
    plans = plan_jobs(jobs)
    work = {p.run_id: p.method_cls.work(p.options, len(p.shift_data.adapt), len(p.shift_data.test),
                                        p.shift_data.split.num_known) for p in plans}
    zs, ueo = (work[p.run_id] for p in plans)
    assert ueo > 2 * zs  # a training run weighs more than a zero-shot one

    class Recorder:
        def __init__(self):
            self.done = []

        def add_task(self, description, total=None, **k):
            self.total = total
            return 0

        def advance(self, tid, amount=1, **k):
            self.done.append(amount)

    rec = Recorder()
    run_local(jobs, [p.run_id for p in plans], False, False, rec, None, work)
    assert rec.total == pytest.approx(zs + ueo) and rec.done == [zs, ueo]


def test_a_dry_run_says_what_it_does_and_shows_each_runs_options(cli):
    r = cli("sweep", "--method", "ueo", "--protocol", "oda", "--domain", "real", "--backbone", TINY,
            "--set", "lr_prompt=0.01,0.001", "--dry-run")
    lines = r.output.strip().splitlines()
    assert lines[0].startswith("planning 2 runs")
    assert any("lr_prompt=0.01" in ln for ln in lines) and any("lr_prompt=0.001" in ln for ln in lines)


def test_data_check_reports_every_domain(cli, tmp_path):
    proto = toy_protocol(tmp_path)
    make_toy_tree(tmp_path / "data" / "toy", "Art", per_class=2)
    r = cli("data", "check", "--dataset", str(proto), "--data-root", str(tmp_path / "data"))
    assert r.exit_code == 1
    assert "toy/Art" in r.output and "toy/Clipart: not found" in r.output


def test_listing_into_a_closed_pipe_is_quiet(tmp_path):
    p = subprocess.Popen(f"{sys.executable} -m ueobench.cli list backbones --all | head -1", shell=True, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=300)
    assert out.strip() and "BrokenPipeError" not in err and "Traceback" not in err, err
