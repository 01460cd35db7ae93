"""The shipped tiny CLIP of the shapes world: checksum, size, a zero-shot floor, and corruption handling."""
from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest

from ueobench.models.backbones import builtin_weights, load_backbone, weights_checksum
from ueobench.core.errors import UeobenchError
from ueobench.data.protocols import load_protocol

WEIGHTS = Path(str(resources.files("ueobench.weights")))
FLOOR = {"real": 0.70, "clipart": 0.70}  # documented in the README; measured values are well above


def test_shipped_weights_load_and_match_their_checksum():
    path = builtin_weights("tiny-shapes")
    assert path.stat().st_size <= 15 * 2**20
    assert weights_checksum(path) == (WEIGHTS / "tiny-shapes.sha256").read_text().split()[0]
    b = load_backbone("tiny-shapes:builtin")
    assert b.info["random_weights"] is False and b.info["weights"] == "builtin"
    assert load_protocol("shapes").default_backbone == "tiny-shapes:builtin"


def test_zero_shot_accuracy_stays_above_the_floor(cli):
    for domain, floor in FLOOR.items():
        r = cli("run", "--method", "zeroshot", "--protocol", "cda", "--domain", domain, "--json")
        assert r.exit_code == 0, r.output
        rec = json.loads(r.output)
        assert rec["config"]["backbone"] == "tiny-shapes:builtin"
        assert rec["metrics"]["test"]["acc"] >= floor, (domain, rec["metrics"]["test"]["acc"])


def test_corrupted_weights_are_an_error_never_random(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    for f in ("tiny-shapes.safetensors", "tiny-shapes.sha256"):
        shutil.copy(WEIGHTS / f, folder / f)
    data = bytearray((folder / "tiny-shapes.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "tiny-shapes.safetensors").write_bytes(bytes(data))
    with pytest.raises(UeobenchError, match="corrupt .*SHA-256 does not match"):
        builtin_weights("tiny-shapes", folder)
    (folder / "tiny-shapes.safetensors").write_bytes(bytes(data[:1000]))  # truncated, checksum updated to match
    (folder / "tiny-shapes.sha256").write_text(weights_checksum(folder / "tiny-shapes.safetensors") + "\n")
    with pytest.raises(UeobenchError, match="cannot read checkpoint .*tiny-shapes.safetensors"):
        load_backbone(f"tiny-shapes:{folder / 'tiny-shapes.safetensors'}")
    with pytest.raises(UeobenchError, match="no built-in weights for 'tiny-vit'"):
        builtin_weights("tiny-vit")
