"""GDA, TDA, GL-MCM and CLIPN against hand-worked values and restatements of the official formulas."""
from __future__ import annotations

import json
import math
import operator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, make_tiny_clipn

from ueobench.core.errors import UeobenchError
from ueobench.runs.plan import plan_run
from ueobench.runs.request import RunRequest
from ueobench.runs.session import start
from ueobench.scoring.scores import compute_score, softmax
from ueobench.store.records import load_predictions


def session(method: str, options: dict | None = None, backbone: str = TINY, protocol: str = "opda",
            score: str = "mcm", domain: str = "clipart"):
    req = RunRequest(method=method, protocol=protocol, domain=domain, backbone=backbone,
                            options=options or {}, score=score)
    return start(plan_run(req))


def run_dir(results: str = "results", prefix: str = "") -> Path:
    [d] = [p for p in Path(results, "runs").iterdir() if p.name.startswith(prefix)]
    return d


# ------------------------------------------------------------------------------------------------------ GDA


def reference_em(x: np.ndarray, text: np.ndarray, scale: float, alpha: float, iters: int, pooled: bool = False):
    """The unsupervised GDA of methods.md §8, written out per class in float64 numpy; ``pooled``: the covariance
    handed to the shrinkage estimator is the released code's, the scatter of the class-centred features over
    N - 1 (with responsibilities for labels), else the project page's mean of per-class covariances."""
    n, d = x.shape
    k = text.shape[0]
    base = scale * x @ text.T
    gamma = softmax(base, axis=1)
    for _ in range(iters):
        nk = gamma.sum(0)
        mu = np.stack([(gamma[:, c:c + 1] * x).sum(0) / nk[c] for c in range(k)])
        if pooled:
            cov = sum((gamma[:, c:c + 1] * (x - mu[c])).T @ (x - mu[c]) for c in range(k)) / (n - 1)
        else:
            cov = sum(((gamma[:, c:c + 1] * (x - mu[c])).T @ (x - mu[c])) / nk[c] for c in range(k)) / k
        prec = d * np.linalg.pinv((n - 1) * cov + np.trace(cov) * np.eye(d))
        w = prec @ mu.T
        b = np.log(1.0 / k) - 0.5 * np.einsum("kd,de,ke->k", mu, prec, mu)
        gamma = softmax(base + alpha * (x @ w + b), axis=1)
    return w, b


def _gda(alpha: float, iters: int, x: torch.Tensor, text: torch.Tensor, background: bool = False,
         covariance: str = "pooled"):
    from ueobench.method.options import build_options
    from ueobench.method.registry import get_method

    cls = get_method("gda")
    m = cls(build_options(cls, {"alpha": str(alpha), "max_iter": str(iters), "tol": "0",
                                "background": str(background), "covariance": covariance}))
    m.class_names, m.text, m.scale, m.w, m.b, m._info = [str(i) for i in range(len(text))], text, 100.0, None, None, {}
    m.adapt(SimpleNamespace(image_features=lambda: x))
    return m


