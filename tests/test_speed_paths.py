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


def _views_one_by_one(tv, image):
    """TPT's views as the reference builds them: each view drawn, augmented and normalised on its own."""
    import numpy as np

    from ueobench.adapt.augmix import OPERATIONS

    def view():
        crop = tv.crop(image)
        plain = tv.normalise(crop)
        if not tv.augmix:
            return plain
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        weights = rng.dirichlet([1.0, 1.0, 1.0]).astype(np.float32)
        blend = np.float32(rng.beta(1.0, 1.0))
        mixed = torch.zeros_like(plain)
        for w in weights:
            chain = crop.copy()
            for _ in range(int(rng.integers(1, 4))):
                chain = OPERATIONS[int(rng.integers(len(OPERATIONS)))](chain, tv.severity, rng)
            mixed += float(w) * tv.normalise(chain)
        return float(blend) * plain + (1.0 - float(blend)) * mixed

    return torch.stack([tv.eval_transform(image)] + [view() for _ in range(tv.views - 1)])


@pytest.mark.parametrize("augmix", [True, False])
def test_tpt_views_normalised_together_are_the_bits_of_views_made_one_by_one(augmix):
    import numpy as np
    from PIL import Image
    from torchvision import transforms as T

    from ueobench.adapt import TPTViews

    mean, std = (0.48, 0.45, 0.40), (0.26, 0.26, 0.27)
    ev = T.Compose([T.Resize(40), T.CenterCrop(40), T.ToTensor(), T.Normalize(mean, std)])
    tv = TPTViews(ev, 40, mean, std, views=37, augmix=augmix)  # more than one chunk of plain crops
    for k in range(3):
        image = Image.fromarray(np.random.default_rng(k).integers(0, 256, (53, 47, 3), dtype=np.uint8))
        torch.manual_seed(k)
        ours, state = tv(image), torch.get_rng_state()
        torch.manual_seed(k)
        ref = _views_one_by_one(tv, image)
        assert torch.equal(ours, ref) and torch.equal(state, torch.get_rng_state())


def test_tpt_back_propagates_through_the_reset_prompts_text_once_with_the_same_result(cli):
    """The reset prompt's text graph is built once and reused for every image: the same logits as rebuilding it."""
    import numpy as np

    from ueobench.method.registry import get_method

    outs = []
    for reuse in (True, False):
        torch.manual_seed(0)
        backbone = load_backbone(TINY)
        cls = get_method("tpt")
        m = cls(cls.Options(views=4))
        from types import SimpleNamespace

        m.setup(backbone, NAMES, SimpleNamespace(amp_dtype=None, seed=0))
        if not reuse:
            m._reset_text = m.prompt  # rebuild the text graph at every image, as the reference does
        images = torch.randn(3, 4, 3, backbone.image_size, backbone.image_size)
        outs.append(m.predict(images).detach().numpy())
    assert np.array_equal(outs[0], outs[1])
