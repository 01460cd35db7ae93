"""FLYP as CaRot's repository runs it (carot_loss with cross_fnorm = l_orth_wv = distil_coef = 0): the released
loop transcribed (clip/loss.py ClipLoss, src/models/utils.py cosine_lr, AdamW on every parameter), in float64,
and end to end."""
from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from conftest import TINY
from ueobench.methods.flyp import FLYP

NAMES = ["red star", "blue ring", "green cross"]


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def ref_clip_loss(img, txt, s):  # ClipLoss, one process, ls = 0
    lpi, lpt = s * img @ txt.t(), s * txt @ img.t()
    lab = torch.arange(img.shape[0])
    return (F.cross_entropy(lpi, lab) + F.cross_entropy(lpt, lab)) / 2


def ref_lr(step, total, base, warmup, min_lr=0.0):  # cosine_lr, set before every step
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * (1 + np.cos(np.pi * (step - warmup) / (total - warmup))) * base + min_lr


class FixedLoader:
    def __init__(self, batches):
        self.batches, self.dataset = batches, list(range(sum(len(b[1]) for b in batches)))

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def setup_flyp(**options):
    from ueobench.models.backbones import load_backbone, parse_spec

    torch.manual_seed(0)
    backbone = load_backbone(parse_spec(TINY), torch.device("cpu"))
    backbone.model.double().eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64),
                torch.tensor([(i + j) % 3 for j in range(4)]), torch.arange(4)) for i in range(2)]
    ctx = SimpleNamespace(device=torch.device("cpu"), prompt="a photo of a {}.", seed=0, amp_dtype=None,
                          progress=None, evaluate=None, num_source={"train": 8, "val": 0},
                          source_loader=lambda *a, **k: FixedLoader(batches))
    m = FLYP(FLYP.Options(**options))
    m.setup(backbone, NAMES, ctx)
    return m, backbone, batches, ctx


def test_flyp_training_matches_the_released_loop_in_float64():
    m, backbone, batches, ctx = setup_flyp(epochs=3, batch_size=4, lr=1e-3, warmup_frac=1 / 3)
    assert m.coefficients() == (0.0, 0.0, 0.0)
    student = copy.deepcopy(backbone.model).train()
    opt = torch.optim.AdamW(list(student.parameters()), lr=1e-3, weight_decay=0.1)  # the default wd of FLYP
    T = 6
    for step in range(T):
        for group in opt.param_groups:
            group["lr"] = ref_lr(step, T, 1e-3, 2)
        images, labels, _ = batches[step % 2]
        tokens = backbone.tokenizer([f"a photo of a {NAMES[y]}." for y in labels.tolist()])
        loss = ref_clip_loss(_unit(student.encode_image(images)), _unit(student.encode_text(tokens)),
                             student.logit_scale.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()
    history = m.adapt(ctx)
    assert len(history) == 3 and m.teacher is None and m.schedule["warmup_steps"] == 2
    for (name, p), q in zip(backbone.model.named_parameters(), student.parameters()):
        assert torch.allclose(p, q, atol=1e-10, rtol=0), f"{name}: {(p - q).abs().max()}"
    assert float((backbone.model.logit_scale.detach() - math.log(1 / 0.07)).abs()) > 1e-5  # the scale is learned
    with torch.no_grad():
        head = _unit(student.encode_text(backbone.tokenizer([f"a photo of a {n}." for n in NAMES])))
        expected = _unit(student.encode_image(batches[1][0])) @ head.T
    assert torch.allclose(m.predict(batches[1][0]).double(), expected, atol=1e-6)
    assert math.isclose(m.logit_scale(), float(student.logit_scale.detach().exp()), rel_tol=1e-12)


def test_flyp_reference_defaults_and_no_carot_terms():
    o = FLYP.Options()
    assert (o.epochs, o.batch_size, o.lr, o.weight_decay, o.min_lr) == (10, 512, 1e-5, 0.1, 0.0)
    assert o.warmup_frac == 500 / 25_000 and o.warmup_steps is None and o.aug_scale_min == 0.9
    assert o.templates == "dataset" and o.full_batches
    assert not any(hasattr(o, k) for k in ("cross_fnorm", "l_orth", "distil", "ema_every_frac"))
    assert FLYP.display_name == "FLYP" and FLYP.track == "labeled-source"


def test_flyp_end_to_end_reuses_its_artifact_and_retrains_identically(cli):
    from safetensors.torch import load_file

    args = ("run", "--method", "flyp", "--source", "real", "--protocol", "oda", "--backbone", TINY,
            "--shots", "8", "--set", "epochs=1", "--set", "batch_size=32")
    r = cli(*args, "--domain", "clipart")
    assert r.exit_code == 0 and "trained in" in r.output, r.output
    r2 = cli(*args, "--domain", "painting")
    assert r2.exit_code == 0 and "(reused)" in r2.output, r2.output
    [first] = [d for d in Path("results/runs").iterdir() if "to-clipart" in d.name]
    rec = json.loads((first / "record.json").read_text())
    [art] = list(Path("results/artifacts").iterdir())
    learned = float(load_file(str(art / "state.safetensors"))["logit_scale"].double().exp())
    assert math.isclose(rec["evaluation"]["logit_scale"], learned, rel_tol=1e-6)
    info = rec["method"]["info"]
    assert (info["total_steps"], info["warmup_steps"], info["distil"]) == (3, 1, 0.0) and "ema_every" not in info
    preds, sha = (first / "predictions.npz").read_bytes(), rec["artifact"]["state_sha256"]
    shutil.rmtree(art)
    r3 = cli(*args, "--domain", "clipart", "--force")
    assert r3.exit_code == 0 and "trained in" in r3.output, r3.output
    assert (first / "predictions.npz").read_bytes() == preds
    assert json.loads((first / "record.json").read_text())["artifact"]["state_sha256"] == sha
