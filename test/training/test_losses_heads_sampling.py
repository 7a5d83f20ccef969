"""Unit tests of the seed-003 training options (soft targets, focal and contrastive losses, MixUp, the projection
and domain heads, domain-aware sampling): tiny CPU tensors only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.augment import mixup, mixup_params
from training.heads import DomainHead, ProjectionHead, dann_schedule, grad_reverse
from training.losses import AdaptiveFocalLoss, SupConLoss, soft_targets
from training.sampling import DomainAwareSampler


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


def test_mixup_mixes_images_and_targets_with_returned_lambda():
    images = torch.rand(6, 3, 4, 4, dtype=torch.float64)
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    mixed, t = mixup(images, targets, 0.4, torch.Generator().manual_seed(3))
    lam, perm = mixup_params(6, 0.4, torch.Generator().manual_seed(3))
    assert mixed.shape == images.shape and mixed.dtype == images.dtype
    assert ((t >= 0) & (t <= 1)).all() and (lam >= 0.5).all() and (lam <= 1).all()
    lam64 = lam.double().view(-1, 1, 1, 1)
    assert torch.allclose(mixed, lam64 * images + (1 - lam64) * images[perm])
    assert torch.allclose(t, lam * targets + (1 - lam) * targets[perm])
    assert not torch.allclose(mixed, images)


def test_mixup_is_reproducible_and_alpha_zero_is_identity():
    images, targets = torch.rand(5, 3, 2, 2), torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    a = mixup(images, targets, 0.2, torch.Generator().manual_seed(7))
    b = mixup(images, targets, 0.2, torch.Generator().manual_seed(7))
    c = mixup(images, targets, 0.2, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    same = mixup(images, targets, 0.0)
    assert same[0] is images and same[1] is targets
    half = mixup(images.bfloat16(), targets, 0.2, torch.Generator().manual_seed(7))[0]
    assert half.dtype == torch.bfloat16


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


def test_projection_head_outputs_unit_vectors():
    out = ProjectionHead(10, hidden=8, out_features=4)(torch.randn(3, 10))
    assert out.shape == (3, 4) and torch.allclose(out.norm(dim=1), torch.ones(3))


def test_grad_reverse_and_dann_schedule():
    x = torch.randn(4, 3, requires_grad=True)
    upstream = torch.randn(4, 3)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.allclose(x.grad, -0.7 * upstream)
    values = [dann_schedule(p) for p in np.linspace(0, 1, 11)]
    assert values[0] == 0 and all(a < b for a, b in zip(values, values[1:])) and values[-1] > 0.999


def test_domain_head_shape_and_reversed_gradient():
    head = DomainHead(6, 3, hidden=5)
    emb = torch.randn(4, 6, requires_grad=True)
    out = head(emb, 1.0)
    assert out.shape == (4, 3)
    out.sum().backward()
    plain = torch.autograd.grad(head.mlp(emb).sum(), emb)[0]
    assert torch.allclose(emb.grad, -plain)


def _toy():
    domains = np.array(["a"] * 100 + ["b"] * 25)
    labels = np.array([0] * 90 + [1] * 10 + [0] * 20 + [1] * 5)
    return domains, labels


def test_domain_aware_sampler_balances_domain_class_groups():
    domains, labels = _toy()
    sampler = DomainAwareSampler(domains, labels, num_samples=8000, generator=torch.Generator().manual_seed(0))
    assert len(sampler) == 8000 and sampler.weights().sum() == pytest.approx(1.0)
    idx = np.array(list(sampler))
    assert len(idx) == 8000
    for d in "ab":
        for c in (0, 1):
            freq = np.mean((domains[idx] == d) & (labels[idx] == c))
            assert freq == pytest.approx(0.25, abs=0.03), (d, c, freq)


def test_domain_aware_sampler_mines_hard_examples_and_is_reproducible():
    domains, labels = _toy()
    sampler = DomainAwareSampler(domains, labels, num_samples=4000, hard_weight=3.0,
                                 generator=torch.Generator().manual_seed(1))
    hard = torch.arange(0, 90, 2)  # half of the domain-a normal samples
    before = np.isin(np.array(list(sampler)), hard.numpy()).mean()
    sampler.update(torch.arange(125), torch.full((125,), 0.1))
    sampler.update(hard, torch.full((len(hard),), 10.0))
    after = np.isin(np.array(list(sampler)), hard.numpy()).mean()
    assert before == pytest.approx(0.125, abs=0.03) and after > 2 * before
    a = DomainAwareSampler(domains, labels, 50, generator=torch.Generator().manual_seed(5))
    b = DomainAwareSampler(domains, labels, 50, generator=torch.Generator().manual_seed(5))
    assert list(a) == list(b)
