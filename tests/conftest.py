"""Shared fixtures: an isolated cache and results folder, and a tiny on-disk toy dataset."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

TINY = "tiny-vit:random"

# Set before any test module is collected: huggingface_hub reads these once, when first imported, and a module
# that imports it at collection time would otherwise leave it online (a download then waits on its timeouts).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    os.environ["UEOBENCH_CACHE"] = str(cache)
    os.environ["UEOBENCH_NO_PROGRESS"] = "1"
    os.environ.pop("UEOBENCH_DATA", None)
    yield


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path, monkeypatch):
    """Each test runs in its own folder, so ``results/``, ``ueobench.toml`` and cached features never leak."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UEOBENCH_FEATURE_CACHE", str(tmp_path / "feature-cache"))
    from ueobench.method import plugins
    from ueobench.method.registry import METHODS

    METHODS.names()  # the built-ins, loaded once
    saved, state = list(plugins.PLUGIN_DIRS), METHODS.snapshot()
    yield
    plugins.PLUGIN_DIRS[:] = saved  # --plugins folders and the methods they registered never leak into the next test
    METHODS.restore(state)


@pytest.fixture
def cli():
    from ueobench.cli.app import cli as group

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(group, list(args), catch_exceptions=False)

    return invoke


def write_image(path: Path, seed: int, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


TOY_CLASSES = ["alarm_clock", "back pack", "bike", "cup", "desk-lamp", "eraser"]


def toy_protocol(folder: Path, name: str = "toy", domains=("Art", "Clipart")) -> Path:
    """A protocol file for a 6-class toy dataset: known 0..3; opda target 0..1 and 4."""
    doc = {
        "format": 1, "name": name, "homepage": "https://example.org/toy", "folder": name,
        "classes": TOY_CLASSES,
        "domains": [{"name": d, "folder": d, "adapt": f"{d}_list.txt", "test": f"{d}_list.txt"} for d in domains],
        "shifts": {
            "cda": {"known": [[0, 3]], "target": [[0, 3]]},
            "pda": {"known": [[0, 3]], "target": [[0, 1]]},
            "oda": {"known": [[0, 3]], "target": [[0, 4]]},
            "opda": {"known": [[0, 3]], "target": [[0, 1], [4, 4]]},
            "csda": {"known": "all", "target": "all"},
        },
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def make_toy_tree(root: Path, domain: str = "Art", per_class: int = 3, folder_names=None) -> Path:
    """``<root>/<domain>/<Class_Folder>/<i>.png`` with Office-Home-like folder names."""
    names = folder_names or ["Alarm_Clock", "Back_Pack", "Bike", "CUP", "Desk_Lamp", "eraser"]
    for ci, cname in enumerate(names):
        for i in range(per_class):
            write_image(root / domain / cname / f"{i:03d}.png", seed=ci * 100 + i)
    return root / domain


def write_list(root: Path, domain: str, lines: list[str]) -> Path:
    p = root / f"{domain}_list.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


def make_tiny_clipn(path: Path, arch: str = "tiny-vit", seed: int = 0, same_as_yes: bool = False) -> Path:
    """A random CLIP of ``arch`` with a "no" text encoder, saved in the official CLIPN layout (``module.`` keys in
    ``state_dict``). ``same_as_yes``: the "no" tower is a copy of the ordinary one with zero "no" prompts."""
    import torch

    from ueobench.models.backbones import register_model_configs
    from ueobench.models.clipn_checkpoint import save_clipn_checkpoint

    import open_clip

    register_model_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model(arch)
    g = torch.Generator().manual_seed(seed + 1)
    no = {}
    for k, v in model.state_dict().items():
        if k.startswith(("transformer.", "token_embedding", "ln_final")) or k in ("positional_embedding", "text_projection"):
            no[k] = v.clone() if same_as_yes else v + 0.1 * torch.randn(v.shape, generator=g)
    width = model.token_embedding.weight.shape[1]
    no["prompt_no"] = torch.zeros(16, 77, width) if same_as_yes else 0.05 * torch.randn(16, 77, width, generator=g)
    save_clipn_checkpoint(model, no, path)
    return path


@pytest.fixture
def tiny_clipn(tmp_path) -> str:
    """A backbone spec naming a tiny random CLIPN checkpoint."""
    return f"tiny-vit:{make_tiny_clipn(tmp_path / 'clipn_tiny.pt')}"