@pytest.mark.parametrize("covariance", ["pooled", "per_class"])
def test_gda_em_equals_the_per_class_restatement(covariance):
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(60, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    m = _gda(0.1, 4, x, text, covariance=covariance)
    w, b = reference_em(x.double().numpy(), text.double().numpy(), 100.0, 0.1, 4, pooled=covariance == "pooled")
    assert np.allclose(m.w.numpy(), w, rtol=1e-4, atol=1e-4) and np.allclose(m.b.numpy(), b, rtol=1e-4, atol=1e-3)
    expected = (100 * x.double().numpy() @ text.double().numpy().T + 0.1 * (x.double().numpy() @ w + b)) / 100
    assert np.allclose(m.predict_features(x).numpy(), expected, atol=1e-4)
    assert m.info()["em_iterations"] == 4


def test_gda_pooled_covariance_is_the_released_codes_torch_cov_with_labels():
    from ueobench.methods.gda import m_step

    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    labels = torch.arange(50) % 4
    gamma = F.one_hot(labels, 4).double()
    means, cov = m_step(x, gamma, "pooled")
    centred = x - means[labels]  # main_few_shots.py: torch.cov of the class-centred features, over N - 1
    assert torch.allclose(cov, torch.cov(centred.T), atol=1e-12)
    _, per_class = m_step(x, gamma, "per_class")
    assert not torch.allclose(per_class, cov)  # the two readings differ (by N/(N-1) for balanced classes)
    assert torch.allclose(per_class * 50 / 49, cov, atol=0.05)


def test_gda_shrinkage_precision_and_head_by_hand():
    from ueobench.methods.gda import gaussian_head, shrinkage_precision

    cov = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # D · pinv((N − 1)·Σ + tr(Σ)·I) with N = 4: 2 · diag(1/(6 + 3), 1/(3 + 3))
    assert torch.allclose(shrinkage_precision(cov, 4), torch.diag(torch.tensor([2 / 9, 2 / 6], dtype=torch.float64)))
    mu = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    prec = torch.eye(2, dtype=torch.float64)
    w, b = gaussian_head(mu, prec)
    assert torch.equal(w, mu.T)
    assert torch.allclose(b, torch.tensor([math.log(0.5) - 0.5, math.log(0.5) - 2.0], dtype=torch.float64))


def test_gda_without_iterations_or_weight_is_zero_shot():
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(30, 6, generator=g), dim=-1)
    text = F.normalize(torch.randn(4, 6, generator=g), dim=-1)
    for alpha, iters in ((0.0, 5), (0.3, 0)):
        assert torch.allclose(_gda(alpha, iters, x, text).predict_features(x), x @ text.T, atol=1e-6)


def test_gda_background_component_takes_the_far_samples():
    # two known clusters near their prompts and a third, unknown cluster far from both
    g = torch.Generator().manual_seed(2)
    e = torch.eye(3)
    x = torch.cat([e[0] + 0.05 * torch.randn(20, 3, generator=g), e[1] + 0.05 * torch.randn(20, 3, generator=g),
                   e[2] + 0.05 * torch.randn(20, 3, generator=g)])
    x = F.normalize(x, dim=-1)
    text = F.normalize(torch.tensor([[1.0, 0.1, 0.3], [0.1, 1.0, 0.3]]), dim=-1)
    with_bg = _gda(1.0, 20, x, text, background=True)
    assert with_bg.predict_features(x).shape == (60, 2)
    assert with_bg.info()["background_share"] > 0.2  # most of the unknown third absorbed by the extra Gaussian
    assert _gda(1.0, 20, x, text).info()["background_share"] is None


def test_gda_fits_on_cached_features_and_reports_its_time(cli):
    r = cli("run", "--method", "gda", "--protocol", "opda", "--domain", "clipart", "--backbone", TINY)
    assert r.exit_code == 0, r.output
    rec = json.loads((run_dir() / "record.json").read_text())
    assert rec["evaluation"]["predictions"] == {"test": "cached image features", "target": "cached image features"}
    info = rec["method"]["info"]
    assert info["fit_seconds"] >= 0 and info["em_iterations"] >= 1 and rec["trainable_parameters"] == 0


# ------------------------------------------------------------------------------------------------------ TDA


def reference_tda(feats: np.ndarray, text: np.ndarray, order: list[int], o, scale: float = 100.0):
    """kdiAAA/TDA run_test_tda, restated with dicts and operator.itemgetter as the reference keeps its caches."""
    k = text.shape[0]

    def update(cache, pred, item, cap):
        if pred in cache:
            if len(cache[pred]) < cap:
                cache[pred].append(item)
            elif item[1] < cache[pred][-1][1]:
                cache[pred][-1] = item
            cache[pred] = sorted(cache[pred], key=operator.itemgetter(1))
        else:
            cache[pred] = [item]

    def cache_logits(f, cache, alpha, beta, neg=None):
        keys, vals = [], []
        for c in sorted(cache):
            for item in cache[c]:
                keys.append(item[0])
                vals.append(((item[2] > neg[0]) & (item[2] < neg[1])).astype(float) if neg else np.eye(k)[c])
        return alpha * np.exp(-(beta - beta * (f @ np.array(keys).T))) @ np.array(vals)

    pos, neg, out = {}, {}, {}
    for i in order:
        f = feats[i]
        z = scale * f @ text.T
        p = softmax(z[None], axis=1)[0]
        loss = -(p * np.log(p)).sum()
        pred = int(z.argmax())
        update(pos, pred, [f, loss], o["pos_capacity"])
        if o["low"] < loss / math.log2(k) < o["high"]:
            update(neg, pred, [f, loss, p], o["neg_capacity"])
        final = z.copy()
        if pos:
            final += cache_logits(f, pos, o["pos_alpha"], o["pos_beta"])
        if neg:
            final -= cache_logits(f, neg, o["neg_alpha"], o["neg_beta"], (0.03, 1.0))
        out[i] = final / scale
    return np.stack([out[i] for i in range(len(feats))])


