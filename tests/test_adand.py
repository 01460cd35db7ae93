"""AdaND (ZS-NTTA) against a restatement of the official ZeroShotNTTA loop (Aboriginer/ZS-NTTA @ 7db30e9:
ttda_method/zs_noisytta.py, zs_clip.py, utils.compute_os_variance, data/build_dataset.py NoiseDataset,
main.py's test loop), on tiny random inputs; then one CLI run with its own score and a seeded rerun."""
from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from ueobench.method.options import build_options
from ueobench.method.registry import get_method

EMBED = 32  # tiny-vit's embedding size

# ------------------------------------------------------------------------ the official computation, restated


def ref_variance(q, th):  # utils.compute_os_variance
    hi = q >= th
    w1 = hi.sum() / q.size
    w0 = 1 - w1
    if w1 == 0 or w0 == 0:
        return np.inf
    return w0 * np.var(q[~hi]) + w1 * np.var(q[hi])


def ref_otsu(queue):
    grid = np.arange(0, 1, 0.01)
    crit = [ref_variance(np.array(queue), th) for th in grid]
    return float(grid[np.argmin(crit)])


class RefAdaND:
    """ZeroShotNTTA.get_unseen_mask / update_detector and main.py's warm-up switch, with a given initial detector."""

    def __init__(self, init, *, lr=5e-4, beta1=0.9, weight_decay=0.0, queue_length=512, ttda_queue_length=64,
                 using_ttda_step=10, batch_size=128, dtype=torch.float64):
        w = init["weight"]
        self.net = torch.nn.Linear(w.shape[1], 2).to(dtype)
        self.net.load_state_dict({k: v.to(dtype) for k, v in init.items()})
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr, betas=(beta1, 0.999), weight_decay=weight_decay)
        self.zs_queue, self.det_queue, self.losses = [], [], []
        self.q = dict(out=deque(maxlen=ttda_queue_length), mask=deque(maxlen=ttda_queue_length),
                      noise=deque(maxlen=ttda_queue_length))
        self.c = dict(queue_length=queue_length, L=ttda_queue_length, warm=using_ttda_step, bs=batch_size)

    def _update(self, out, mask, is_noise):
        mask = mask.clone()
        mask[is_noise] = True
        loss = F.cross_entropy(out, (~mask).long())
        self.opt.zero_grad()
        loss.backward()
        self.losses.append(loss.item())
        self.opt.step()

    def step(self, step, feats, text, scale, is_noise, raw):
        c = self.c
        logits = scale * feats @ text.T
        msp = logits.softmax(1).max(1).values
        zs = 1 - msp
        self.zs_queue = (self.zs_queue + zs.tolist())[-c["queue_length"]:]
        zs_mask = zs > ref_otsu(self.zs_queue)
        with torch.enable_grad():
            out = self.net(raw)
            if c["bs"] == 1:
                self.q["out"].append(out)
                self.q["mask"].append(zs_mask)
                self.q["noise"].append(is_noise)
                if step != 0 and step % c["L"] == 0:
                    self._update(torch.cat(list(self.q["out"])), torch.cat(list(self.q["mask"])),
                                 torch.cat(list(self.q["noise"])))
            else:
                self._update(out, zs_mask, is_noise)
        L = c["L"] if c["bs"] == 1 else c["bs"]
        if step * c["bs"] > c["warm"] * L:
            p = out.detach().softmax(1)
            self.det_queue = (self.det_queue + p[:, 0].tolist())[-c["queue_length"]:]
            return p[:, 0] > ref_otsu(self.det_queue), p[:, 1]
        mask = zs_mask.clone()
        mask[is_noise] = True
        return mask, msp


def ref_noise_images(count, size, mean, std, g):
    """NoiseDataset.__getitem__ (gaussian) with the eval transform at the model's own size (Resize/CenterCrop are
    the identity there): randn, min-max to 255, .byte(), ToPILImage, ToTensor, Normalize."""
    from torchvision import transforms as T

    to_pil, tail = T.ToPILImage(), T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    out = []
    for _ in range(count):
        image = torch.randn(3, size, size, generator=g)
        image = (image - image.min()) / (image.max() - image.min()) * 255
        out.append(tail(to_pil(image.byte())))
    return torch.stack(out)


# -------------------------------------------------------------------------------------------- helpers


def method(dim, seed=0, dtype=torch.float32, text=None, scale=20.0, **opts):
    cls = get_method("adand")
    m = cls(build_options(cls, {k: str(v) for k, v in opts.items()}))
    m.text = text
    m.scale = scale
    m.build_detector(dim, seed, torch.device("cpu"), dtype)
    return m


def init_state(m):
    return {k: v.detach().clone() for k, v in m.detector.state_dict().items()}


