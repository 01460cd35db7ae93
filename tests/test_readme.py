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


def test_readme_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in text, "the README's test command and .ci/run must be the same command"
