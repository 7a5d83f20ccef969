"""training/losses.py: class weights, Dice, soft targets, adaptive focal and SupCon losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    AdaptiveFocalLoss,
    SupConLoss,
    binary_dice_loss,
    inverse_frequency_weights,
    multiclass_dice_loss,
    soft_targets,
)


def test_losses():
    assert inverse_frequency_weights(np.array([0, 0, 0, 1])) == pytest.approx((4 / 6, 2.0))
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:5, 2:5] = 1
    perfect = torch.where(target > 0, 20.0, -20.0)
    assert binary_dice_loss(perfect, target) < 1e-3 < binary_dice_loss(-perfect, target)
    onehot = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 40 - 20
    assert multiclass_dice_loss(onehot, target) < 1e-2 < multiclass_dice_loss(-onehot, target)


def test_soft_targets_uses_known_votes_and_falls_back_to_labels():
    labels = torch.tensor([1, 0, 1, 0])
    votes = torch.tensor([2 / 3, 1 / 3, float("nan"), float("nan")])
    assert torch.allclose(soft_targets(labels, votes), torch.tensor([2 / 3, 1 / 3, 1.0, 0.0]))
    assert torch.allclose(soft_targets(labels, votes, 0.5), torch.tensor([5 / 6, 1 / 6, 1.0, 0.0]))
    assert torch.equal(soft_targets(labels, votes, 0.0), labels.float())


def test_focal_without_focusing_is_class_weighted_bce():
    logit = torch.tensor([2.0, -1.0, 0.3, -0.2, 1.5])
    target = torch.tensor([1.0, 0.0, 0.8, 0.3, 0.0])
    weights = (0.6, 3.0)
    w = torch.tensor([3.0, 0.6, 3.0, 0.6, 0.6])
    expected = F.binary_cross_entropy_with_logits(logit, target, weight=w)
    assert torch.allclose(AdaptiveFocalLoss(weights, gamma_max=0.0)(logit, target), expected)


def test_focal_down_weights_well_classified_samples():
    easy_logit, target = torch.tensor([4.0, -4.0]), torch.tensor([1.0, 0.0])
    focal = AdaptiveFocalLoss((1.0, 1.0), gamma_max=2.0).eval()
    bce = F.binary_cross_entropy_with_logits(easy_logit, target)
    assert focal(easy_logit, target) < 0.05 * bce
    hard_logit = torch.tensor([-4.0, 4.0])  # misclassified: focusing barely changes the loss
    assert focal(hard_logit, target) > 0.9 * F.binary_cross_entropy_with_logits(hard_logit, target)


def test_focal_gamma_adapts_to_recall_in_training_only():
    focal = AdaptiveFocalLoss((1.0, 1.0), gamma_max=2.0, momentum=0.5)
    assert torch.allclose(focal.gamma, torch.tensor([1.0, 1.0]))
    target = torch.tensor([1.0, 1.0, 0.0, 0.0])
    logit = torch.tensor([-1.0, -2.0, -1.0, -3.0], requires_grad=True)  # atypical always wrong, normal right
    for _ in range(3):
        focal(logit, target).backward()
    gamma_normal, gamma_atypical = focal.gamma.tolist()
    assert gamma_atypical > 1.5 and gamma_normal < 0.5  # EMA: 0.5 -> 0.0625 / 0.9375
    assert "recall" in focal.state_dict()
    focal.eval()
    before = focal.recall.clone()
    focal(-logit.detach(), target)
    assert torch.equal(focal.recall, before)


def _supcon_loop(z: torch.Tensor, labels: torch.Tensor, tau: float) -> float:
    z = F.normalize(z, dim=1)
    terms = []
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        denom = sum(math.exp(float(z[i] @ z[j]) / tau) for j in others)
        pos = [j for j in others if labels[j] == labels[i]]
        if pos:
            terms.append(-sum(float(z[i] @ z[p]) / tau - math.log(denom) for p in pos) / len(pos))
    return sum(terms) / len(terms)


def test_supcon_matches_loop_and_prefers_label_clusters():
    g = torch.Generator().manual_seed(0)
    z, labels = torch.randn(7, 5, generator=g), torch.tensor([0, 1, 0, 1, 1, 2, 0])  # label 2 has no positive
    loss = SupConLoss(0.5)
    assert loss(z, labels).item() == pytest.approx(_supcon_loop(z, labels, 0.5), rel=1e-5)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    clustered = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert loss(clustered, labels) < loss(mixed, labels)


def test_supcon_without_positives_is_zero_with_grad():
    z = torch.randn(3, 4, requires_grad=True)
    out = SupConLoss()(z, torch.tensor([0, 1, 2]))
    out.backward()
    assert out.item() == 0 and out.requires_grad and torch.equal(z.grad, torch.zeros_like(z))
