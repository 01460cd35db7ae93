"""Every method: what it tunes, what it leaves alone, reproducibility, and the reference details that matter."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY
from test_labeled_source import SOURCE_QUICK
from ueobench.runs.plan import plan_run
from ueobench.runs.request import RunRequest
from ueobench.runs.session import start
from ueobench.store.records import load_predictions
from ueobench.models.norms import norm_parameters

FAST = {"epochs": "1", "eval_every": "0"}
CASES = {
    # method, options, backbone -> declared groups
    "ent": ({**FAST}, TINY, {"prompt", "norm"}),
    "im": ({**FAST}, TINY, {"prompt", "norm"}),
    "ueo": ({**FAST}, TINY, {"prompt", "norm"}),
    "ueo-prompt": ({**FAST, "tune": "prompt"}, TINY, {"prompt"}),
    "ueo-norm-rn": ({**FAST, "tune": "norm"}, "tiny-rn:random", {"norm"}),
    "tent-rn": ({"epochs": "1"}, "tiny-rn:random", {"norm"}),
    "pouf": ({"epochs": "1", "iters_per_epoch": "2", "batch_size": "32", "lr_logit_scale": "0.01"}, TINY, {"prompt", "logit_scale"}),
    "upl": ({"epochs": "2", "warmup_epochs": "1", "shots": "4", "ensemble": "1"}, TINY, {"prompt0"}),
}


def session(method: str, options: dict, backbone: str = TINY, protocol: str = "opda"):
    req = RunRequest(method=method, protocol=protocol, domain="clipart", backbone=backbone, options=options)
    return start(plan_run(req))


def all_parameters(s) -> dict[str, torch.nn.Parameter]:
    params = dict(s.backbone.model.named_parameters())
    for name, group in s.groups.items():
        for i, p in enumerate(group):
            params.setdefault(f"declared:{name}:{i}", p)
    return params


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_reach_exactly_the_declared_parameters(case):
    options, backbone, groups = CASES[case]
    s = session(case.split("-")[0], options, backbone)
    assert set(s.groups) == groups
    declared = {id(p) for ps in s.groups.values() for p in ps}
    params = all_parameters(s)
    before = {n: p.detach().clone() for n, p in params.items()}
    s.method.adapt(s.context)
    for n, p in params.items():
        if id(p) in declared:
            assert p.grad is not None, f"{case}: no gradient reached declared parameter {n}"
        else:
            assert p.grad is None and not p.requires_grad, f"{case}: undeclared {n} got a gradient"
            assert torch.equal(p.detach(), before[n]), f"{case}: undeclared {n} changed"
    for name, ps in s.groups.items():
        assert any(not torch.equal(p.detach(), before[n]) for n, p in params.items() if id(p) in {id(q) for q in ps}), \
            f"{case}: group {name} never moved"


def test_norm_rules_on_resnet():
    s = session("ueo", {**FAST, "tune": "norm", "norm_rule": "type"}, "tiny-rn:random")
    names = set(norm_parameters(s.backbone.model.visual, "type"))
    missed = names - set(norm_parameters(s.backbone.model.visual, "name"))
    assert missed and all("downsample.1" in n for n in missed)  # what the reference rule misses
    assert len(s.groups["norm"]) == len(names)


def test_tent_uses_batch_statistics():
    s = session("tent", {"epochs": "1"}, "tiny-rn:random")
    bns = [m for m in s.backbone.model.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.training and m.running_mean is None for m in bns)


def test_ueo_weights_are_the_zero_shot_mcm_of_the_adaptation_set(cli):
    assert cli("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "clipart", "--backbone", TINY).exit_code == 0
    [zs] = list(Path("results/runs").iterdir())
    mcm = load_predictions(zs)["target_scores"]
    s = session("ueo", FAST)
    s.method.before_training(s.context)
    assert np.allclose(s.method.weights.cpu().numpy(), mcm, atol=1e-5)
    # T = 1 on raw cosines makes the weights mild: all close to 1/K
    assert float(s.method.weights.max()) < 2.0 / 10


def test_ueo_oracle_is_marked_and_ranked_apart(cli):
    r = cli("run", "--method", "ueo", "--protocol", "oda", "--domain", "clipart", "--backbone", TINY,
            "--set", "weights=oracle", "--epochs", "1", "--set", "eval_every=0", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output)
    assert rec["method"]["oracle"] is True and rec["method"]["info"]["weights"] == "oracle"
    assert "UEO (epochs=1, eval_every=0, weights=oracle) (oracle)" in cli("table", "--protocol", "oda").output


def test_label_access_is_refused_to_non_oracles():
    s = session("ueo", FAST)
    with pytest.raises(Exception, match="without declaring itself an oracle"):
        s.context.target_labels()
    batch = next(iter(s.context.make_loader(batch_size=4)))  # adaptation batches carry no labels
    assert len(batch) == 2 and batch[0].shape[0] == 4 and batch[1].shape == (4,)


def test_training_seeded_rerun_is_identical(cli):
    args = ("run", "--method", "ueo", "--protocol", "opda", "--domain", "sketch", "--backbone", TINY,
            "--epochs", "2", "--set", "eval_every=1")
    assert cli(*args).exit_code == 0
    [d] = list(Path("results/runs").iterdir())
    rec1, preds1 = json.loads((d / "record.json").read_text()), (d / "predictions.npz").read_bytes()
    assert [h["epoch"] for h in rec1["history"]] == [0, 1, 2] and "metrics" in rec1["history"][0]
    assert cli(*args, "--force").exit_code == 0
    rec2 = json.loads((d / "record.json").read_text())
    assert (d / "predictions.npz").read_bytes() == preds1
    assert rec1["metrics"] == rec2["metrics"] and rec1["history"] == rec2["history"]


def test_tpt_restores_its_prompt_before_every_image(monkeypatch):
    s = session("tpt", {"views": "8"})
    m = s.method
    init = m.prompt.ctx.detach().clone()
    starts = []
    original = m._reset_prompt

    def spy():
        original()
        starts.append(m.prompt.ctx.detach().clone())

    monkeypatch.setattr(m, "_reset_prompt", spy)
    views = m.prediction_transform(s.backbone.preprocess)
    images, _, _ = next(iter(s.evaluator.make_loader(s.planned.shift_data.test, views, 3)))
    assert images.shape[:2] == (3, 8)
    out = m.predict(images)
    assert out.shape == (3, 10)
    assert len(starts) == 4  # before each of the 3 images, and once after the batch
    assert all(torch.equal(x, init) for x in starts)
    assert m.prompt.ctx.grad is not None  # a step was taken on each image
    # the prediction is not the zero-shot one: the prompt did move for each image
    with torch.no_grad():
        zs = torch.nn.functional.normalize(s.backbone.model.encode_image(images[:1, 0]).float(), dim=-1) @ m.prompt().T
    assert not torch.allclose(out[:1], zs, atol=1e-7)


def test_upl_pseudo_labels_top_k_per_predicted_class():
    s = session("upl", {"epochs": "1", "warmup_epochs": "0", "shots": "5"})
    chosen, pred = s.method.pseudo_labels(s.context)
    counts = np.bincount(pred[chosen].numpy(), minlength=10)
    assert counts.max() <= 5 and len(set(chosen)) == len(chosen)
    for k in range(10):  # every predicted class contributes min(shots, members)
        assert counts[k] == min(5, int((pred == k).sum()))


#: cheap settings per method for the end-to-end check; a method missing here runs with its defaults
QUICK = {"ent": FAST, "im": FAST, "ueo": FAST, "tent": {"epochs": "1"}, "pouf": {"epochs": "1", "iters_per_epoch": "2"},
         "upl": {"epochs": "1", "warmup_epochs": "0", "ensemble": "1"}, "tpt": {"views": "4"}, "zero": {"views": "4"},
         **SOURCE_QUICK}


COMPOSITION = "ood:shapes65/sketch@0.1"


def _registered() -> list[str]:
    from ueobench.method.registry import list_methods

    return list_methods()


@pytest.mark.parametrize("method", _registered())
def test_every_method_runs_end_to_end_from_the_cli_and_reruns_identically(cli, tiny_clipn, method):
    from ueobench.method.registry import get_method

    extra = QUICK.get(method, {})
    sets = [a for k, v in extra.items() for a in ("--set", f"{k}={v}")]
    backbone = tiny_clipn if "no_cos" in get_method(method).extras else TINY  # CLIPN needs its own checkpoint
    labeled = get_method(method).track == "labeled-source"  # trained on a labeled source, judged on the target
    source = ("--source", "clipart") if labeled else ()
    # a cross-dataset composition: open-set unknowns drawn from another dataset (shapes65's sketches), so every
    # method also runs on the composition protocol kind
    args = ("run", "--method", method, "--protocol", COMPOSITION, "--domain", "real", "--backbone", backbone,
            *source, *sets)
    r = cli(*args)
    assert r.exit_code == 0, r.output
    where = "clipart -> real" if labeled else "real"
    first = [ln for ln in r.output.splitlines() if f"| shapes/{COMPOSITION}/{where} |" in ln]
    assert first and first[0].startswith(method), r.output
    [d] = list(Path("results/runs").iterdir())
    preds = (d / "predictions.npz").read_bytes()
    assert cli(*args, "--force").exit_code == 0
    assert (d / "predictions.npz").read_bytes() == preds  # a seeded rerun is identical


def test_reference_defaults_and_dataset_overrides():
    from ueobench.method.options import build_options
    from ueobench.method.registry import get_method

    ueo = build_options(get_method("ueo"), {})
    assert (ueo.epochs, ueo.batch_size, ueo.lr_prompt, ueo.lr_norm, ueo.trade, ueo.n_ctx) == (50, 64, 1e-4, 1e-4, 1.0, 4)
    assert ueo.ctx_init == "a photo of a" and ueo.aug_scale_min == 0.5 and ueo.norm_rule == "name"
    dn = build_options(get_method("ueo"), {}, "domainnet")
    assert (dn.epochs, dn.eval_every) == (5, 1)
    assert build_options(get_method("ueo"), {"epochs": "7"}, "domainnet").epochs == 7
    pouf = build_options(get_method("pouf"), {})
    assert (pouf.lr_prompt, pouf.lr_logit_scale, pouf.batch_size, pouf.im_weight) == (1e-3, 5e-7, 96, 0.3)
    upl = build_options(get_method("upl"), {})
    assert (upl.shots, upl.n_ctx, upl.lr, upl.batch_size, upl.ensemble) == (16, 16, 0.002, 32, 16)
    tpt = build_options(get_method("tpt"), {})
    assert (tpt.views, tpt.select, tpt.lr, tpt.steps) == (64, 0.1, 5e-3, 1)
