"""CRoFT against a transcription of the official computation (LinLLLL/CRoFT, /work/notes/spec_croft_carot.md A7).

The transcription below is the spec's, re-checked against ``CoOp/trainers/CRoFT.py`` (forward, feature_perturbation,
EDR, forward_backward) and Dassl's ``model_backward_and_update`` (zero_grad both optimisers, backward with
retain_graph, step both) and ConstantWarmupScheduler(CosineAnnealingLR). It keeps its own parameters and SGD
buffers; the implementation trains through ``ueobench.adapt.fit`` (one SGD, ``steps_per_batch = gen_step + 1``)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY

# ------------------------------------------------------------------------------------ the transcription


def croft_l2n(x, eps=1e-6):
    return x / (eps + x.norm(dim=-1, keepdim=True))


def croft_forward(raw_img, txt, Wi, Wt, ratio=0.2, ratio_text=0.5, scale=100.0):
    f_zs, t_zs = croft_l2n(raw_img), croft_l2n(txt)
    f = croft_l2n(ratio * (raw_img @ Wi.t()) + (1 - ratio) * raw_img)
    t = croft_l2n(ratio_text * (txt @ Wt.t()) + (1 - ratio_text) * txt)
    logits = scale * f @ t.t()
    return logits, f, t, f_zs, t_zs, torch.logsumexp(logits, 1)


def croft_generator_loss(f, t, y, G, lambda1, scale=100.0):
    M = (y[:, None] == y[None, :]).to(f.dtype)
    fc = croft_l2n(f @ G + f)
    return F.cross_entropy(scale * fc @ t.t(), y) + lambda1 * (M * (fc @ f.t())).mean(), fc


def croft_edr(f, fc, t, y, Wi, Wt, f_zs, t_zs, lambda1, lambda2, ratio, ratio_text, covariate_branch, setup1,
              wccf=True, scale=100.0):
    M = (y[:, None] == y[None, :]).to(f.dtype)
    disalign = (M * (fc @ f_zs.t())).mean()
    fc_mix = ratio * fc + (1 - ratio) * (fc @ Wi)
    if covariate_branch:
        loss1 = F.cross_entropy(scale * fc_mix @ t.t(), y) - lambda1 * disalign
        z = torch.cat([f_zs, fc], 0)
    else:
        loss1 = F.cross_entropy(scale * fc @ t.t(), y)
        z = f_zs
    delta = torch.full_like(Wi, 1e-4).requires_grad_(True)
    fi = croft_l2n(ratio * (z @ (Wi + delta)) + (1 - ratio) * z)
    ti = croft_l2n(ratio_text * (t_zs @ (Wt + delta)) + (1 - ratio_text) * t_zs)
    P = torch.exp(fi @ ti.t())
    if setup1:
        g = torch.autograd.grad(P.sum(), delta, create_graph=True)[0]
        loss2 = (g ** 2).mean()
    else:
        g = torch.autograd.grad(P.mean(), delta, create_graph=True)[0]
        loss2 = (g ** 2).sum()
    return loss1 + lambda2 * loss2 if wccf else lambda2 * loss2


def croft_sgd(p, g, buf, lr, momentum=0.9, wd=0.1):
    d = g + wd * p
    buf = d.clone() if buf is None else momentum * buf + d
    return p - lr * buf, buf


def croft_lr(epoch, base=0.002, max_epoch=30, warm_lr=1e-5):
    return warm_lr if epoch == 0 else 0.5 * base * (1 + math.cos(math.pi * (epoch - 1) / max_epoch))


def croft_train_batch(raw_img, txt, y, st, hp, lr):
    Wi0 = st["Wi"].clone().requires_grad_(True)
    Wt0 = st["Wt"].clone().requires_grad_(True)
    logits, f, t, f_zs, t_zs, _ = croft_forward(raw_img, txt, Wi0, Wt0, hp["ratio"], hp["ratio_text"], hp["scale"])
    Wi, Wt, G, bWi, bWt, bG = st["Wi"], st["Wt"], st["G"], st["bWi"], st["bWt"], st["bG"]
    for _ in range(hp["gen_step"] if hp["wccf"] else 0):
        Gk = G.clone().requires_grad_(True)
        Lg, _ = croft_generator_loss(f, t, y, Gk, hp["lambda1"], hp["scale"])
        gWi, gWt, gG = torch.autograd.grad(Lg, [Wi0, Wt0, Gk], retain_graph=True)
        Wi, bWi = croft_sgd(Wi, gWi, bWi, lr)
        Wt, bWt = croft_sgd(Wt, gWt, bWt, lr)
        G, bG = croft_sgd(G, gG, bG, lr)
    Gk = G.clone().requires_grad_(True)
    _, fc = croft_generator_loss(f, t, y, Gk, hp["lambda1"], hp["scale"])
    WiK, WtK = Wi.clone().requires_grad_(True), Wt.clone().requires_grad_(True)
    cov = hp["wccf"] and hp["gen_step"] > 0 and not hp["is_vlcs"]
    edr = croft_edr(f, fc, t, y, WiK, WtK, f_zs, t_zs, hp["lambda1"], hp["lambda2"], hp["ratio"],
                    hp["ratio_text"], cov, hp["setup1"], hp["wccf"], hp["scale"])
    loss = F.cross_entropy(logits, y) + edr
    gWi0, gWt0, gWiK, gWtK, gG = torch.autograd.grad(loss, [Wi0, Wt0, WiK, WtK, Gk], allow_unused=True)

    def z(a):
        return torch.zeros_like(Wi) if a is None else a

    Wi, bWi = croft_sgd(Wi, z(gWi0) + z(gWiK), bWi, lr)
    Wt, bWt = croft_sgd(Wt, z(gWt0) + z(gWtK), bWt, lr)
    if gG is not None:
        G, bG = croft_sgd(G, gG, bG, lr)

    def dt(a):
        return None if a is None else a.detach()

    return dict(Wi=dt(Wi), Wt=dt(Wt), G=dt(G), bWi=dt(bWi), bWt=dt(bWt), bG=dt(bG)), loss.detach()


def croft_energy_threshold(val_energy, val_correct):
    return float(np.percentile(np.asarray(val_energy)[np.asarray(val_correct, bool)], 5))


def croft_fpr95_auroc(ood_energy, id_ref_energy, threshold):
    from sklearn.metrics import roc_auc_score

    ood, ref = np.asarray(ood_energy), np.asarray(id_ref_energy)
    fpr = float((ood > threshold).mean())
    gt = np.hstack([np.zeros(len(ood), np.int32), np.ones(len(ref), np.int32)])
    return fpr, float(roc_auc_score(gt, np.hstack([ood, ref])))


# ------------------------------------------------------------------------------------------- fixtures

D, K, N = 16, 4, 8
SCALE = 14.3


def croft_module():
    from ueobench.method.registry import get_method

    return get_method("croft")


def croft_code():
    """The implementation's module (methods/croft.py, loaded by the registry)."""
    import importlib

    return importlib.import_module(croft_module().__module__)


def tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(K, D, generator=g, dtype=torch.float64)
    y = torch.arange(N) % K
    x = 3.0 * (means[y] + 0.8 * torch.randn(N, D, generator=g, dtype=torch.float64))  # raw: not unit norm
    u = 2.0 * (means + 0.5 * torch.randn(K, D, generator=g, dtype=torch.float64))
    near = lambda: torch.eye(D, dtype=torch.float64) + 0.1 * torch.randn(D, D, generator=g, dtype=torch.float64)
    return x, u, y, near(), near(), near()  # W not symmetric: the transposes matter


def make_method(options: dict, u: torch.Tensor):
    from ueobench.method.options import build_options

    cls = croft_module()
    m = cls(build_options(cls, {k: str(v) for k, v in options.items()}))
    m.backbone = SimpleNamespace(model=SimpleNamespace(encode_image=lambda im: im), device=torch.device("cpu"),
                                 image_size=8, info={}, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), logit_scale=SCALE)
    m.class_names = [f"c{k}" for k in range(K)]
    m.init_state(u.clone(), SCALE)
    return m


class FakeContext:
    """A labeled-source context over given tensors; target accessors raise, source reads are recorded."""

    def __init__(self, batches, xv, yv):
        self.batches, self.xv, self.yv = batches, xv, yv
        self.device = torch.device("cpu")
        self.amp_dtype, self.progress, self.evaluate = None, None, None
        self.num_source = {"train": sum(len(b[1]) for b in batches), "val": len(yv)}
        self.reads: list[tuple] = []

    def source_loader(self, split="train", transform=None, batch_size=32, shuffle=True, drop_last=False, indices=None):
        self.reads.append(("loader", split))
        return list(self.batches)

    def source_features(self, split, kind="global"):
        self.reads.append(("features", split, kind))
        assert split == "val"
        return self.xv

    def source_labels(self, split):
        self.reads.append(("labels", split))
        assert split == "val"
        return self.yv.numpy()

    def _target(self, *a, **k):
        raise AssertionError("a labeled-source method read target data")

    make_loader = image_features = target_labels = _target


