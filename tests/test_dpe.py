"""DPE against a transcription of the official loop (zhangce01/DPE-CLIP main_dpe.py run_test_dpe, utils.py
get_clip_logits / avg_entropy, info-nce-pytorch 0.1.4), on tiny random features, and end to end from the CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

# ------------------------------------------------------------------------------- the official computation
# Restated from the reference on precomputed, L2-normalised view features (row 0 = the plain image): fp32/fp64
# instead of its fp16 autocast, the scale a parameter instead of its hard-coded 100.


def ref_avg_entropy(logits):
    lp = logits - logits.logsumexp(dim=-1, keepdim=True)
    avg = lp.logsumexp(dim=0) - math.log(lp.shape[0])
    avg = torch.clamp(avg, min=torch.finfo(avg.dtype).min)
    return -(avg * torch.exp(avg)).sum(dim=-1)


def ref_clip_logits(f, w, scale, select=0.1):
    z = scale * f @ w
    if f.shape[0] > 1:
        ent = -(z.softmax(1) * z.log_softmax(1)).sum(1)
        idx = torch.argsort(ent, descending=False)[: int(ent.shape[0] * select)]
        out = z[idx]
        return f[idx].mean(0).unsqueeze(0), out.mean(0).unsqueeze(0), ref_avg_entropy(out), int(out.mean(0).argmax())
    return f, z, -(z.softmax(1) * z.log_softmax(1)).sum(1), int(z.argmax(1)[0])


def ref_update_cache(cache, pred, item, capacity):
    if pred in cache:
        if len(cache[pred]) < capacity:
            cache[pred].append(item)
        elif item[1] < cache[pred][-1][1]:
            cache[pred][-1] = item
        cache[pred] = sorted(cache[pred], key=lambda e: e[1])
    else:
        cache[pred] = [item]


def ref_cache_key_value(cache, k):
    keys, classes = [], []
    for c in sorted(cache):
        proto = torch.zeros_like(cache[c][0][0])
        for item in cache[c]:
            proto = proto + item[0] / len(cache[c])
        keys.append(proto)
        classes.append(c)
    keys = torch.cat(keys, 0).T
    return keys, F.one_hot(torch.tensor(classes), num_classes=k).to(keys.dtype), classes


def ref_cache_logits(f, keys, values, alpha, beta):
    return alpha * ((-1) * (beta - beta * (f @ keys))).exp() @ values


def ref_info_nce(query, positive, temperature=0.01):
    q, p = F.normalize(query, dim=-1), F.normalize(positive, dim=-1)
    return F.cross_entropy(q @ p.T / temperature, torch.arange(len(q)), reduction="mean")


def ref_dpe(stream, text, *, alpha=6.0, beta=5.0, lr_text=6e-4, lr_image=6e-4, align=0.5, shot_capacity=3,
            scale=100.0, steps=1, all_views=False):
    w_global, num_avg, cache = text.T.clone(), 0, {}
    k = text.shape[0]
    max_ent = math.log2(k)
    outputs = []
    for f in stream:
        w_local = w_global.clone().detach()
        r_t = torch.zeros_like(w_local, requires_grad=True)
        feat, z, ent, pred = ref_clip_logits(f, F.normalize(w_local + r_t, dim=0), scale)
        ref_update_cache(cache, pred, [feat.detach(), float(ent.detach() / max_ent)], shot_capacity)
        keys, values, classes = ref_cache_key_value(cache, k)
        r_v = torch.zeros_like(keys, requires_grad=True)
        for j in range(steps):
            w_new = F.normalize(w_local + r_t, dim=0)
            k_new = F.normalize(keys + r_v, dim=0)
            final = z.clone() + ref_cache_logits(feat, k_new, values, alpha, beta)
            loss = ref_avg_entropy(final) + align * ref_info_nce(k_new.T, w_new[:, classes].T)
            opt = torch.optim.AdamW([{"params": [r_t], "lr": lr_text, "eps": 1e-3, "weight_decay": 1e-1},
                                     {"params": [r_v], "lr": lr_image, "eps": 1e-3, "weight_decay": 1e-1}])
            opt.zero_grad()
            loss.backward(retain_graph=j < steps - 1)
            opt.step()
        with torch.no_grad():
            w_new = F.normalize(w_local + r_t, dim=0)
            feat2, z2, _, _ = ref_clip_logits(f if all_views else f[0:1], w_new, scale)
            out = z2 + ref_cache_logits(feat2, F.normalize(keys + r_v, dim=0), values, alpha, beta)
            outputs.append(out[0].clone())
            if float(ref_avg_entropy(out) / max_ent) < 0.1:
                num_avg += 1
                w_global = w_global * (num_avg / (num_avg + 1)) + w_new * (1 / (num_avg + 1))
    return torch.stack(outputs), {"w_global": w_global, "num_avg": num_avg, "cache": cache}


def ref_final_state(features, state, alpha=6.0, beta=5.0, scale=100.0):
    """The final-state predictor with zero residuals (spec §A6), at the scale, for features [B, D]."""
    keys, values, _ = ref_cache_key_value(state["cache"], state["w_global"].shape[1])
    return (scale * features @ F.normalize(state["w_global"], dim=0)
            + ref_cache_logits(features, F.normalize(keys, dim=0), values, alpha, beta))


# ------------------------------------------------------------------------------------------------ helpers


def make_method(text: torch.Tensor, scale: float = 100.0, **opts):
    from ueobench.method.options import build_options
    from ueobench.method.registry import get_method

    cls = get_method("dpe")
    m = cls(build_options(cls, {k: str(v) for k, v in opts.items()}))
    m.class_names, m.text, m.scale = [str(i) for i in range(len(text))], text, scale
    m._new_state()
    return m


def toy(n=40, k=5, d=16, views=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=-1)
    stream = []
    for i in range(n):
        base = 0.6 * text[i % k] + 0.8 * torch.randn(d, generator=g, dtype=torch.float64)
        v = F.normalize(base[None] + 0.5 * torch.randn(views, d, generator=g, dtype=torch.float64), dim=-1)
        v[0] = F.normalize(base, dim=0)
        stream.append(v)
    return text, stream


@pytest.mark.parametrize("lr,scale,steps", [(6e-4, 100.0, 1), (5e-2, 100.0, 1), (5e-2, 22.0, 1), (2e-2, 100.0, 2)])
def test_stream_equals_the_official_loop_and_final_state(lr, scale, steps):
    text, stream = toy()
    feats = torch.cat(stream)
    m = make_method(text, scale, lr_text=lr, lr_image=lr, steps=steps)
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(7)).tolist()  # the session's iid stream
    m.adapt(SimpleNamespace(image_features=lambda: feats, seed=7, num_adapt=len(feats), stream=None,
                            stream_order=lambda: order))
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(7)).tolist()
    expected, state = ref_dpe([stream[i] for i in order], text, lr_text=lr, lr_image=lr, scale=scale, steps=steps)
    online = torch.from_numpy(m.online_predictions()).double()
    assert torch.allclose(online[order], expected / scale, atol=1e-5, rtol=0)
    # the state moved: text prototypes evolved and some cache entries were replaced
    assert 0 < state["num_avg"] == m.num_avg and m.info()["text_updates"] == m.num_avg
    assert torch.allclose(m.w_global, state["w_global"], atol=1e-10)
    assert sorted(m.cache) == sorted(state["cache"])
    for c, entries in state["cache"].items():
        assert [e[1] for e in m.cache[c]] == pytest.approx([e[1] for e in entries], rel=1e-6, abs=1e-12)
        assert all(torch.allclose(a[0], b[0][0]) for a, b in zip(m.cache[c], entries))
    # the residual step matters (else the test could not see it): outputs differ from the no-step outputs
    frozen, _ = ref_dpe([stream[i] for i in order], text, lr_text=0.0, lr_image=0.0, scale=scale)
    assert (expected - frozen).abs().max() > 1e-3
    # the test split: the final state, zero residuals, no update
    before = (m.num_avg, m.w_global.clone())
    got = m.predict_features(feats[:9])
    assert torch.allclose(got, ref_final_state(feats[:9], state, scale=scale) / scale, atol=1e-10)
    assert m.num_avg == before[0] and torch.equal(m.w_global, before[1])


@pytest.mark.parametrize("all_views", [False, True])
def test_multi_view_step_equals_the_official_imagenet_protocol(all_views):
    text, stream = toy(n=30, views=20, seed=1)
    m = make_method(text, 100.0, lr_text=5e-2, lr_image=5e-2, views=20, predict_all_views=all_views)
    got = torch.stack([m._step(v) for v in stream])  # the per-image step adapt runs on each image's views
    expected, state = ref_dpe(stream, text, lr_text=5e-2, lr_image=5e-2, all_views=all_views)
    assert torch.allclose(got, expected, atol=1e-8)
    assert m.num_avg == state["num_avg"] > 0


def test_cache_keeps_the_lowest_entropies_and_classes_without_entries_have_no_prototype():
    m = make_method(F.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1))
    for h in (0.5, 0.2, 0.9, 0.1, 0.95, 0.3):
        m._remember(2, torch.full((3,), h, dtype=torch.float64), h)
    assert [e[1] for e in m.cache[2]] == [0.1, 0.2, 0.3]
    keys, values, classes = m._prototypes()
    assert classes == [2] and keys.shape == (3, 1) and values.tolist() == [[0, 0, 1, 0]]
    assert torch.allclose(keys[:, 0], torch.full((3,), 0.2, dtype=torch.float64))  # the mean, not normalised


def test_refuses_views_that_keep_none():
    from ueobench.core.errors import UeobenchError

    m = make_method(F.normalize(torch.randn(3, 4), dim=-1), views=5)
    with pytest.raises(UeobenchError, match="keeps no view"):
        m.setup(None, m.class_names, SimpleNamespace(prompt="a {}."))


def test_augmix_views_pass_feeds_the_step_from_the_images():
    from ueobench.runs.plan import plan_run
    from ueobench.runs.request import RunRequest
    from ueobench.runs.session import start

    s = start(plan_run(RunRequest(method="dpe", protocol="oda", domain="real", dataset="shapes", backbone=TINY,
                                  options={"views": "10"})))
    m, ctx = s.method, s.context
    seen = []
    step = m._step
    m._step = lambda v: (seen.append(v), step(v))[1]
    order = torch.randperm(6, generator=torch.Generator().manual_seed(ctx.seed)).tolist()
    small = SimpleNamespace(**{**vars(ctx), "num_adapt": 6, "stream_order": lambda: order})  # the first 6 images
    m.adapt(small)
    assert len(seen) == 6 and all(v.shape == (10, m.text.shape[1]) for v in seen)
    cached = ctx.image_features()
    for i, v in zip(order, seen):  # view 0 is the eval transform of the image: its cached feature
        assert torch.allclose(v[0], cached[i], atol=1e-5)
        assert not torch.allclose(v[1], cached[i], atol=1e-3)  # the others are augmented crops
    online = m.online_predictions()
    assert np.isfinite(online[order]).all() and (np.abs(online[order]).sum(1) > 0).all()


def run_dir() -> Path:
    [d] = list(Path("results/runs").iterdir())
    return d


def test_cli_end_to_end_online_outputs_and_seeded_rerun_identical(cli):
    args = ("run", "--method", "dpe", "--protocol", "oda", "--domain", "real", "--dataset", "shapes",
            "--backbone", TINY, "--set", "lr_text=0.01", "--set", "lr_image=0.01")
    r = cli(*args)
    assert r.exit_code == 0, r.output
    d = run_dir()
    rec = json.loads((d / "record.json").read_text())
    assert rec["evaluation"]["predictions"] == {"test": "cached image features",
                                                "target": "online outputs while adapting"}
    assert rec["method"]["adaptation"] == "online" and rec["trainable_parameters"] == 0
    info = rec["method"]["info"]
    assert info["cache_entries"] >= 1 and info["views"] == 1 and info["stream_order_seed"] == 0
    preds = (d / "predictions.npz").read_bytes()
    assert cli(*args, "--force").exit_code == 0
    assert (d / "predictions.npz").read_bytes() == preds
