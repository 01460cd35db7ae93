"""Fault injection: kills at random and exact points, bad data, bad numbers, a bad results folder, hostile
files. After every fault the stored results stay complete and correct."""
from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from conftest import TINY, make_toy_tree, toy_protocol
from ueobench.store.records import iter_records, load_predictions

EXE = [sys.executable, "-m", "ueobench.cli"]
UEO = ["run", "--method", "ueo", "--protocol", "opda", "--domain", "clipart", "--backbone", TINY,
       "--set", "epochs=2", "--set", "eval_every=0"]


def cli_proc(args, env_extra=None, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([*EXE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def visible_runs(results="results") -> list[Path]:
    d = Path(results) / "runs"
    return [p for p in d.iterdir() if not p.name.startswith(".")] if d.exists() else []


def assert_store_consistent(results="results") -> None:
    """Every visible run folder is a complete, readable record with loadable predictions."""
    for run in visible_runs(results):
        rec = json.loads((run / "record.json").read_text())
        assert rec["status"] == "done" and rec["run_id"] == run.name
        preds = load_predictions(run)
        assert preds["test_logits"].shape[0] == rec["metrics"]["test"]["n"]


def grid_state(cli, *extra) -> str:
    r = cli("status", "--method", "ueo", "--protocol", "opda", "--domain", "clipart", "--backbone", TINY,
            "--set", "epochs=2", "--set", "eval_every=0", *extra)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("point", ["data-generation", "training", "between-predictions-and-record", "before-rename"])
def test_kill_at_exact_points_then_resume(cli, tmp_path, point, monkeypatch):
    if point == "data-generation":  # a fresh cache, so the shapes images are generated in this run
        monkeypatch.setenv("UEOBENCH_CACHE", str(tmp_path / "fresh-cache"))
    p = cli_proc(UEO, {"UEOBENCH_FAILPOINT": point})
    p.wait(timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stderr.read()
    assert visible_runs() == []  # no partial record
    if point == "data-generation":  # only a temporary folder is left; the dataset folder never half-exists
        left = list((tmp_path / "fresh-cache" / "shapes").iterdir())
        assert left and all(".tmp-" in d.name for d in left)
    assert "0 done, 0 running, 0 failed, 1 pending" in grid_state(cli)
    r = cli(*UEO)
    assert r.exit_code == 0, r.output
    assert "1 done" in grid_state(cli)
    assert_store_consistent()


def test_kill_at_random_moments(cli, tmp_path):
    t0 = time.monotonic()  # how long one run takes on this machine, so the kills land inside a run
    assert cli_proc([*UEO, "--results", str(tmp_path / "timing")]).wait() == 0
    duration = time.monotonic() - t0
    rng = random.Random(0)
    kills = 0
    for _ in range(3):
        p = cli_proc(UEO)
        time.sleep(rng.uniform(0.15, 0.85) * duration)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        assert_store_consistent()
        if visible_runs():
            break  # it finished before the kill: the record is complete
    assert kills >= 1
    assert cli(*UEO).exit_code == 0
    assert_store_consistent()
    assert len(visible_runs()) == 1
    table = cli("table", "--metric", "acc,auroc")
    assert table.exit_code == 0 and "| UEO (epochs=2, eval_every=0) |" in table.output


def test_nan_loss_stops_the_run_and_records_it_as_failed(cli, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "nanloss.py").write_text(
        "import torch\nfrom ueobench import register_method\nfrom ueobench.adapt import PromptTuningMethod\n\n"
        "@register_method('nanloss')\nclass NanLoss(PromptTuningMethod):\n"
        "    def objective(self, probs, idx):\n        return probs.sum() * float('nan')\n"
    )
    r = cli("--plugins", str(plugins), "run", "--method", "nanloss", "--protocol", "oda", "--domain", "real",
            "--backbone", TINY, "--epochs", "1")
    assert r.exit_code == 2 and "the loss is nan at epoch 1, iteration 1" in r.output
    [failed] = list(Path("results/failed").glob("nanloss_*.json"))
    assert "the loss is nan" in json.loads(failed.read_text())["error"]
    assert visible_runs() == []


def test_nan_logits_stop_the_run(cli, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "nanlogits.py").write_text(
        "import torch\nfrom ueobench import Method, register_method\n\n"
        "@register_method('nanlogits')\nclass NanLogits(Method):\n"
        "    def predict(self, images):\n        return torch.full((len(images), len(self.class_names)), float('nan'))\n"
    )
    r = cli("--plugins", str(plugins), "run", "--method", "nanlogits", "--protocol", "oda", "--domain", "real", "--backbone", TINY)
    assert r.exit_code == 2 and "NaN or inf logits" in r.output
    assert visible_runs() == [] and list(Path("results/failed").glob("nanlogits_*.json"))


def test_bad_results_folder_entries_are_skipped_with_a_warning(cli):
    assert cli("run", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone", TINY).exit_code == 0
    runs = Path("results/runs")
    (runs / "corrupt").mkdir()
    (runs / "corrupt" / "record.json").write_text("{not json")
    (runs / "foreign").mkdir()
    (runs / "foreign" / "record.json").write_text(json.dumps({"hello": "world"}))
    [good] = [p for p in runs.iterdir() if p.name.startswith("zeroshot")]
    newer = runs / "from-the-future"
    newer.mkdir()
    rec = json.loads((good / "record.json").read_text())
    rec["schema"] = 99
    (newer / "record.json").write_text(json.dumps(rec))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = list(iter_records("results"))
    assert [r.run_id for r in recs] == [good.name]
    messages = " ".join(str(w.message) for w in caught)
    assert "corrupt/record.json" in messages and "foreign/record.json" in messages
    assert "record schema 99, newer than this ueobench" in messages and "upgrade ueobench to read it; skipping it" in messages
    t = cli("table")
    assert t.exit_code == 0 and "| Zero-shot |" in t.output and "nan" not in t.output.lower()


def test_unwritable_or_full_results_folder_fails_before_compute(cli, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = cli("run", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone", TINY,
            "--results", str(blocker / "results"))
    assert r.exit_code == 2 and "is not writable" in r.output
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    import ueobench.runs.session as execute

    called = []
    monkeypatch.setattr(execute, "load_backbone", lambda *a, **k: called.append(1))
    r = cli("run", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone", TINY)
    assert r.exit_code == 2 and "MiB free" in r.output and not called


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_executes_code_is_refused(cli, tmp_path):
    import torch

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    r = cli("run", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone", f"tiny-vit:{evil}")
    assert r.exit_code == 2 and "cannot read checkpoint" in r.output and "never pickled code" in r.output
    assert not Path("pwned").exists()
    # a plain tensor checkpoint still loads (weights_only allows tensors)
    from ueobench.models.backbones import load_backbone

    good = tmp_path / "good.pt"
    torch.save(load_backbone(TINY).model.state_dict(), good)
    assert load_backbone(f"tiny-vit:{good}").info["weights"] == str(good)


@pytest.mark.parametrize("case, expect", [
    ("zero-byte", "cannot read image"),
    ("truncated", "cannot read image"),
    ("not-an-image", "cannot read image"),
    ("missing", "cannot read image"),
])
def test_bad_images_give_a_clear_error_and_no_record(cli, tmp_path, case, expect):
    proto = toy_protocol(tmp_path)
    root = tmp_path / "data" / "toy"
    make_toy_tree(root, "Art", per_class=2)
    lines = [f"Art/{c}/{i:03d}.png {ci}" for ci, c in enumerate(["Alarm_Clock", "Back_Pack", "Bike", "CUP", "Desk_Lamp", "eraser"]) for i in range(2)]
    target = root / "Art" / "Bike" / "001.png"
    if case == "zero-byte":
        target.write_bytes(b"")
    elif case == "truncated":
        target.write_bytes(target.read_bytes()[:60])
    elif case == "not-an-image":
        target.write_text("hello")
    else:
        lines.append("Art/Bike/404.png 2")
    (root / "Art_list.txt").write_text("\n".join(lines) + "\n")
    r = cli("run", "--method", "zeroshot", "--protocol", "oda", "--domain", "Art", "--dataset", str(proto),
            "--data-root", str(tmp_path / "data"), "--backbone", TINY)
    assert r.exit_code == 2 and expect in r.output
    assert visible_runs() == []
    check = cli("data", "check", "--dataset", str(proto), "--data-root", str(tmp_path / "data"), "--domain", "Art")
    assert check.exit_code == 1 and ("missing: 1" in check.output or "unreadable: 1" in check.output)


@pytest.mark.slow
def test_two_hundred_runs_across_eight_workers(tmp_path):
    """Load: 200 tiny runs, 8 workers, one folder -> exactly 200 records, none executed twice."""
    from test_sweep import COUNTING
    from ueobench.sweeps.jobs import job_names, save_sweep
    from ueobench.sweeps.spec import SweepSpec, expand
    from ueobench.method.plugins import add_plugin_folder

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "counting.py").write_text(COUNTING)
    log = tmp_path / "count.log"
    log.touch()
    add_plugin_folder(plugins)
    spec = SweepSpec(methods=["counting"], protocols=["cda", "pda", "oda", "opda", "csda"], domains=["all"],
                        datasets=["shapes"], seeds=list(range(10)), backbones=[TINY], plugins=[str(plugins)],
                        results=str(tmp_path / "results"))
    jobs = expand(spec)
    names = [job_names([j])[0] for j in jobs]
    assert len(jobs) == 200
    plan = save_sweep(spec, jobs, names)
    env = {**os.environ, "COUNT_LOG": str(log), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "ueobench.sweeps.worker", str(plan)], env=env) for _ in range(8)]
    assert all(p.wait(timeout=3600) == 0 for p in procs)
    assert sorted(p.name for p in visible_runs(tmp_path / "results")) == sorted(names)
    assert len(log.read_text().splitlines()) == 200
    assert_store_consistent(tmp_path / "results")


def test_a_damaged_record_is_reported_redone_and_never_crashes_a_command(cli):
    args = ["run", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone", TINY]
    assert cli(*args).exit_code == 0
    [run] = visible_runs()
    good = (run / "record.json").read_text()
    for damage in (good[: len(good) // 2], json.dumps({**json.loads(good), "metrics": [1, 2]}),
                   "[" * 100000, b"\xff\xfe".decode("latin-1")):
        (run / "record.json").write_text(damage, encoding="utf-8")
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            assert "pending" in cli("status", "--method", "zeroshot", "--protocol", "oda", "--domain", "real",
                                    "--backbone", TINY, "-v").output
            t = cli("table")
            assert t.exit_code == 2 and "no finished runs" in t.output  # left out, never a crash
            r = cli(*args)
        assert r.exit_code == 0 and ": done" in r.output, r.output  # redone, not "already exists"
        assert json.loads((run / "record.json").read_text())["metrics"]["test"]["n"] > 0