# ------------------------------------------------------------------------------------------- tests

CONFIGS = [  # (covariate branch, setup1 form, wccf)
    (True, True, True), (True, False, True), (False, True, True), (False, False, True), (False, True, False)]


@pytest.mark.parametrize("cov,setup1,wccf", CONFIGS)
def test_loss_terms_and_gradients_match_the_transcription(cov, setup1, wccf):
    C = croft_code()

    x, u, y, Wi, Wt, G = tensors(1)
    lam1, lam2, r, rt = 5.0, 10.0, 0.2, 0.5
    ref_params = [p.clone().requires_grad_(True) for p in (Wi, Wt, G, Wi + 0.01, Wt - 0.01)]
    our_params = [p.clone().requires_grad_(True) for p in (Wi, Wt, G, Wi + 0.01, Wt - 0.01)]

    def both(fwd, gen, edr, params):
        wi0, wt0, g, wik, wtk = params
        logits, f, t, f_zs, t_zs = fwd(x, u, wi0, wt0, r, rt, SCALE)[:5]
        lg, fc = gen(f, t, y, g, lam1, SCALE)
        e = edr(f, fc, t, y, wik, wtk, f_zs, t_zs, cov, setup1, wccf)
        return logits, f, t, f_zs, t_zs, lg, fc, e

    ref = both(croft_forward, croft_generator_loss,
               lambda f, fc, t, y, wi, wt, fz, tz, c, s1, w: croft_edr(f, fc, t, y, wi, wt, fz, tz, lam1, lam2, r, rt,
                                                                       c, s1, w, SCALE), ref_params)
    ours = both(C.forward, C.generator_loss,
                lambda f, fc, t, y, wi, wt, fz, tz, c, s1, w: C.edr_loss(
                    f, fc, t, y, wi, wt, fz, tz, lambda1=lam1, lambda2=lam2, ratio=r, ratio_text=rt, covariate=c,
                    loss2="setup1" if s1 else "setup2", wccf=w, scale=SCALE), our_params)
    for a, b in zip(ref, ours):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    for i in (5, 7):  # the generator loss, EDR: gradients with respect to every matrix (stale and current)
        ga = torch.autograd.grad(ref[i], ref_params, retain_graph=True, allow_unused=True)
        gb = torch.autograd.grad(ours[i], our_params, retain_graph=True, allow_unused=True)
        for a, b in zip(ga, gb):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert ours[7].item() != 0.0


