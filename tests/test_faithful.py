"""Baselines as their authors ran them: TENT online on BatchNorm, TENT's entropy, POUF's view, UPL's Dassl
schedule and loader, UPL's 16-prompt ensemble, TPT's AugMix views of the original image."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY
from ueobench.runs.plan import plan_run
from ueobench.runs.request import RunRequest
from ueobench.runs.session import start
from ueobench.method.options import build_options
from ueobench.method.registry import get_method

RN = "tiny-rn:random"


def session(method: str, options: dict, backbone: str = TINY, protocol: str = "opda", domain: str = "clipart",
            seed: int = 0):
    req = RunRequest(method=method, protocol=protocol, domain=domain, backbone=backbone, options=options, seed=seed)
    return start(plan_run(req))


# ---------------------------------------------------------------------------------------------------- TENT


def test_tent_entropy_is_the_reference_formula_without_epsilon():
    from ueobench.adapt.losses import entropy_from_logits

    z = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [50.0, -50.0, 0.0]])
    p = torch.softmax(z, 1)
    expected = -(p * torch.log_softmax(z, 1)).sum(1)
    assert torch.allclose(entropy_from_logits(z), expected)
    assert math.isclose(float(entropy_from_logits(z)[1]), math.log(3), rel_tol=1e-6)
    # with UEO's epsilon inside the log the value differs measurably for peaked rows; TENT's has none
    s = session("tent", {"epochs": "1"}, RN)
    images, idx = next(iter(s.context.make_loader(batch_size=8, shuffle=False)))
    with torch.no_grad():
        loss = s.method.step_loss(images, idx)
        cos = s.method.cosine(images).float()
    assert torch.allclose(loss, entropy_from_logits(s.method.scale() * cos).mean(), atol=1e-6)


def test_tent_target_predictions_are_the_online_pre_update_outputs():
    s = session("tent", {"epochs": "1", "batch_size": "32"}, RN)
    m = s.method
    seen = []
    original = m.step_loss

    def spy(images, idx):
        with torch.no_grad():  # what the model predicts for this batch before its update
            seen.append((idx.clone(), m.cosine(images).float().clone()))
        return original(images, idx)

    m.step_loss = spy
    m.adapt(s.context)
    online = m.online_predictions()
    assert online.shape == (s.context.num_adapt, 10)
    order = torch.cat([i for i, _ in seen])
    assert not torch.equal(order, torch.arange(len(order)))  # a shuffled stream, not list order
    assert sorted(order.tolist()) == list(range(s.context.num_adapt))  # every image once
    for idx, cos in seen:
        assert np.allclose(online[idx.numpy()], cos.numpy(), atol=1e-5)
    metrics, arrays = s.evaluate_splits()
    assert np.allclose(arrays["target_logits"], online)
    assert s.evaluator.paths["target"] == "online outputs while adapting"


def test_tent_test_split_uses_shuffled_batches_mapped_back():
    s = session("tent", {"epochs": "1", "batch_size": "16"}, RN)
    s.method.adapt(s.context)
    seen = []
    original = s.method.predict

    def spy(images):
        out = original(images)
        seen.append((images.clone(), out.clone()))
        return out

    s.method.predict = spy
    cos, labels = s.evaluator.logits("test")
    assert all(len(images) <= 16 for images, _ in seen) and len(seen) == math.ceil(len(labels) / 16)
    # the first batch is a seeded shuffle of the class-sorted list: it mixes classes
    loader = s.evaluator.make_loader(s.planned.shift_data.test, s.backbone.preprocess, 16, shuffle=True)
    _, first_labels, first_idx = next(iter(loader))
    assert len(set(first_labels.tolist())) > 1
    assert np.allclose(cos[first_idx.numpy()], seen[0][1].numpy(), atol=1e-6)  # mapped back to list order
    assert s.evaluator.paths["test"].endswith("seeded shuffle)")


def test_tent_metrics_do_not_depend_on_list_order_beyond_shuffle_noise():
    """Predictions on a class-sorted list and on the same list reversed come from seeded shuffles of the same
    images; batch statistics no longer come from one class at a time, so the accuracy agrees within the spread
    that different shuffles (seeds) give."""
    def acc(seed: int, reverse: bool) -> float:
        req = RunRequest(method="tent", protocol="opda", domain="clipart", backbone=RN, seed=seed,
                                options={"epochs": "1", "batch_size": "16"})
        planned = plan_run(req)
        if reverse:
            planned.shift_data.test = list(reversed(planned.shift_data.test))
        s = start(planned)
        torch.manual_seed(0)  # the same weights for every seed: only the batch composition differs
        for p in s.backbone.model.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)
        cos, labels = s.evaluator.logits("test")
        k = labels < 10
        return float((cos.argmax(1)[k] == labels[k]).mean())

    shuffles = [acc(seed, False) for seed in range(3)]
    spread = max(shuffles) - min(shuffles)
    assert abs(acc(0, True) - np.mean(shuffles)) <= spread + 0.05


# ---------------------------------------------------------------------------------------------------- POUF


def test_pouf_view_is_a_square_resize_then_a_bilinear_crop():
    from torchvision import transforms as T

    s = session("pouf", {"epochs": "1", "iters_per_epoch": "1"})
    spec = s.method.train_spec(s.context)
    steps = spec.transform.transforms
    assert isinstance(steps[0], T.Resize) and tuple(steps[0].size) == (round(32 * 256 / 224),) * 2  # square, aspect not kept
    assert steps[0].interpolation == T.InterpolationMode.BICUBIC
    assert isinstance(steps[1], T.RandomResizedCrop) and steps[1].interpolation == T.InterpolationMode.BILINEAR
    assert steps[1].scale == (0.08, 1.0) and isinstance(steps[2], T.RandomHorizontalFlip)
    out = spec.transform(Image.new("RGB", (100, 40), (200, 10, 10)))
    assert out.shape == (3, 32, 32)
    assert spec.schedule(0, 1) == 1.0 and math.isclose(spec.schedule(1000, 1), 1.2 ** -0.75)
    assert spec.drop_last and spec.momentum == 0.9 and spec.nesterov


# ----------------------------------------------------------------------------------------------------- UPL


def test_upl_schedule_values():
    upl = __import__("ueobench.methods.upl", fromlist=["dassl_cosine_with_warmup"])
    f = upl.dassl_cosine_with_warmup(0.002, 1, 50)
    lrs = [0.002 * f(e, 50) for e in range(50)]
    assert math.isclose(lrs[0], 1e-5)  # warm-up epoch at a constant 1e-5
    assert math.isclose(lrs[1], 0.002)  # the cosine counts from 0 after the warm-up
    assert 7e-6 < lrs[-1] < 9e-6  # the last epoch near 8e-6


def test_upl_trains_with_per_epoch_lr_drop_last_and_sixteen_prompts():
    assert build_options(get_method("upl"), {}).ensemble == 16  # the reference's ensemble is the default
    s = session("upl", {"epochs": "3", "warmup_epochs": "1", "shots": "8", "ensemble": "2", "batch_size": "32"})
    from ueobench.adapt import trainer

    specs = []
    original = trainer.fit

    def spy(spec, *a, **k):
        specs.append(spec)
        return original(spec, *a, **k)

    import ueobench.methods.upl as upl_mod

    upl_mod.fit = spy
    try:
        history = s.method.adapt(s.context)
    finally:
        upl_mod.fit = original
    assert len(specs) == 2 and all(sp.schedule_unit == "epoch" for sp in specs)
    assert specs[0].drop_last == (s.method.num_pseudo >= 32)
    lrs = [h["lr"]["prompt"] for h in history if h["prompt"] == 0]
    assert lrs[0] == pytest.approx(1e-5) and lrs[1] == pytest.approx(0.002)
    assert lrs[2] == pytest.approx(0.002 * 0.5 * (1 + math.cos(math.pi / 3)))


def test_upl_prompt_streams_of_different_run_seeds_never_overlap(monkeypatch):
    """Prompt i's augmentation stream is seeded per run seed without overlap: with seed + i, run seeds 0 and 1 would
    share 15 of their 16 streams, and the leaderboard's seed noise of UPL would be understated."""
    import ueobench.methods.upl as upl_mod

    seeded: dict[int, list[int]] = {}
    for run_seed in (0, 1, 2):
        s = session("upl", {"epochs": "1", "warmup_epochs": "0", "shots": "2", "ensemble": "3"}, seed=run_seed)
        calls: list[int] = []
        real = torch.manual_seed
        monkeypatch.setattr(upl_mod.torch, "manual_seed", lambda x: (calls.append(int(x)), real(x))[1])
        monkeypatch.setattr(upl_mod, "fit", lambda spec, *a, **k: [])
        s.method.adapt(s.context)
        monkeypatch.undo()
        seeded[run_seed] = calls
        assert s.method.info()["prompt_stream_seeds"] == [calls[0], calls[-1]]
    assert len(set().union(*seeded.values())) == 9  # 3 prompts x 3 run seeds, no stream used twice
    assert seeded[0] == [0, 1, 2]  # seed 0 keeps the streams it always had