def _tda(feats: torch.Tensor, text: torch.Tensor, seed: int = 0, **opts):
    from ueobench.method.options import build_options
    from ueobench.method.registry import get_method

    cls = get_method("tda")
    m = cls(build_options(cls, {k: str(v) for k, v in opts.items()}))
    m.class_names, m.text, m.scale = [str(i) for i in range(len(text))], text, 100.0
    m._new_caches()
    m.adapt(_ctx(feats, seed))
    return m


def _ctx(feats: torch.Tensor, seed: int) -> SimpleNamespace:
    """What TDA reads of an AdaptContext: the features and the i.i.d. stream order (the session's seeded randperm)."""
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(seed)).tolist()
    return SimpleNamespace(image_features=lambda: feats, seed=seed, stream=None, stream_order=lambda: order)


def test_tda_stream_equals_the_reference_loop():
    g = torch.Generator().manual_seed(3)
    text = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    # features near the prompts, scaled so that some entropies fall in the negative cache's window
    feats = F.normalize(text[torch.randint(0, 4, (40,), generator=g)] + 0.9 * torch.randn(40, 8, generator=g), dim=-1)
    m = _tda(feats, text, seed=5, pos_capacity=2)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(5)).tolist()
    o = {"pos_capacity": 2, "neg_capacity": 2, "pos_alpha": 2.0, "pos_beta": 5.0, "neg_alpha": 0.117,
         "neg_beta": 1.0, "low": 0.2, "high": 0.5}
    expected = reference_tda(feats.double().numpy(), text.double().numpy(), order, o)
    assert m.info()["negative_admitted"] > 0 and m.info()["positive_entries"] == 8
    assert np.allclose(m.online_predictions(), expected, atol=1e-5)
    # the test split: the caches after the stream, frozen
    before = [list(v) for v in m.pos.entries.values()]
    m.predict_features(feats[:5])
    assert [list(v) for v in m.pos.entries.values()] == before


def test_tda_cache_keeps_the_lowest_entropies_sorted():
    from ueobench.methods.tda import Cache

    c = Cache(3)
    for h in (0.5, 0.2, 0.9, 0.1, 0.95, 0.3):
        c.update(0, (torch.zeros(1), h))
    assert [e[1] for e in c.entries[0]] == [0.1, 0.2, 0.3]  # 0.9 replaced by 0.1, 0.5 by 0.3; 0.95 never admitted


def test_tda_scale_option_sets_the_logit_scale_of_the_stream():
    g = torch.Generator().manual_seed(4)
    text = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    feats = F.normalize(text[torch.randint(0, 4, (30,), generator=g)] + 0.9 * torch.randn(30, 8, generator=g), dim=-1)
    order = torch.randperm(30, generator=torch.Generator().manual_seed(5)).tolist()
    o = {"pos_capacity": 3, "neg_capacity": 2, "pos_alpha": 2.0, "pos_beta": 5.0, "neg_alpha": 0.117,
         "neg_beta": 1.0, "low": 0.2, "high": 0.5}
    for scale in (22.0, 100.0):
        m = _tda(feats, text, seed=5, scale=scale)  # the option is what setup uses instead of the backbone's
        assert m.options.scale == scale
        m.scale = scale
        m._new_caches()
        m.adapt(_ctx(feats, 5))
        expected = reference_tda(feats.double().numpy(), text.double().numpy(), order, o, scale=scale)
        assert np.allclose(m.online_predictions(), expected, atol=1e-5), scale


