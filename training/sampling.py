"""How training batches are drawn: shuffled, class-balanced, or domain-aware with hard-example mining (seed 003),
which :class:`SamplerFeedback` feeds with the training step's per-sample losses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from training.data import PatchSet
from training.recipe import Recipe


class DomainAwareSampler(torch.utils.data.Sampler[int]):
    """Draws ``num_samples`` indices per epoch with replacement, balanced over domains and classes, with
    hard-example mining.

    Base weight = ``1 / (count of the sample's (domain, class) group * number of classes in its domain)``:
    every domain gets the same total weight and, within it, every class present the same share (this equals
    ``1/count`` up to a constant when each domain has both classes). It is multiplied by
    ``1 + hard_weight * hardness``, hardness = per-sample EMA (momentum) of the training loss divided by its
    maximum (0 until a sample is first seen; its first loss initialises the EMA). The epoch's indices are
    drawn from ``generator`` when iteration starts, so ``update`` calls take effect from the next epoch.
    """

    def __init__(self, domains: Sequence[str] | np.ndarray, labels: np.ndarray, num_samples: int | None = None,
                 hard_weight: float = 1.0, momentum: float = 0.7, generator: torch.Generator | None = None) -> None:
        domains, labels = np.asarray(domains), np.asarray(labels)
        if len(domains) != len(labels) or len(labels) == 0:
            raise ValueError(f"need as many domains as labels (> 0); got {len(domains)}, {len(labels)}")
        _, domain_id = np.unique(domains, return_inverse=True)
        _, group, group_count = np.unique(np.stack([domain_id, labels.astype(np.int64)]), axis=1,
                                          return_inverse=True, return_counts=True)
        group = group.reshape(-1)
        classes_in_domain = np.array([len(np.unique(labels[domain_id == d])) for d in range(domain_id.max() + 1)])
        self.base = 1.0 / (group_count[group] * classes_in_domain[domain_id])
        self.num_samples = len(labels) if num_samples is None else int(num_samples)
        self.hard_weight = float(hard_weight)
        self.momentum = float(momentum)
        self.generator = generator
        self.loss_ema = np.zeros(len(labels))
        self.seen = np.zeros(len(labels), dtype=bool)

    def weights(self) -> np.ndarray:
        """Current sampling weights (sum 1)."""
        top = self.loss_ema.max()
        hardness = self.loss_ema / top if top > 0 else self.loss_ema
        w = self.base * (1 + self.hard_weight * hardness)
        return w / w.sum()

    def update(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-sample training losses for the dataset ``indices`` of a batch."""
        idx = indices.detach().cpu().numpy().astype(np.int64)
        loss = losses.detach().float().cpu().numpy().astype(np.float64)
        blended = self.momentum * self.loss_ema[idx] + (1 - self.momentum) * loss
        self.loss_ema[idx] = np.where(self.seen[idx], blended, loss)
        self.seen[idx] = True

    def __iter__(self) -> Iterator[int]:
        w = torch.from_numpy(self.weights())
        yield from torch.multinomial(w, self.num_samples, replacement=True, generator=self.generator).tolist()

    def __len__(self) -> int:
        return self.num_samples


class SamplerFeedback(Callback):
    """Feeds the domain-aware sampler each training batch's per-sample losses: the unweighted BCE of the image logit
    against the step's target (as the training step returns them: ``logit``, ``target``). Several processes (DDP):
    every rank's losses, in rank order, go to every rank's sampler, so that all ranks draw the same epoch list, which
    Lightning's distributed wrapper then splits between them."""

    def __init__(self, sampler: DomainAwareSampler) -> None:
        self.sampler = sampler

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: dict, batch: tuple,
                           batch_idx: int) -> None:
        per_sample = F.binary_cross_entropy_with_logits(outputs["logit"].float(), outputs["target"].float(),
                                                        reduction="none")
        rows = batch[-1]  # the patches' row indices (train.tensors puts them last)
        self.sampler.update(module.all_gather(rows).reshape(-1), module.all_gather(per_sample).reshape(-1))


def make_loader(train: PatchSet, data: TensorDataset, recipe: Recipe, weights: tuple[float, float],
                gen: torch.Generator) -> tuple[DataLoader, list[Callback]]:
    """The training loader of ``recipe.sampling``; ``weights`` are the (normal, atypical) class weights used by
    balanced sampling. Returns the callbacks its sampler needs too: the domain-aware sampler's feedback."""
    n = recipe.batch_size
    if recipe.sampling == "shuffle":
        return DataLoader(data, n, shuffle=True, drop_last=True, generator=gen), []
    if recipe.sampling == "balanced":
        sample_w = np.where(train.labels == 1, weights[1], weights[0])
        sampler = WeightedRandomSampler(sample_w.tolist(), len(train), generator=gen)
        return DataLoader(data, n, drop_last=True, sampler=sampler), []
    sampler = DomainAwareSampler(train.domains, train.labels, len(train), recipe.hard_example_weight, generator=gen)
    return DataLoader(data, n, drop_last=True, sampler=sampler), [SamplerFeedback(sampler)]

