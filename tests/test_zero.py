"""ZERO against a transcription of the official computation (FarinaMatteo/zero ttas/zero.py Zero.zero,
ttas/base.py confidence_filter, utils/tools.py greedy_break / break_sample_tie) on tiny random view features,
its views, and end to end from the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from ueobench.core.errors import UeobenchError

# ------------------------------------------------------------------------------- the official computation
# Restated from the reference on precomputed, L2-normalised view features: the model is replaced by its
# features (get_image_features = identity) and its temperature 1 / exp(logit_scale).


def ref_greedy_break(ties, logits):
    ties_t = torch.tensor(ties, dtype=torch.int)
    for pred in torch.argmax(logits, dim=1):
        if pred in ties_t:
            return int(pred)
    logit = logits[0]
    logit[~ties_t] = -torch.inf  # break_sample_tie, bitwise NOT included
    return int(torch.argmax(logit, dim=-1))


def ref_zero(views, text, logit_scale=100.0, gamma=0.3, zero_temp=None):
    l = views @ text.t()
    p = (l / (1.0 / logit_scale)).softmax(1)
    ent = -(p * p.log()).sum(1)
    full_idx = torch.argsort(ent, descending=False)
    l_filt = l[full_idx[: int(ent.size()[0] * gamma)]]
    zt = torch.finfo(l_filt.dtype).eps if zero_temp is None else zero_temp
    p_bar = (l_filt / zt).softmax(1).sum(0)
    max_counts, scalar_pred = torch.max(p_bar, dim=-1)
    ties = [int(scalar_pred)] + [i for i in range(len(p_bar)) if i != scalar_pred and p_bar[i] == max_counts]
    if len(ties) > 1:
        k = int(views.size(0) * gamma)
        p_bar[ref_greedy_break(ties, l[full_idx][k:])] += 1
    return p_bar


# ------------------------------------------------------------------------------------------------ helpers


def tied_views(g, v=64, k=6, d=16, dtype=torch.float32):
    """View features whose kept views split their (hard) votes evenly, so ties are common."""
    text = F.normalize(torch.randn(k, d, generator=g, dtype=dtype), dim=-1)
    cls = torch.randint(0, 2, (v,), generator=g)
    views = F.normalize(3 * text[cls] + torch.randn(v, d, generator=g, dtype=dtype), dim=-1)
    return views, text


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_votes_equal_the_official_computation_bit_for_bit(dtype):
    from ueobench.methods.zero import zero_votes

    g = torch.Generator().manual_seed(0)
    how = {}
    for trial in range(300):
        if trial % 2:
            views, text = tied_views(g, dtype=dtype)
        else:
            text = F.normalize(torch.randn(6, 16, generator=g, dtype=dtype), dim=-1)
            views = F.normalize(torch.randn(64, 16, generator=g, dtype=dtype), dim=-1)
        for zt in (2.0 ** -10, float(torch.finfo(torch.float32).eps)):
            for scale in (100.0, 14.29):
                got, h = zero_votes(views @ text.T, scale, 0.3, zt)
                assert torch.equal(got, ref_zero(views, text, scale, 0.3, zt)), (trial, zt, scale)
                how[h] = how.get(h, 0) + 1
    assert how.get("tie: discarded view", 0) > 20 and how["votes"] > 100  # both paths were exercised


def test_fallback_reproduces_the_bitwise_not_bug_and_the_fixed_fallback_picks_a_tie():
    from ueobench.methods.zero import zero_votes

    # 5 classes, 10 views, gamma 0.2 -> 2 kept: one votes class 1, one class 2 (a tie); the 8 discarded views
    # all prefer class 0, so no discarded view breaks the tie and the fallback runs on the first discarded view
    cos = torch.tensor([[0.0, 0.9, 0.0, 0.0, 0.0], [0.0, 0.0, 0.9, 0.0, 0.0]]
                       + [[0.5, 0.1, 0.2, 0.4, 0.3]] * 8)
    got, how = zero_votes(cos, 100.0, 0.2, 2.0 ** -10)
    # ~[1, 2] masks classes 3 and 2 (indices -2, -3), so the argmax is class 0, which is not tied
    assert how == "tie: fallback" and got.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert torch.equal(ref_zero(cos, torch.eye(5), 100.0, 0.2, 2.0 ** -10), got)  # unit text: cosines = features
    fixed, how = zero_votes(cos, 100.0, 0.2, 2.0 ** -10, tie_fallback="ties")
    assert how == "tie: fallback" and fixed.tolist() == [0.0, 1.0, 2.0, 0.0, 0.0]  # class 2: 0.2 > 0.1


def test_zero_temperature_softness_near_ties():
    from ueobench.methods.zero import zero_votes

    # two kept views (gamma 0.5 of 4) whose top classes are 1e-4 apart in cosine: at 2^-10 (the reference's fp16
    # eps) the votes are soft, at fp32 eps they are practically hard
    cos = torch.tensor([[0.3001, 0.3000, 0.0], [0.3001, 0.3000, 0.0], [0.1, 0.1, 0.1], [0.1, 0.1, 0.1]])
    soft, _ = zero_votes(cos, 100.0, 0.5, 2.0 ** -10)
    hard, _ = zero_votes(cos, 100.0, 0.5, float(torch.finfo(torch.float32).eps))
    assert 0.5 < float(soft[0]) / 2 < 0.6 and float(hard[0]) / 2 > 0.999


def session(options: dict):
    from ueobench.runs.plan import plan_run
    from ueobench.runs.request import RunRequest
    from ueobench.runs.session import start

    return start(plan_run(RunRequest(method="zero", protocol="oda", domain="real", dataset="shapes", backbone=TINY,
                                     options=options)))


def test_views_predictions_and_refusals():
    from ueobench.methods.zero import zero_votes
    from ueobench.models import encode_images

    s = session({"views": "8", "gamma": "0.5"})
    m = s.method
    transform = m.prediction_transform(s.backbone.preprocess)
    assert not transform.augmix and transform.views == 8 and m.eval_batching() == (4, False)
    images, _, idx = next(iter(s.evaluator.make_loader(s.planned.shift_data.test, transform, 3)))
    assert images.shape == (3, 8, 3, 32, 32)
    plain, _, _ = next(iter(s.evaluator.make_loader(s.planned.shift_data.test, s.backbone.preprocess, 3)))
    assert torch.equal(images[:, 0], plain)  # view 0 is the eval transform of the image
    assert not torch.allclose(images[:, 1], plain)
    out = m.predict(images)
    assert out.shape == (3, 10)
    for b in range(3):
        votes, _ = zero_votes(encode_images(s.backbone, images[b]) @ m.text.T, s.backbone.logit_scale, 0.5, 2 ** -10)
        assert torch.allclose(out[b], votes / 4)
    for total in out.sum(1).tolist():  # vote fractions, +1/4 for the class a tie-break chose
        assert total == pytest.approx(1.0, abs=1e-5) or total == pytest.approx(1.25, abs=1e-5)
    assert m.info()["decided_by"]["votes"] + m.info()["decided_by"]["tie: discarded view"] \
        + m.info()["decided_by"]["tie: fallback"] == 3
    m.reset()
    assert sum(m.info()["decided_by"].values()) == 0
    for bad in ({"views": "3"}, {"views": "4", "gamma": "1.0"}):  # no kept view / no discarded view
        with pytest.raises(UeobenchError, match="between 1 and views - 1"):
            session(bad)


def test_cli_end_to_end_episodic_and_seeded_rerun_identical(cli):
    args = ("run", "--method", "zero", "--protocol", "oda", "--domain", "real", "--dataset", "shapes",
            "--backbone", TINY, "--set", "views=4", "--set", "gamma=0.5", "--score", "maxlogit")
    r = cli(*args)
    assert r.exit_code == 0, r.output
    [d] = list(Path("results/runs").iterdir())
    rec = json.loads((d / "record.json").read_text())
    assert rec["evaluation"]["predictions"] == {"test": "pass over the images (batch 4)",
                                                "target": "pass over the images (batch 4)"}
    assert rec["method"]["adaptation"] == "episodic" and rec["trainable_parameters"] == 0
    assert rec["method"]["info"]["kept_views"] == 2
    preds = (d / "predictions.npz").read_bytes()
    z = np.load(d / "predictions.npz")
    for split in ("test", "target"):  # vote fractions of 2 kept views, +1/2 after a tie-break
        logits = z[f"{split}_logits"]
        assert logits.min() >= 0 and logits.max() <= 1.5 + 1e-6
        totals = logits.sum(1)
        assert np.all(np.isclose(totals, 1.0, atol=1e-5) | np.isclose(totals, 1.5, atol=1e-5))
        assert np.allclose(z[f"{split}_scores"], logits.max(1), atol=1e-6)  # maxlogit: the winning share
    assert cli(*args, "--force").exit_code == 0
    assert (d / "predictions.npz").read_bytes() == preds
