"""WiSE-FT (labeled-source) against a transcription of CaRot's src/wise_ft.py (MLAI-Yonsei/CaRot).

``_merge(alpha, theta_0, theta_1, fishers=None, ...)`` = {key: (1 - alpha)·theta_0[key] + alpha·theta_1[key]} over
the ImageClassifier state dicts (zero-shot checkpoint, fine-tuned checkpoint), loaded into the fine-tuned model.
WiSE-FT trains as ft: every alpha and plain FT share one stored artifact."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from conftest import TINY
from test_ft import CLASSES, fake_context, load_predictions, tiny_world
from ueobench.method.options import build_options
from ueobench.method.registry import get_method


def ref_merge(alpha, theta_0, theta_1):
    return {key: (1 - alpha) * theta_0[key] + alpha * theta_1[key] for key in theta_1.keys()}


def make_wiseft(backbone, context, **overrides):
    cls = get_method("wiseft")
    m = cls(build_options(cls, {k: str(v) for k, v in overrides.items()}))
    m.setup(backbone, CLASSES, context)
    m.snapshot()
    return m


def test_wiseft_trains_as_ft_and_only_alpha_is_its_own():
    cls, ft = get_method("wiseft"), get_method("ft")
    assert cls.trains_as == "ft" and cls.eval_options == ("alpha",) and issubclass(cls, ft)
    assert cls.display_name == "WiSE-FT" and cls.track == "labeled-source"
    o = build_options(cls, {})
    assert o.alpha == 0.5 and (o.epochs, o.lr, o.batch_size) == (10, 3e-5, 512)
    for hook in ("setup", "trainable_parameters", "adapt", "artifact_state", "artifact_meta", "selection",
                 "predict", "predict_features", "load_artifact_state"):
        assert getattr(cls, hook) is getattr(ft, hook), hook


def test_plans_share_fts_artifact_for_every_alpha():
    from ueobench.runs.plan import plan_run
    from ueobench.runs.request import RunRequest

    def artifact(method, **options):
        req = RunRequest(method=method, source="real", protocol="oda", domain="clipart", dataset="shapes",
                         backbone=TINY, options={k: str(v) for k, v in options.items()})
        return plan_run(req).plan.artifact

    ft = artifact("ft", epochs=1)
    assert artifact("wiseft", epochs=1) == ft and artifact("wiseft", epochs=1, alpha=0.1) == ft
    assert artifact("wiseft", epochs=1, alpha=1) == ft and artifact("wiseft", epochs=2) != ft


def test_interpolation_is_the_reference_merge():
    backbone, x, y = tiny_world()
    ctx = fake_context(backbone, x, y)
    m = make_wiseft(backbone, ctx, epochs=1, batch_size=5, lr=1e-3, alpha=0.3)
    theta_0 = m.artifact_state()  # the zero-shot ImageClassifier: image tower + zero-shot head
    zs_visual = [p.detach().clone() for p in backbone.model.visual.parameters()]
    m.adapt(ctx)
    theta_1 = m.artifact_state()  # what is stored: plain FT
    assert any(not torch.equal(theta_0[k], theta_1[k]) for k in theta_1)
    for alpha in (0.3, 0.0, 1.0, 0.5):
        m.reset()
        m.load_artifact_state(theta_1, {})
        m.options.alpha = alpha
        m.finish(ctx)
        got, want = m.artifact_state(), ref_merge(alpha, theta_0, theta_1)
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want), alpha
    # the ends: alpha 0 is exactly the zero-shot model (so the evaluator uses the cached zero-shot features),
    # alpha 1 exactly FT
    m.reset(); m.load_artifact_state(theta_1, {}); m.options.alpha = 0.0; m.finish(ctx)
    assert all(torch.equal(m.artifact_state()[k], theta_0[k]) for k in theta_0)
    assert all(torch.equal(p.detach(), p0) for p, p0 in zip(backbone.model.visual.parameters(), zs_visual))
    m.reset(); m.load_artifact_state(theta_1, {}); m.options.alpha = 1.0; m.finish(ctx)
    assert all(torch.equal(m.artifact_state()[k], theta_1[k]) for k in theta_1)


def test_cli_every_alpha_reuses_fts_model(cli):
    common = ("--source", "real", "--protocol", "oda", "--domain", "clipart", "--backbone", TINY,
              "--set", "epochs=1", "--set", "batch_size=128")
    r = cli("run", "--method", "ft", *common)
    assert r.exit_code == 0 and "trained in" in r.output, r.output
    [ft_run] = list(Path("results/runs").iterdir())
    ft_rec = json.loads((ft_run / "record.json").read_text())
    aid = ft_rec["artifact"]["id"]

    r = cli("run", "--method", "wiseft", *common)  # the default alpha 0.5
    assert r.exit_code == 0 and "(reused)" in r.output and "trained in" not in r.output, r.output
    r = cli("sweep", "--method", "wiseft", *common, "--set", "alpha=0,1")
    assert r.exit_code == 0, r.output
    runs = {json.loads((d / "record.json").read_text())["method"]["options"]["alpha"]: d
            for d in Path("results/runs").iterdir() if d.name.startswith("wiseft")}
    assert sorted(runs) == [0.0, 0.5, 1.0]
    for alpha, d in runs.items():
        rec = json.loads((d / "record.json").read_text())
        assert rec["artifact"]["id"] == aid and rec["artifact"]["reused"] is True, alpha
    assert len(list(Path("results/artifacts").iterdir())) == 1

    ft_preds, one = load_predictions(ft_run), load_predictions(runs[1.0])
    assert all(np.array_equal(ft_preds[k], one[k]) for k in ft_preds)  # alpha 1 is FT exactly

    r = cli("run", "--method", "zeroshot", "--protocol", "oda", "--domain", "clipart", "--backbone", TINY)
    assert r.exit_code == 0, r.output
    [zs_run] = [d for d in Path("results/runs").iterdir() if d.name.startswith("zeroshot")]
    zs, zero = load_predictions(zs_run), load_predictions(runs[0.0])
    rec0 = json.loads((runs[0.0] / "record.json").read_text())
    assert rec0["evaluation"]["predictions"]["test"] == "cached image features"
    for split in ("test", "target"):  # alpha 0 is zero-shot (to the rounding of s·t/s)
        np.testing.assert_allclose(zero[f"{split}_logits"], zs[f"{split}_logits"], rtol=0, atol=1e-6)
        assert np.array_equal(zero[f"{split}_logits"].argmax(1), zs[f"{split}_logits"].argmax(1))
    half = load_predictions(runs[0.5])
    assert not np.allclose(half["test_logits"], one["test_logits"]) and not np.allclose(half["test_logits"],
                                                                                          zero["test_logits"])