# ----------------------------------------------------------------------------------------------------- TPT


def test_tpt_views_are_cut_from_the_original_image_with_augmix():
    from ueobench.adapt.augmix import OPERATIONS, TPTViews

    s = session("tpt", {"views": "8"})
    views = s.method.prediction_transform(s.backbone.preprocess)
    assert isinstance(views, TPTViews) and views.augmix  # AugMix is the default, as the reference for these sets
    sizes = []
    original = views.crop

    def spy(image):
        sizes.append(image.size)
        return original(image)

    views.crop = spy
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 140, 3), dtype=np.uint8))
    torch.manual_seed(0)
    out = views(image)
    assert out.shape == (8, 3, 32, 32)
    assert sizes == [(140, 90)] * 7  # every augmented view starts from the original, not the 32-px centre crop
    assert torch.allclose(out[0], s.backbone.preprocess(image))  # view 0 is the eval view
    torch.manual_seed(0)
    assert torch.equal(views(image), out)  # seeded: reproducible
    assert len(OPERATIONS) == 9
    crop = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    rng = np.random.default_rng(0)
    for op in OPERATIONS:
        assert op(crop, 1.0, rng).size == crop.size


def test_tpt_predicts_from_its_views_one_image_at_a_time(cli):
    r = cli("run", "--method", "tpt", "--protocol", "oda", "--domain", "real", "--backbone", TINY, "--set", "views=4",
            "--json")
    assert r.exit_code == 0, r.output
    import json

    rec = json.loads(r.output)
    assert rec["evaluation"]["predictions"]["test"] == "pass over the images (batch 1)"
    assert rec["method"]["options"]["augmix"] is True
