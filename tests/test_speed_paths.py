"""The exact shortcuts change nothing: truncated text passes, recorded precision settings."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY
from ueobench.models.backbones import load_backbone
from ueobench.adapt.prompt_learner import PromptLearner

NAMES = ["alarm_clock", "backpack", "desk_lamp", "exit_sign", "refrigerator", "postit_notes", "a b c d e f g h"]


@pytest.mark.parametrize("spec", [TINY, "tiny-rn:random", "ViT-B-16:random"])
def test_truncated_text_pass_equals_the_full_77_token_pass(spec):
    torch.manual_seed(0)
    backbone = load_backbone(spec)
    for init in ("a photo of a", None):
        learner = PromptLearner(backbone, NAMES, n_ctx=4 if init else 16, init=init)
        with torch.no_grad():
            learner.ctx.normal_(0, 0.1)  # a trained-looking context, not just the init
            learner.truncate = True
            short = learner()
            learner.truncate = False
            full = learner()
        assert int(learner.eot.max()) + 1 < 77
        assert (short - full).abs().max().item() <= 1e-5


def test_precision_and_device_settings_are_recorded(cli):
    r = cli("run", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone", TINY, "--json")
    rec = json.loads(r.output)
    assert rec["config"]["precision"] == "auto"  # as requested: the identity never depends on the machine
    s = rec["settings"]
    assert s["precision"] == "fp32" and s["precision_requested"] == "auto" and s["trainable_dtype"] == "fp32"
    assert {"tf32", "cudnn_benchmark", "channels_last", "loader_workers", "pin_memory"} <= set(s)
    bad = cli("run", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone", TINY,
              "--precision", "fp16", "--device", "cpu")
    assert bad.exit_code == 2 and "fp16 autocast is for CUDA" in bad.output
    assert not Path("results/failed").exists()  # a request this machine cannot run is refused, not a failed run


def test_bf16_on_cpu_trains_with_fp32_parameters(cli):
    r = cli("run", "--method", "ueo", "--protocol", "oda", "--domain", "real", "--backbone", TINY, "--precision", "bf16",
            "--epochs", "1", "--set", "eval_every=0", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output)
    assert rec["config"]["precision"] == "bf16" and rec["settings"]["trainable_dtype"] == "fp32"
