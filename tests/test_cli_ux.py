"""Day-one use of the command line: fast start, plain logs off a terminal, option axes, export, the API."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import TINY

HEAVY = ("torch", "open_clip", "sklearn")
PROBE = """
import sys
from ueobench.cli.app import main
sys.argv = ["ueobench", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("HEAVY:" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def probe(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def heavy(out: subprocess.CompletedProcess) -> str:
    return out.stderr.rsplit("HEAVY:", 1)[1].strip()


def test_fast_commands_import_no_torch_open_clip_or_sklearn(cli):
    assert cli("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "clipart", "--backbone", TINY).exit_code == 0
    assert cli("sweep", "--method", "zeroshot", "--protocol", "oda", "--domain", "clipart", "--backbone", TINY).exit_code == 0
    assert probe("list", "methods").returncode == 0  # the first call may build the catalogue (imports torch once)
    assert probe("list", "backbones").returncode == 0
    for args in (["--help"], ["list", "methods"], ["list", "backbones", "ViT-B-16*"], ["list", "datasets"],
                 ["list", "scores"], ["show", "protocol", "officehome", "opda"], ["show", "method", "ueo"],
                 ["status"], ["table"], ["table", "--format", "latex"]):
        out = probe(*args)
        assert heavy(out) == "", (args, heavy(out), out.stderr[-500:])
        assert "Error" not in out.stderr, (args, out.stderr[-500:])


def test_logs_off_a_terminal_are_plain_progress_lines(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "UEOBENCH_NO_PROGRESS"}
    out = subprocess.run([sys.executable, "-m", "ueobench.cli", "run", "--method", "ueo", "--protocol", "opda",
                          "--domain", "clipart", "--backbone", TINY, "--epochs", "2", "--set", "eval_every=0"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    err = out.stderr
    assert "\x1b[" not in err  # no terminal control codes in a log
    assert "run ueo_shapes_opda_clipart_s0-" in err and ": started" in err
    assert "ueo adapt: " in err and "%" in err and "/s" in err and "loss " in err  # progress with rate and loss
    assert "done in" in err and "test acc" in err


def test_sweep_prints_a_line_per_run_and_set_values_form_an_axis(cli):
    r = cli("sweep", "--method", "ueo", "--protocol", "opda", "--domain", "clipart", "--backbone", TINY,
            "--set", "epochs=1", "--set", "eval_every=0", "--set", "lr_prompt=1e-4,1e-2")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("[")]
    assert len(lines) == 2 and all("test acc" in ln for ln in lines)
    table = cli("table", "--protocol", "opda").output
    assert "UEO (epochs=1, eval_every=0, lr_prompt=0.01)" in table and "UEO (epochs=1, eval_every=0) |" in table
    twice = cli("sweep", "--method", "ueo", "--protocol", "opda", "--set", "epochs=1", "--set", "epochs=2")
    assert twice.exit_code == 2 and "--set epochs is given twice" in twice.output and "epochs=a,b" in twice.output


def test_export_one_row_per_run_with_options_and_metrics(cli, tmp_path):
    assert cli("run", "--method", "ueo", "--protocol", "oda", "--domain", "real", "--backbone", TINY, "--epochs", "1",
               "--set", "eval_every=0").exit_code == 0
    assert cli("run", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone", TINY).exit_code == 0
    import pandas as pd

    out = tmp_path / "runs.csv"
    assert cli("export", "--output", str(out)).exit_code == 0
    df = pd.read_csv(out)
    assert len(df) == 2 and {"option.epochs", "option.lr_prompt", "test.acc", "target.ece", "label", "seed",
                             "data_checksum", "method_code"} <= set(df.columns)
    jsonl = cli("export", "--format", "jsonl").output.splitlines()
    assert len(jsonl) == 2 and json.loads(jsonl[0])["run_id"]


def test_package_exposes_exactly_all():
    import ueobench

    for name in ueobench.__all__:
        assert getattr(ueobench, name) is not None, name
    assert callable(ueobench.sweep) and callable(ueobench.status) and hasattr(ueobench.records, "RunRecord")
    assert "sigmoid" not in dir(ueobench) and set(dir(ueobench)) == set(ueobench.__all__)
    with pytest.raises(AttributeError):
        ueobench.not_a_name  # noqa: B018


def test_plugins_after_the_subcommand_and_cache_honours_xdg(cli, tmp_path, monkeypatch):
    d = tmp_path / "plug"
    d.mkdir()
    (d / "mine.py").write_text(
        "from ueobench import Method, register_method\n\n\n@register_method('mine')\nclass Mine(Method):\n"
        "    \"\"\"A method that only exists in a plugin folder.\"\"\"\n")
    assert "mine" in cli("list", "methods", "--plugins", str(d)).output
    from ueobench.core.paths import cache_root

    monkeypatch.delenv("UEOBENCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "ueobench"


def test_ambiguous_domain_says_which_dataset_it_picked():
    r = subprocess.run([sys.executable, "-m", "ueobench.cli", "run", "--method", "zeroshot", "--protocol", "opda",
                        "--domain", "clipart", "--backbone", TINY], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "warning: domain 'clipart' is also in" in r.stderr and "using dataset 'shapes'" in r.stderr
    assert "pass --dataset" in r.stderr
