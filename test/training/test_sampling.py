"""training/sampling.py: the domain-aware, hard-example-mining sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.sampling import DomainAwareSampler


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