def run_both(options: dict, epochs=3, n_batches=2):
    """Train the implementation through the shared trainer and the transcription on the same batches."""
    x, u, y, *_ = tensors(2)
    g = torch.Generator().manual_seed(5)
    batches = []
    for b in range(n_batches):
        yb = torch.randint(0, K, (N,), generator=g)
        xb = 3.0 * (u[yb] / 2 + torch.randn(N, D, generator=g, dtype=torch.float64))
        batches.append((xb, yb, torch.arange(b * N, (b + 1) * N)))
    yv = torch.arange(12) % K
    xv = 3.0 * (u[yv] / 2 + 1.2 * torch.randn(12, D, generator=g, dtype=torch.float64))
    o = {"epochs": epochs, "lr": 0.05, "warmup_lr": 0.01, "lambda1": 5.0, "lambda2": 10.0, **options}
    m = make_method(o, u)
    ctx = FakeContext(batches, xv, yv)
    history = m.adapt(ctx)

    opts = m.options
    hp = dict(ratio=opts.ratio, ratio_text=opts.ratio_text, lambda1=opts.lambda1, lambda2=opts.lambda2,
              wccf=opts.wccf, gen_step=opts.gen_step, is_vlcs=not opts.covariate, setup1=opts.loss2 == "setup1",
              scale=SCALE)
    eye = torch.eye(D, dtype=torch.float64)
    st = dict(Wi=eye, Wt=eye, G=eye, bWi=None, bWt=None, bG=None)
    per_epoch, accs = [], []
    for e in range(epochs):
        lr = croft_lr(e, base=opts.lr, max_epoch=epochs, warm_lr=opts.warmup_lr)
        for xb, yb, _ in batches:
            st, _ = croft_train_batch(xb, u, yb, st, hp, lr)
        per_epoch.append(st)
        logits = croft_forward(xv, u, st["Wi"], st["Wt"], hp["ratio"], hp["ratio_text"], SCALE)[0]
        accs.append(100.0 * float((logits.argmax(1) == yv).double().mean()))
    return m, ctx, history, per_epoch, accs, (xv, yv, u)


