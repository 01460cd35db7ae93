"""The README's "Add a method" example is a working plugin."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import TINY

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_plugin_example_runs(cli, tmp_path):
    section = README.read_text().split("## Add a method", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 20 <= len(code.strip().splitlines()) <= 40
    plugins = tmp_path / "my_methods"
    plugins.mkdir()
    (plugins / "ensemble.py").write_text(code)
    r = cli("--plugins", str(plugins), "run", "--method", "ensemble", "--protocol", "oda", "--domain", "sketch",
            "--set", "templates=2", "--backbone", TINY)
    assert r.exit_code == 0, r.output
    assert "ensemble (templates=2) | shapes/oda/sketch |" in r.output


def test_readme_adapting_plugin_example_trains(cli, tmp_path):
    section = README.read_text().split("## Add a method", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[1]
    plugins = tmp_path / "my_methods"
    plugins.mkdir()
    (plugins / "confim.py").write_text(code)
    r = cli("--plugins", str(plugins), "run", "--method", "confim", "--protocol", "opda", "--domain", "clipart",
            "--set", "diversity=1", "--epochs", "1", "--set", "eval_every=0", "--backbone", TINY, "--json")
    assert r.exit_code == 0, r.output
    import json

    rec = json.loads(r.output)
    assert rec["history"][-1]["epoch"] == 1 and rec["trainable_parameters"] > 0
    shown = cli("--plugins", str(plugins), "show", "method", "confim").output
    assert "diversity" in shown and "weight of the marginal-entropy term" in shown


def test_readme_api_example_names_exist():
    import ueobench

    section = README.read_text().split("## The Python API", 1)[1].split("\n## ", 1)[0]
    for name in set(re.findall(r"ueobench\.(\w+)\(", section)):
        assert name in ueobench.__all__ or name == "records", name


def test_readme_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in text, "the README's test command and .ci/run must be the same command"