def random_stream(n, d, k, seed, noise_share=0.11, norm=10.0):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=-1)
    raw = norm * (text[torch.randint(0, k, (n,), generator=g)] + 0.8 * torch.randn(n, d, generator=g,
                                                                                      dtype=torch.float64))
    raw = raw * (1 + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64))  # norms that vary
    injected = torch.rand(n, generator=g) < noise_share
    return text, raw, F.normalize(raw, dim=-1), injected


# ---------------------------------------------------------------------------------------------- tests


def test_otsu_threshold_equals_the_reference_with_its_quirks():
    from ueobench.methods.adand import otsu_threshold

    g = np.random.default_rng(0)
    for trial in range(30):
        q = list(g.beta(0.5, 2.0, size=g.integers(1, 80)))
        if trial % 3 == 0:
            q += [0.07, 0.5, 0.5, 0.99]  # values on the grid: classes use >=, not >
        assert otsu_threshold(q) == ref_otsu(q)
    assert otsu_threshold([0.3] * 10) == 0.0  # nothing splits: every criterion inf, first grid value
    assert otsu_threshold([0.2, 0.2, 0.8, 0.8]) == ref_otsu([0.2, 0.2, 0.8, 0.8]) == 0.21  # the first minimum


def test_detector_init_is_nn_linear_default_from_its_seed():
    m = method(16, seed=3)
    torch.manual_seed(3 + 2)
    ref = torch.nn.Linear(16, 2)
    assert torch.allclose(m.detector.weight, ref.weight, atol=1e-7) and torch.equal(m.detector.bias, ref.bias)


@pytest.mark.parametrize("bs,batches,extra", [(8, 30, {"queue_length": 50, "warmup_steps": 10}),
                                              (1, 130, {"queue_length": 30, "warmup_steps": 2,
                                                        "bs1_queue_length": 16})])