def test_tda_entropy_normalisation_option_moves_the_window():
    # two classes and one image whose zero-shot probabilities are (0.87, 0.13): H = 0.386 nats, which is inside
    # (0.2, 0.5) divided by log2(2) = 1 (the reference) and outside divided by ln(2) = 0.693
    p = 0.87
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert 0.2 < h / math.log2(2) < 0.5 < h / math.log(2)
    cos_other = 1 - math.log(p / (1 - p)) / 100  # 100 · (1 − cos θ) = logit gap
    f = torch.tensor([[1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [cos_other, math.sqrt(1 - cos_other ** 2)]])
    assert abs(float(torch.softmax(100 * f @ text.T, 1)[0, 0]) - p) < 1e-4
    assert _tda(f, text, entropy_norm="log2").info()["negative_admitted"] == 1
    assert _tda(f, text, entropy_norm="ln").info()["negative_admitted"] == 0


def test_tda_reports_online_outputs_and_frozen_caches_on_test(cli):
    r = cli("run", "--method", "tda", "--protocol", "oda", "--domain", "clipart", "--backbone", TINY)
    assert r.exit_code == 0, r.output
    rec = json.loads((run_dir() / "record.json").read_text())
    assert rec["evaluation"]["predictions"] == {"test": "cached image features",
                                                "target": "online outputs while adapting"}
    assert rec["method"]["adaptation"] == "online"


# --------------------------------------------------------------------------------------------------- GL-MCM


def test_local_features_restate_the_reference_value_path():
    from ueobench.models.backbones import load_backbone
    from ueobench.models.clip_ops import encode_local

    bb = load_backbone(TINY)
    visual = bb.model.visual
    images = torch.randn(2, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = encode_local(bb, images)
        # the reference, by hand: all blocks but the last; then q, k, v = in_proj(ln_1(x)) split in three, each
        # through out_proj; v += x; v = v + mlp(ln_2(v)); ln_post; drop the class token; @ proj
        x = visual._embeds(images)
        for blk in visual.transformer.resblocks[:-1]:
            x = blk(x)
        blk = visual.transformer.resblocks[-1]
        y = F.linear(blk.ln_1(x), blk.attn.in_proj_weight, blk.attn.in_proj_bias)
        width = x.shape[-1]
        v = F.linear(y[..., 2 * width:], blk.attn.out_proj.weight, blk.attn.out_proj.bias) + x
        v = v + blk.mlp(blk.ln_2(v))
        want = F.normalize(visual.ln_post(v)[:, 1:] @ visual.proj, dim=-1)
    grid = (bb.image_size // visual.conv1.kernel_size[0]) ** 2
    assert got.shape == (2, grid, want.shape[-1])
    assert torch.allclose(got, want, atol=1e-5)


def test_resnet_local_features_restate_the_reference_attention_pool_value_path():
    from ueobench.models.backbones import load_backbone
    from ueobench.models.clip_ops import encode_local, local_features_unsupported

    bb = load_backbone("tiny-rn:random")
    assert local_features_unsupported(bb) is None
    visual = bb.model.visual
    images = torch.randn(2, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = encode_local(bb, images)
        # the reference (GL-MCM clip/model.py AttentionPool2d), by hand: the stem and the four stages, then each
        # position of the last map through v_proj and c_proj; no positional embedding, no attention
        x = visual.stem(images) if hasattr(visual, "stem") else None
        if x is None:
            x = images
            for conv, bn, act in ((visual.conv1, visual.bn1, visual.act1), (visual.conv2, visual.bn2, visual.act2),
                                  (visual.conv3, visual.bn3, visual.act3)):
                x = act(bn(conv(x)))
            x = visual.avgpool(x)
        for stage in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = stage(x)
        pool = visual.attnpool
        local = x.permute(0, 2, 3, 1)
        local = F.linear(F.linear(local, pool.v_proj.weight, pool.v_proj.bias), pool.c_proj.weight, pool.c_proj.bias)
        want = F.normalize(local.reshape(2, -1, local.shape[-1]), dim=-1)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)


def test_glmcm_score_by_hand():
    from ueobench.scoring.scores import canonical_score

    cos = np.array([[0.3, 0.1], [0.2, 0.2]])
    local = np.array([0.9, 0.5])
    mcm = softmax(cos, axis=1).max(1)
    assert np.allclose(compute_score("glmcm", cos, 100.0, {"local_mcm": local}), mcm + local)
    assert np.allclose(compute_score("glmcm:0.5", cos, 100.0, {"local_mcm": local}), mcm + 0.5 * local)
    assert canonical_score("glmcm:1") == "glmcm" and canonical_score("glmcm:0.50") == "glmcm:0.5"
    for bad in ("glmcm:x", "glmcm:-1", "mcm:2"):
        with pytest.raises(UeobenchError):
            canonical_score(bad)
    assert np.allclose(compute_score("lmcm", cos, 100.0, {"local_mcm": local}), local)
    with pytest.raises(Exception, match="glmcm"):
        compute_score("glmcm", cos, 100.0)


def test_glmcm_local_term_is_max_over_patches_and_classes_with_the_method_classifier():
    s = session("zeroshot", score="glmcm")
    ev = s.evaluator
    extras = ev.extras("test")["local_mcm"]
    local = torch.from_numpy(s.features.features([e.ref for e in s.planned.shift_data.domain.test], "local")).float()
    cos = local @ s.method.text.T  # [N, P, K]
    assert np.allclose(extras, torch.softmax(cos, -1).amax((1, 2)).numpy(), atol=1e-3)  # fp16 storage
    assert s.features.stats["images_encoded"] > 0
    encoded = s.features.stats["images_encoded"]
    ev.extras("test")  # from memory now
    assert s.features.stats["images_encoded"] == encoded


def test_glmcm_from_the_cli_saved_runs_and_refusals(cli):
    base = ("--protocol", "opda", "--domain", "clipart", "--backbone", TINY)
    assert cli("run", "--method", "zeroshot", *base, "--score", "glmcm").exit_code == 0
    assert cli("run", "--method", "zeroshot", *base).exit_code == 0  # an MCM run of the same configuration
    assert cli("run", "--method", "gda", *base).exit_code == 0
    preds = [load_predictions(p) for p in Path("results/runs").glob("zeroshot*")]
    assert len(preds) == 2 and sum("test_local_mcm" in p and "target_local_mcm" in p for p in preds) == 1
    r = cli("table", "--score", "glmcm", "--metric", "auroc")  # gda saved no local features: say how to
    assert r.exit_code != 0 and "--score glmcm" in r.output and "ViT" in r.output and "Traceback" not in r.output
    r = cli("table", "--score", "glmcm", "--metric", "auroc", "--method", "zeroshot")
    assert r.exit_code == 0 and "score glmcm" in r.output and "recomputed" not in r.output, r.output  # its own run
    glmcm_run = next(p for p in Path("results/runs").glob("zeroshot*") if "test_local_mcm" in load_predictions(p))
    auroc = json.loads((glmcm_run / "record.json").read_text())["metrics"]["test"]["auroc"]
    assert f"{100 * auroc:.1f}" in r.output  # the GL-MCM run stands for the configuration, not the MCM one
    r = cli("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "clipart", "--backbone", "tiny-rn:random",
            "--score", "glmcm:0.5", "--json")  # CLIP ResNets have local features too (the attention pool's values)
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output)
    assert rec["config"]["score"] == "glmcm:0.5" and "test_local_mcm" in load_predictions(run_dir(prefix=rec["run_id"]))


# ---------------------------------------------------------------------------------------------------- CLIPN


def test_clipn_rules_by_hand():
    cos = np.array([[0.30, 0.20]])
    no = np.array([[0.29, 0.25]])
    p_yes = np.array([1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(5.0))])  # softmax over (100 cos, 100 no)
    assert np.allclose(compute_score("ctw", cos, 50.0, {"no_cos": no}), p_yes[0])
    w = np.exp([30.0, 20.0]) / np.exp([30.0, 20.0]).sum()  # CLIPN's fixed scale 100, not the model's 50
    assert np.allclose(compute_score("atd", cos, 50.0, {"no_cos": no}), (p_yes * w).sum())
    # the predicted class, not the class with the largest p_yes, decides CTW
    assert np.allclose(compute_score("ctw", np.array([[0.30, 0.29]]), 100.0, {"no_cos": np.array([[0.35, 0.0]])}),
                       1 / (1 + math.exp(5.0)))


def test_clipn_checkpoint_in_the_official_layout_loads(tmp_path):
    from ueobench.models.backbones import load_backbone

    bb = load_backbone(f"tiny-vit:{make_tiny_clipn(tmp_path / 'same.pt', same_as_yes=True)}")
    tokens = bb.tokenizer(["a photo of a bike.", "graffiti of the cup."])
    with torch.no_grad():  # a "no" tower equal to the ordinary one, with zero prompts, encodes identically
        assert torch.allclose(bb.no_text(tokens), bb.model.encode_text(tokens), atol=1e-5)
    assert bb.info["clipn_no_encoder"] is True
    other = load_backbone(f"tiny-vit:{make_tiny_clipn(tmp_path / 'other.pt')}")
    with torch.no_grad():
        x = other.no_text.token_embedding(tokens) + other.no_text.positional_embedding
        x = x + other.no_text.prompt_no.mean(0, keepdim=True)  # the mean of the 16 "no" prompts at inference
        x = other.no_text.ln_final(other.no_text.transformer(x, attn_mask=other.no_text.attn_mask))
        want = x[torch.arange(2), tokens.argmax(-1)] @ other.no_text.text_projection
        assert torch.allclose(other.no_text(tokens), want, atol=1e-6)
        assert not torch.allclose(other.no_text(tokens), other.model.encode_text(tokens), atol=1e-3)
    state = torch.load(tmp_path / "other.pt", weights_only=True)["state_dict"]
    assert torch.equal(other.no_text.prompt_no, state["module.prompt_no"])
    assert torch.equal(other.no_text.transformer.resblocks[0].attn.in_proj_weight,
                       state["module.transformer_no.resblocks.0.attn.in_proj_weight"])


def test_clipn_class_features_are_normalised_template_sums(tiny_clipn):
    from ueobench.methods.clipn import reference_templates

    s = session("clipn", {"prompts": "reference"}, backbone=tiny_clipn)
    bb, names = s.backbone, s.planned.shift_data.known_names
    templates = reference_templates()
    assert len(templates) == 128 and templates[0] == "'a bad photo of a {}.'" and templates[34].endswith("',")
    with torch.no_grad():
        total = sum(F.normalize(bb.no_text(bb.tokenizer([t.format(n.replace("_", " ")) for n in names])), dim=-1)
                    for t in templates)
    assert torch.allclose(s.method.no, F.normalize(total, dim=-1), atol=1e-5)


def test_clipn_end_to_end_both_rules_and_refusals(cli, tiny_clipn):
    base = ("--protocol", "opda", "--domain", "clipart")
    r = cli("run", "--method", "clipn", *base, "--backbone", tiny_clipn, "--score", "atd", "--set", "prompts=dataset")
    assert r.exit_code == 0, r.output
    d = run_dir()
    preds = load_predictions(d)
    assert preds["test_no_cos"].shape == preds["test_logits"].shape
    rec = json.loads((d / "record.json").read_text())
    want = compute_score("atd", preds["test_logits"], 100.0, {"no_cos": preds["test_no_cos"]})
    assert np.allclose(preds["test_scores"], want, atol=1e-6)
    r = cli("table", "--score", "ctw", "--metric", "auroc")
    assert r.exit_code == 0 and "recomputed with score ctw" in r.output
    assert rec["backbone"]["clipn_no_encoder"] is True
    r = cli("run", "--method", "clipn", *base, "--backbone", TINY)
    assert r.exit_code != 0 and "CLIPN checkpoint" in r.output and "Traceback" not in r.output
    r = cli("run", "--method", "zeroshot", *base, "--backbone", TINY, "--score", "ctw")
    assert r.exit_code != 0 and "clipn" in r.output
    assert not list(Path("results/failed").glob("zeroshot*"))  # refused while planning: nothing ran