@pytest.mark.parametrize("options", [
    {"gen_step": 2, "select": "last"},  # ImageNet46-like: covariate branch, setup1 form, two generator steps
    {"gen_step": 1, "loss2": "setup2", "select": "last"},  # PACS ViT
    {"gen_step": 3, "covariate": False, "loss2": "setup2", "select": "last"},  # VLCS: non-covariate branch
    {"gen_step": 0, "loss2": "setup2", "select": "last"},  # PACS RN50: G still trained by the main step's CE
    {"wccf": False, "select": "last"},  # WCCF off: G gets no gradient (SGD skips it)
])
def test_training_through_the_trainer_matches_the_transcription(options):
    m, _, history, per_epoch, _, _ = run_both(options)
    final = per_epoch[-1]
    for name, key in (("fc_i", "Wi"), ("fc_t", "Wt"), ("generator", "G")):
        torch.testing.assert_close(getattr(m, name).detach(), final[key], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(final["Wi"], torch.eye(D, dtype=torch.float64), atol=1e-3)  # the adapters did move
    if options.get("wccf", True):
        assert not torch.allclose(final["G"], torch.eye(D, dtype=torch.float64), atol=1e-3)
    else:
        torch.testing.assert_close(final["G"], torch.eye(D, dtype=torch.float64))
    assert [h["lr"]["adapter"] for h in history] == pytest.approx([croft_lr(e, 0.05, 3, 0.01) for e in range(3)])


def test_best_epoch_selection_reads_source_val_only_and_restores_that_epoch():
    m, ctx, history, per_epoch, accs, _ = run_both({"gen_step": 2})
    assert [h["source_val"] for h in history] == pytest.approx(accs, abs=1e-9)
    best = int(np.argmax(accs))  # the first of ties, as Dassl's strict >
    assert m.selected["epoch"] == best + 1 and m.selection()["on"] == "source_val"
    for name, key in (("fc_i", "Wi"), ("fc_t", "Wt"), ("generator", "G")):
        torch.testing.assert_close(getattr(m, name).detach(), per_epoch[best][key], rtol=1e-10, atol=1e-12)
    # what was read: the training loader and source_val's features and labels, nothing else (targets raise)
    assert {r for r in ctx.reads if r[0] != "loader"} == {("features", "val", "raw"), ("labels", "val")}
    assert {r for r in ctx.reads if r[0] == "loader"} == {("loader", "train")}


def test_energy_score_and_idval_threshold_match_the_reference():
    from ueobench.scoring.metrics import evaluate as compute_metrics
    from ueobench.scoring.scores import accept_known, compute_score

    m, _, _, per_epoch, _, (xv, yv, u) = run_both({"gen_step": 1, "select": "last"}, epochs=2)
    st = per_epoch[-1]
    g = torch.Generator().manual_seed(9)
    ood = 3.0 * torch.randn(20, D, generator=g, dtype=torch.float64)
    logits, *_, e_val = croft_forward(xv, u, st["Wi"], st["Wt"], 0.2, 0.5, SCALE)
    e_ood = croft_forward(ood, u, st["Wi"], st["Wt"], 0.2, 0.5, SCALE)[5]
    correct = (logits.argmax(1) == yv).numpy()
    tau = croft_energy_threshold(e_val.numpy(), correct)
    fpr, auroc = croft_fpr95_auroc(e_ood.numpy(), e_val.numpy()[correct], tau)

    with torch.no_grad():
        cos_val, cos_ood = m.predict_features(xv).numpy(), m.predict_features(ood).numpy()
    np.testing.assert_allclose(cos_val * SCALE, logits.numpy(), rtol=1e-12)  # unscaled cosines
    s_val = compute_score("scaled_energy", cos_val, SCALE)
    s_ood = compute_score("scaled_energy", cos_ood, SCALE)
    np.testing.assert_allclose(s_val, e_val.numpy(), rtol=1e-12)
    ref = s_val[cos_val.argmax(1) == yv.numpy()]
    cos = np.vstack([cos_val, cos_ood])
    labels = np.r_[yv.numpy(), np.full(len(ood), K)]
    out = compute_metrics(cos, labels, K, logit_scale=SCALE, rule="idval:0.95", score="scaled_energy",
                          reference_scores=ref)
    assert out["fpr95_idval"] == pytest.approx(fpr) and out["auroc_idval"] == pytest.approx(auroc)
    accepted = accept_known(cos_ood, SCALE, "idval:0.95", scores=s_ood, reference=ref)
    np.testing.assert_array_equal(accepted, e_ood.numpy() > tau)


def test_two_sgd_optimisers_stepped_together_equal_one_sgd_over_both_groups():
    """Dassl's adapter and generator optimisers (identical SGD settings and schedules, zeroed and stepped
    together on every loss) against the trainer's one SGD with two groups, with the G gradient sometimes
    missing (WCCF off): bit-identical parameters."""
    g = torch.Generator().manual_seed(3)
    init = [torch.randn(5, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    two = [torch.nn.Parameter(p.clone()) for p in init]
    one = [torch.nn.Parameter(p.clone()) for p in init]
    kw = dict(lr=0.002, momentum=0.9, weight_decay=0.1)
    opt_a, opt_g = torch.optim.SGD(two[:2], **kw), torch.optim.SGD(two[2:], **kw)
    opt = torch.optim.SGD([{"params": one[:2], "lr": 0.002}, {"params": one[2:], "lr": 0.002}], **kw)
    dassl_schedule = croft_code().dassl_schedule

    factor = dassl_schedule(0.002, 1, 1e-5)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: factor(s, 4)) for o in (opt_a, opt_g, opt)]
    for epoch in range(4):
        for it in range(3):
            grads = [torch.randn(5, 5, generator=g, dtype=torch.float64) for _ in range(3)]
            skip_g = (epoch + it) % 4 == 1
            for params, opts in ((two, (opt_a, opt_g)), (one, (opt,))):
                for o in opts:
                    o.zero_grad(set_to_none=True)
                for i, p in enumerate(params):
                    if not (i == 2 and skip_g):
                        p.grad = grads[i].clone()
                for o in opts:
                    o.step()
        for s in scheds:
            s.step()
    for a, b in zip(two, one):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_warmup_cosine_schedule_is_dassls():
    """1 constant warm-up epoch at 1e-5, then CosineAnnealingLR(T_max = 30) stepped per epoch, as the trainer
    steps it (LambdaLR of the per-epoch factor), against torch's own CosineAnnealingLR as Dassl's successor."""
    dassl_schedule = croft_code().dassl_schedule

    factor = dassl_schedule(0.002, 1, 1e-5)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.002)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: factor(s, 30))
    succ_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.002)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(succ_opt, T_max=30)
    ours, dassl = [], []
    for epoch in range(30):
        ours.append(opt.param_groups[0]["lr"])
        if epoch == 0:
            dassl.append(1e-5)
        else:
            dassl.append(successor.get_last_lr()[0])
            successor.step()
        sched.step()
    assert ours == pytest.approx(dassl, rel=1e-12)
    assert ours == pytest.approx([croft_lr(e) for e in range(30)], rel=1e-12)
    assert ours[1] == pytest.approx(0.002) and ours[29] == pytest.approx(0.001 * (1 + math.cos(math.pi * 28 / 30)))