def test_detector_updates_decisions_and_scores_equal_the_reference(bs, batches, extra):
    from ueobench.methods.adand import DetectorStream

    n, d, k = bs * batches - (3 if bs > 1 else 0), 12, 5  # the last batch is smaller
    text, raw, feats, injected = random_stream(n, d, k, seed=bs)
    m = method(d, seed=1, dtype=torch.float64, text=text, batch_size=bs, **extra)
    ref = RefAdaND(init_state(m), batch_size=bs, queue_length=extra["queue_length"],
                   using_ttda_step=extra["warmup_steps"], ttda_queue_length=extra.get("bs1_queue_length", 64))
    st = DetectorStream(m.detector, text, 20.0, m.options)
    detector_used = 0
    for step, i in enumerate(range(0, n, bs)):
        sl = slice(i, i + bs)
        got_mask, got_score = st.step(step, feats[sl], raw[sl], injected[sl])
        want_mask, want_score = ref.step(step, feats[sl], text, 20.0, injected[sl], raw[sl])
        assert torch.equal(got_mask, want_mask), step
        assert torch.allclose(got_score, want_score, rtol=0, atol=1e-12), step
        for (name, a), b in zip(m.detector.state_dict().items(), ref.net.state_dict().values()):
            assert torch.allclose(a, b, rtol=0, atol=1e-12), (step, name)
        detector_used += not st.warm(step)
    assert np.allclose(st.losses, ref.losses, rtol=0, atol=1e-12) and len(st.losses) >= (batches // 16 if bs == 1 else batches)
    assert detector_used > 0 and st.det_queue == pytest.approx(ref.det_queue, abs=1e-12)
    assert st.zs_queue == ref.zs_queue and len(st.zs_queue) == extra["queue_length"]


def test_pseudo_noise_images_are_the_official_noise_at_the_model_size():
    from ueobench.methods.adand import pseudo_noise_images

    mean, std = (0.48, 0.45, 0.40), (0.27, 0.26, 0.28)
    got = pseudo_noise_images(5, 8, mean, std, torch.Generator().manual_seed(7))
    want = ref_noise_images(5, 8, mean, std, torch.Generator().manual_seed(7))
    assert torch.allclose(got, want, rtol=0, atol=1e-6)


class FakeModel(torch.nn.Module):
    def __init__(self, proj):
        super().__init__()
        self.proj = proj

    def encode_image(self, x):
        return x.flatten(1) @ self.proj


def test_adapt_streams_real_and_injected_images_and_scores_as_the_reference():
    """The whole adapt: unnormalised embeddings from the loader pass, injected noise from seed + 1, the seeded
    order over both, the online score in adaptation order (MSP in warm-up, p_clean after), the final detector."""
    seed, n, k, size, d, bs = 4, 120, 5, 4, 8, 8
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(3 * size * size, d, generator=g)
    images = torch.randn(n, 3, size, size, generator=g)
    text = F.normalize(torch.randn(k, d, generator=g), dim=-1)
    bb = SimpleNamespace(model=FakeModel(proj), image_size=size, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                         device=torch.device("cpu"))

    def make_loader(transform=None, batch_size=64, shuffle=True, indices=None, drop_last=False):
        assert not shuffle and transform == "eval"
        starts = list(range(0, n, batch_size))[::-1]  # any order: rows are placed by index
        return [(images[i:i + batch_size], torch.arange(i, min(i + batch_size, n))) for i in starts]

    raw = images.flatten(1) @ proj
    ctx = SimpleNamespace(seed=seed, num_adapt=n, make_loader=make_loader, eval_transform="eval", amp_dtype=None,
                          image_features=lambda: F.normalize(raw, dim=-1))
    opts = dict(batch_size=bs, queue_length=40, warmup_steps=3)
    m = method(d, seed=seed, text=text, **opts)
    m.backbone = bb
    init = init_state(m)
    m.adapt(ctx)

    # the reference stream, built independently
    n_noise = int(n * 0.125)
    noise_raw = ref_noise_images(n_noise, size, bb.mean, bb.std, torch.Generator().manual_seed(seed + 1)).flatten(1) @ proj
    all_raw = torch.cat([raw, noise_raw])
    all_feats = F.normalize(all_raw, dim=-1)
    injected = torch.arange(n + n_noise) >= n
    order = torch.randperm(n + n_noise, generator=torch.Generator().manual_seed(seed))
    ref = RefAdaND(init, batch_size=bs, queue_length=40, using_ttda_step=3, dtype=torch.float32)
    want = np.full(n, np.nan)
    for step, i in enumerate(range(0, n + n_noise, bs)):
        idx = order[i:i + bs]
        _, score = ref.step(step, all_feats[idx], text, 20.0, injected[idx], all_raw[idx])
        real = ~injected[idx]
        want[idx[real].numpy()] = score[real].numpy()
    got = m.online_extra_outputs()["own_score"]
    assert not np.isnan(want).any() and np.allclose(got, want, rtol=0, atol=1e-5)
    for a, b in zip(m.detector.state_dict().values(), ref.net.state_dict().values()):
        assert torch.allclose(a, b, rtol=0, atol=1e-5)
    info = m.info()
    assert (info["n_injected"], info["batches"], info["adam_steps"], info["warmup_batches"]) == (15, 17, 17, 4)
    # classification: zero-shot, unchanged
    assert np.allclose(m.online_predictions(), (F.normalize(raw, dim=-1) @ text.T).numpy(), atol=1e-6)
    # the test split from unit features: the final detector on f times the mean raw norm of the adaptation images
    f = F.normalize(torch.randn(6, d, generator=g), dim=-1)
    r = raw.norm(dim=-1).double().mean().item()
    expected = ref.net(f * r).softmax(1)[:, 1]
    assert torch.allclose(m.extra_outputs(f)["own_score"], expected, atol=1e-5)
    # reset: the initial detector and nothing streamed
    m._initial_state = [(p, init[name].clone()) for name, p in m.detector.named_parameters()]
    m.reset()
    assert torch.equal(m.detector.weight, init["weight"]) and m.online_extra_outputs() is None
    assert torch.allclose(m.extra_outputs(f)["own_score"], (20.0 * f @ text.T).softmax(1).max(1).values)


def test_cli_run_with_its_own_score_reruns_identically(cli):
    args = ("run", "--method", "adand", "--protocol", "oda", "--domain", "real", "--backbone", TINY,
            "--score", "own", "--set", "batch_size=16")
    r = cli(*args)
    assert r.exit_code == 0, r.output
    [d] = list(Path("results/runs").iterdir())
    rec = json.loads((d / "record.json").read_text())
    assert rec["evaluation"]["predictions"] == {"test": "cached image features",
                                                "target": "online outputs while adapting"}
    info = rec["method"]["info"]
    assert info["warmup_batches"] == 11 and info["batches"] > 11 and info["detector_scores_test"]
    assert rec["trainable_parameters"] == 2 * EMBED + 2  # the detector only
    z = np.load(d / "predictions.npz")
    assert np.array_equal(z["target_scores"], z["target_own_score"])
    assert np.array_equal(z["test_scores"], z["test_own_score"]) and len(z["test_own_score"]) == len(z["test_labels"])
    assert ((z["target_own_score"] >= 0) & (z["target_own_score"] <= 1)).all()
    preds = (d / "predictions.npz").read_bytes()
    assert cli(*args, "--force").exit_code == 0
    assert (d / "predictions.npz").read_bytes() == preds  # a seeded rerun is identical
    # classification is zero-shot's
    assert cli("run", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone", TINY).exit_code == 0
    [zs] = [p for p in Path("results/runs").iterdir() if p.name.startswith("zeroshot")]
    zz = np.load(zs / "predictions.npz")
    assert np.array_equal(zz["test_logits"], z["test_logits"])
    assert np.allclose(zz["target_logits"], z["target_logits"], atol=1e-6)
