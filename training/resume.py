"""What ``--resume`` needs, beside Lightning's checkpoint, to continue a fold exactly as if it had never stopped, also
from the middle of an epoch (cluster.py saves there when SLURM asks): the order of the epoch's batches and how many
are done, the random generators (the batch order's; torch's, NumPy's and Python's, which augmentation and dropout
draw from), the domain-aware sampler's losses, and the sums behind the epoch's logged training means (Lightning's
result collection, which its checkpoint leaves out). Lightning's checkpoint holds the network, the optimizer, the
schedule, the loop counters and the callbacks' states; :class:`ExactResume` is one of those callbacks, and its
sampler replays the rest of an interrupted epoch. So a fold stopped and resumed on one CPU ends with the same
weights and validation figures as one trained straight through (test/training/test_run_lock.py).

Exact in one process; several processes (DDP) resume from the same checkpoint, and an epoch they resume in its
middle is drawn afresh (Lightning warns then).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Sampler

from training.sampling import DomainAwareSampler

# Lightning's warning on a mid-epoch resume with a loader it cannot see is resumable; ExactResume makes it so
NOT_RESUMABLE = "You're resuming from a checkpoint that ended before the epoch ended"


class EpochOrder(Sampler[int]):
    """The indices ``sampler`` draws for an epoch, kept for the checkpoint; after a mid-epoch resume, the rest of the
    interrupted epoch's order instead, with the generators set as they were: ``generator`` as after that epoch's draw,
    the global ones as at the stop. Set here, when the loader starts iterating, because starting takes a seed from
    the loader's generator, or without one from torch's, which the interrupted epoch had already done."""

    def __init__(self, sampler: Sampler[int], generator: torch.Generator) -> None:
        self.sampler, self.generator = sampler, generator
        self.order = torch.zeros(0, dtype=torch.int64)
        self.generator_after = generator.get_state()
        self.replay: tuple[torch.Tensor, int, dict] | None = None  # (order, indices done, global generators)

    def __iter__(self) -> Iterator[int]:
        if self.replay is not None:
            (self.order, done, generators), self.replay = self.replay, None
            self.generator.set_state(self.generator_after)
            set_generators(generators)
            yield from self.order[done:].tolist()
            return
        self.order = torch.tensor(list(self.sampler), dtype=torch.int64)
        self.generator_after = self.generator.get_state()
        yield from self.order.tolist()

    def __len__(self) -> int:
        return len(self.sampler)


class ExactResume(Callback):
    """Puts the state the module docstring lists into every checkpoint, and takes it back on ``--resume``. Build it
    on the training loader and train on :attr:`loader` (the same batches, drawn through :class:`EpochOrder`)."""

    def __init__(self, loader: DataLoader) -> None:
        sampler = loader.sampler if isinstance(loader.sampler, DomainAwareSampler) else None  # its losses are state
        self.order = EpochOrder(loader.sampler, loader.sampler.generator)  # the generator that draws the order
        self.loader = DataLoader(loader.dataset, loader.batch_size, sampler=self.order, drop_last=loader.drop_last,
                                 generator=loader.generator)
        self.batch_size, self.domain_sampler = loader.batch_size, sampler
        self.batches_done = 0
        self.one_process = True
        self.trainer: L.Trainer | None = None
        self.saved_sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # added back after a mid-epoch resume

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self.one_process = trainer.world_size == 1  # setup runs before Lightning restores the checkpoint
        self.trainer = trainer
        if self.one_process:
            warnings.filterwarnings("ignore", NOT_RESUMABLE)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.batches_done = trainer.fit_loop.epoch_loop.batch_progress.current.completed

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        self.batches_done = batch_idx + 1
        sums, self.saved_sums = self.saved_sums, {}
        for key, metric in self._epoch_means(trainer).items():  # the resumed epoch's first batch has logged by now
            if key in sums:
                metric.value += sums[key][0].to(metric.value)
                metric.cumulated_batch_size += sums[key][1].to(metric.cumulated_batch_size)

    @staticmethod
    def _epoch_means(trainer: L.Trainer) -> dict:
        """The training step's epoch means being summed (Lightning's ``_ResultMetric``: value = sum of value x batch
        size, over cumulated_batch_size)."""
        return {k: m for k, m in trainer.fit_loop.epoch_loop._results.items()
                if m.is_tensor and m.meta.on_epoch and m.meta.is_mean_reduction}

    def state_dict(self) -> dict:
        state = {"order": self.order.order, "generator": self.order.generator_after,
                 "indices_done": self.batches_done * self.batch_size, "torch": torch.get_rng_state(),
                 "numpy": _numpy_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        if self.trainer is not None and self.one_process:
            state["epoch_sums"] = {k: (m.value.detach().cpu(), m.cumulated_batch_size.detach().cpu())
                                   for k, m in self._epoch_means(self.trainer).items()}
        if self.domain_sampler is not None:
            sampler = self.domain_sampler
            state["losses"] = (torch.from_numpy(sampler.loss_ema), torch.from_numpy(sampler.seen))
        return state

    def load_state_dict(self, state: dict) -> None:
        if "losses" in state and self.domain_sampler is not None:
            self.domain_sampler.loss_ema[:] = state["losses"][0].numpy()
            self.domain_sampler.seen[:] = state["losses"][1].numpy()
        order, done = state["order"], state["indices_done"]
        self.order.generator_after = state["generator"]
        full = len(order) - len(order) % self.batch_size if self.loader.drop_last else len(order)
        if self.one_process and done < full:  # stopped inside an epoch (or before its first batch): the rest of it
            self.order.replay = (order, done, state)
            self.saved_sums = state.get("epoch_sums", {})
        else:  # stopped at an epoch's end: the next epoch draws on from where that one left the generators
            self.order.generator.set_state(state["generator"])
            set_generators(state)


def set_generators(state: dict) -> None:
    """torch's, NumPy's, Python's (and CUDA's) global random generators as :meth:`ExactResume.state_dict` saved them."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state(state["numpy"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state(saved: dict | None = None):
    """NumPy's global generator state as tensors and numbers (a checkpoint is read with ``weights_only``), or back."""
    if saved is None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                "has_gauss": int(has_gauss), "cached": float(cached)}
    return (saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"], saved["cached"])