def test_frozen_towers_only_the_adapters_and_generator_train():
    cls = croft_module()
    from ueobench.method.options import build_options
    from ueobench.models import load_backbone

    backbone = load_backbone(TINY)
    m = cls(build_options(cls, {}))
    ctx = SimpleNamespace(prompt="a photo of a {}.", device=torch.device("cpu"), seed=0)
    m.setup(backbone, ["circle", "square", "star"], ctx)
    params = [p for ps in m.trainable_parameters().values() for p in ps]
    model_ids = {id(p) for p in backbone.model.parameters()}
    assert len(params) == 3 and not any(id(p) in model_ids for p in params)
    d = backbone.model.text_projection.shape[1]
    assert all(p.shape == (d, d) and torch.equal(p.detach(), torch.eye(d)) for p in params)
    with torch.no_grad():  # at identity the adapters change nothing: zero-shot cosines (up to the 1e-6 eps)
        from ueobench.models import encode_texts

        x = torch.randn(4, d)
        zs = F.normalize(x, dim=-1) @ encode_texts(backbone, ["a photo of a circle.", "a photo of a square.",
                                                              "a photo of a star."]).T
        torch.testing.assert_close(m.predict_features(x), zs, atol=1e-5, rtol=0)


def test_cli_trains_once_reuses_the_artifact_and_reruns_identically(cli):
    common = ("--method", "croft", "--source", "real", "--protocol", "oda", "--backbone", TINY, "--set", "epochs=2",
              "--score", "scaled_energy", "--rule", "idval:0.95")
    r = cli("run", *common, "--domain", "clipart")
    assert r.exit_code == 0, r.output
    assert "trained in" in r.output
    [run] = list(Path("results/runs").iterdir())
    rec = json.loads((run / "record.json").read_text())
    assert rec["method"]["selection"]["on"] == "source_val" and rec["method"]["info"]["steps_per_batch"] == 2
    assert rec["trainable_parameters"] == 3 * rec["method"]["info"]["dim"] ** 2
    assert rec["metrics"]["test"]["rule"] == "idval:0.95" and rec["metrics"]["test"]["auroc_idval"] is not None
    preds = (run / "predictions.npz").read_bytes()
    sha = rec["artifact"]["state_sha256"]

    r2 = cli("run", *common, "--domain", "real")  # another target: the same trained model
    assert r2.exit_code == 0, r2.output
    assert "(reused)" in r2.output

    assert cli("run", *common, "--domain", "clipart", "--force").exit_code == 0
    assert (run / "predictions.npz").read_bytes() == preds

    shutil.rmtree("results/artifacts")  # retrain from scratch: the seeded training is deterministic
    r3 = cli("run", *common, "--domain", "clipart", "--force")
    assert r3.exit_code == 0 and "trained in" in r3.output, r3.output
    assert json.loads((run / "record.json").read_text())["artifact"]["state_sha256"] == sha
    assert (run / "predictions.npz").read_bytes() == preds
