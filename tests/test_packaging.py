"""A built wheel carries the built-in methods, protocol files and model configs, and works installed."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True)
    if files.returncode != 0:
        pytest.skip("not a git checkout")
    for rel in files.stdout.split():
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
                   check=True, capture_output=True)
    [whl] = out.glob("ueobench-*.whl")
    return whl


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("ueobench/methods/zeroshot.py", "ueobench/builtin_protocols/officehome.json",
                   "ueobench/builtin_protocols/shapes.json", "ueobench/model_configs/tiny-vit.json",
                   "ueobench/cli/app.py", "ueobench/core/errors.py", "ueobench/runs/runner.py",
                   "ueobench/weights/tiny-shapes65.safetensors"):
        assert needed in names, needed
    ep = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(ep).decode()
    assert "ueobench = ueobench.cli.app:main" in text
    assert "[ueobench.methods]" not in text  # built-ins are the files of methods/, found by the registry


def test_installed_wheel_works_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = (
        "import ueobench, ueobench.api as a; assert ueobench.__file__.startswith(%r), ueobench.__file__;"
        "print(a.list_methods()); print(a.show_protocol('visdac', 'opda')['unknown'])" % str(target)
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "zeroshot" in out.stdout and "['plant', 'skateboard']" in out.stdout
