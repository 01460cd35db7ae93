"""Objectives against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from ueobench.adapt.losses import entropy, entropy_loss, im_loss, pouf_transport_loss, ueo_loss

P = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]])


def H(row, eps=1e-5):
    return -sum(p * math.log(p + eps) for p in row)


def test_entropy_and_entropy_loss():
    assert entropy(P).tolist() == pytest.approx([H([0.5, 0.5]), H([1, 0]), H([0.25, 0.75])], rel=1e-6, abs=1e-7)
    assert entropy(torch.tensor([0.5, 0.5])).item() == pytest.approx(math.log(2), abs=1e-4)
    assert entropy_loss(P).item() == pytest.approx((H([0.5, 0.5]) + H([1, 0]) + H([0.25, 0.75])) / 3, rel=1e-6)


def test_im_loss():
    mean = [(0.5 + 1 + 0.25) / 3, (0.5 + 0 + 0.75) / 3]
    cond = (H([0.5, 0.5]) + H([1, 0]) + H([0.25, 0.75])) / 3
    assert im_loss(P).item() == pytest.approx(cond - H(mean), rel=1e-6)
    assert im_loss(P, trade=0.5).item() == pytest.approx(cond - 0.5 * H(mean), rel=1e-6)
    assert im_loss(P, marginal_eps=1e-6).item() == pytest.approx(cond - H(mean, 1e-6), rel=1e-6)


def test_ueo_loss_hand_worked():
    w = torch.tensor([0.2, 0.5, 0.3])
    cond = (0.2 * H([0.5, 0.5]) + 0.5 * H([1, 0]) + 0.3 * H([0.25, 0.75])) / 1.0
    inv = [1 / 0.2, 1 / 0.5, 1 / 0.3]
    marg = [sum(i * p[k] for i, p in zip(inv, P.tolist())) / sum(inv) for k in range(2)]
    assert ueo_loss(P, w).item() == pytest.approx(cond - H(marg), rel=1e-6)
    assert ueo_loss(P, w, trade=2.0).item() == pytest.approx(cond - 2 * H(marg), rel=1e-6)


def test_ueo_with_uniform_weights_is_im():
    probs = torch.softmax(torch.randn(16, 5, generator=torch.Generator().manual_seed(0)), 1)
    for c in (1.0, 0.37):
        assert ueo_loss(probs, torch.full((16,), c)).item() == pytest.approx(im_loss(probs).item(), rel=1e-6)


def test_pouf_transport_hand_worked():
    sim = torch.tensor([[0.9, 0.1], [0.3, 0.6]])
    logits = 10 * sim
    fwd = torch.softmax(logits, 1)
    bwd = torch.softmax(logits, 0)
    cost = 1 - sim
    expected = sum((cost[i] * fwd[i]).sum() for i in range(2)) / 2 + sum((cost[:, k] * bwd[:, k]).sum() for k in range(2)) / 2
    assert pouf_transport_loss(sim, logits).item() == pytest.approx(expected.item(), rel=1e-6)
    # a perfect match (cost 0 on the diagonal, plans concentrated there) costs almost nothing
    eye = torch.eye(2)
    assert pouf_transport_loss(eye, 100 * eye).item() == pytest.approx(0.0, abs=1e-6)
