"""Grids: expansion, plans, resume after SIGKILL, concurrent workers, failures, submitit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY
from ueobench.store.claims import state
from ueobench.sweeps.jobs import job_names, load_sweep, save_sweep
from ueobench.sweeps.launchers import run_local, run_workers
from ueobench.sweeps.spec import SweepSpec, expand, parse_seeds

COUNTING = '''
import os, time
from dataclasses import dataclass
from pathlib import Path
import torch
from ueobench import Method, Options, register_method
from ueobench.models.clip_ops import encode_images


@register_method("counting")
class Counting(Method):
    """Logs every execution to $COUNT_LOG; sleeps $COUNT_SLEEP seconds in adapt; fails if $COUNT_FAIL is set."""

    adaptation = "transductive"

    @dataclass
    class Options(Options):
        tag: int = 0

    def setup(self, backbone, class_names, context):
        super().setup(backbone, class_names, context)
        self.k = len(class_names)

    def adapt(self, context):
        with open(os.environ["COUNT_LOG"], "a") as f:
            f.write(f"{context.shift} {context.domain} {context.seed} {self.options.tag} {os.getpid()}\\n")
        time.sleep(float(os.environ.get("COUNT_SLEEP", "0")))
        if os.environ.get("COUNT_FAIL"):
            raise RuntimeError("injected failure")

    @torch.no_grad()
    def predict(self, images):
        f = encode_images(self.backbone, images)
        return f[:, : self.k] if f.shape[1] >= self.k else f.new_zeros(len(f), self.k)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "counting.py").write_text(COUNTING)
    log = tmp_path / "count.log"
    log.touch()
    monkeypatch.setenv("COUNT_LOG", str(log))
    return d, log


def sweep_args(plugins, *extra):
    return ("--plugins", str(plugins), "sweep", "--method", "counting", "--backbone", TINY, *extra)


def test_axes_expand():
    assert parse_seeds("0-2") == [0, 1, 2] and parse_seeds("0,3,5-6") == [0, 3, 5, 6]
    with pytest.raises(Exception, match="bad --seed"):
        parse_seeds("3-1")
    spec = SweepSpec(methods=["zeroshot", "ueo"], protocols=["oda", "opda"], domains=["all"], datasets=["shapes"],
                        seeds=[0, 1], backbones=[None], options={"epochs": "1"})
    jobs = expand(spec)
    assert len(jobs) == 2 * 2 * 4 * 2
    assert {j.domain for j in jobs} == {"real", "clipart", "painting", "sketch"}
    assert all("epochs" not in j.options for j in jobs if j.method == "zeroshot")  # applied where declared
    assert all(j.options == {"epochs": "1"} for j in jobs if j.method == "ueo")
    with pytest.raises(Exception, match="has no option 'epoch'"):
        expand(SweepSpec(methods=["ueo"], protocols=["oda"], domains=["all"], datasets=["shapes"], seeds=[0],
                               backbones=[None], options={"epoch": "1"}))


def test_dry_run_prints_the_plan(cli):
    r = cli("sweep", "--method", "zeroshot,tent", "--protocol", "cda,oda", "--domain", "clipart", "--seed", "0-1",
            "--backbone", TINY, "--dry-run")
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].startswith("planning 8 runs")  # says what it does before it reads data
    lines = lines[1:]
    assert len(lines) == 2 * 2 * 2 + 1
    assert lines[-1] == "8 runs: 0 done, 0 running, 0 failed, 8 pending"
    assert not Path("results/runs").exists()


def test_sweep_resumes_and_records_failures(cli, plugin, monkeypatch):
    plugins, log = plugin
    monkeypatch.setenv("COUNT_FAIL", "1")
    r = cli(*sweep_args(plugins, "--protocol", "oda", "--domain", "clipart,sketch"))
    assert r.exit_code == 1 and "2 failed" in r.output
    [f1, f2] = sorted(Path("results/failed").glob("*.json"))
    doc = json.loads(f1.read_text())
    assert doc["error"] == "RuntimeError: injected failure" and "Traceback" in doc["traceback"]
    monkeypatch.delenv("COUNT_FAIL")
    r = cli(*sweep_args(plugins, "--protocol", "oda", "--domain", "clipart,sketch"))
    assert "2 failed-before" in r.output  # not retried unless asked
    r = cli(*sweep_args(plugins, "--protocol", "oda", "--domain", "clipart,sketch", "--retry-failed"))
    assert r.exit_code == 0 and "2 done" in r.output and not list(Path("results/failed").glob("*.json"))
    r = cli(*sweep_args(plugins, "--protocol", "oda", "--domain", "clipart,sketch"))
    assert "2 skipped" in r.output
    assert len(log.read_text().splitlines()) == 4  # 2 failed + 2 done, nothing more
    status = cli("status")
    assert "2 done, 0 running, 0 failed, 0 pending" in status.output


def _plan(tmp_path, plugins, seeds: int, protocols=("oda",)) -> tuple[Path, list[str]]:
    spec = SweepSpec(methods=["counting"], protocols=list(protocols), domains=["clipart"], datasets=["shapes"],
                        seeds=list(range(seeds)), backbones=[TINY], plugins=[str(plugins)],
                        results=str(tmp_path / "results"))
    from ueobench.method.plugins import add_plugin_folder

    add_plugin_folder(plugins)
    jobs = expand(spec)
    names = [job_names([j])[0] for j in jobs]
    return save_sweep(spec, jobs, names), names


def _worker(plan: Path, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "ueobench.sweeps.worker", str(plan)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_resume_after_sigkill_mid_run(tmp_path, plugin):
    plugins, log = plugin
    plan, [name] = _plan(tmp_path, plugins, 1)
    results = tmp_path / "results"
    p = _worker(plan, {"COUNT_SLEEP": "120"})
    deadline = time.time() + 120
    while state(results, name) != "running" and time.time() < deadline:
        assert p.poll() is None, p.stderr.read().decode()
        time.sleep(0.2)
    while not log.read_text() and time.time() < deadline:  # inside adapt
        time.sleep(0.2)
    assert state(results, name) == "running"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert state(results, name) == "pending"  # the claim died with the worker; nothing half-written
    runs = results / "runs"
    assert not runs.exists() or not [x for x in runs.iterdir() if not x.name.startswith(".")]
    p = _worker(plan)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    assert state(results, name) == "done"
    assert len(log.read_text().splitlines()) == 2  # the killed attempt and the completed one


def test_eight_concurrent_workers_run_each_job_exactly_once(tmp_path, plugin):
    plugins, log = plugin
    plan, names = _plan(tmp_path, plugins, seeds=6, protocols=("oda", "cda"))
    procs = [_worker(plan) for _ in range(8)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()
    results = tmp_path / "results"
    runs = [d for d in (results / "runs").iterdir() if not d.name.startswith(".")]
    assert sorted(d.name for d in runs) == sorted(names)
    assert all(json.loads((d / "record.json").read_text())["run_id"] == d.name for d in runs)
    executions = log.read_text().splitlines()
    assert len(executions) == len(names) == 12  # no run executed twice
    assert len({line.rsplit(" ", 1)[0] for line in executions}) == 12


def test_submitit_local_executor(cli, plugin):
    plugins, log = plugin
    r = cli(*sweep_args(plugins, "--protocol", "cda", "--domain", "real", "--seed", "0-1", "--launcher", "submitit-local"))
    assert r.exit_code == 0, r.output
    assert "2 done" in r.output and len(log.read_text().splitlines()) == 2
    assert list(Path("results/submitit").iterdir())


class _Recorder:
    """A progress reporter that keeps what the sweep told it."""

    def __init__(self):
        self.tasks: dict[int, dict] = {}

    def add_task(self, description, total=None, **fields):
        self.tasks[len(self.tasks)] = {"description": description, "total": total, "completed": 0}
        return len(self.tasks) - 1

    def advance(self, tid, amount=1, **fields):
        self.tasks[tid]["completed"] += amount

    def update(self, tid, completed=None, **fields):
        if completed is not None:
            self.tasks[tid]["completed"] = completed


def test_resumed_sweep_counts_only_the_runs_it_executes(tmp_path, plugin):
    """Skipped runs are not work: counting them made a resumed sweep's rate huge and its ETA seconds."""
    plugins, log = plugin
    plan, names = _plan(tmp_path, plugins, seeds=3)
    results = str(tmp_path / "results")
    _, jobs, _ = load_sweep(plan)
    run_local(jobs[:1], names[:1], retry_failed=False, force=False)
    rec = _Recorder()
    codes = run_workers(plan, 2, retry_failed=False, force=False, names=names, results=results, progress=rec)
    assert codes == [0, 0]
    [task] = rec.tasks.values()
    assert task["total"] == 2 and task["completed"] == 2 and "1 already settled" in task["description"]
    rec = _Recorder()
    run_local(jobs, names, retry_failed=False, force=False, progress=rec)  # all done: nothing to count
    [task] = rec.tasks.values()
    assert task["total"] == 0 and task["completed"] == 0 and "3 already settled" in task["description"]
    assert len(log.read_text().splitlines()) == 3  # each run executed once
