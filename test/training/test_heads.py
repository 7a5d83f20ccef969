"""training/heads.py: the projection head, gradient reversal, the DANN schedule and the domain head."""

from __future__ import annotations

import numpy as np
import torch

from training.heads import DomainHead, ProjectionHead, dann_schedule, grad_reverse


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
