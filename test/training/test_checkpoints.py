"""training/train.py's checkpoints: ``last.ckpt`` follows every epoch, ``best.ckpt`` only the selection."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from training.train import Throughput, checkpoints


class Flat(BoringModel):
    """Its selection score never improves after epoch 0."""

    def on_validation_epoch_end(self) -> None:
        self.log("select/score", 1.0 if self.current_epoch == 0 else 0.5)


def test_last_checkpoint_follows_every_epoch_when_the_selection_does_not_improve(tmp_path):
    best, latest = checkpoints(tmp_path, "select/score", "max")
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1, callbacks=[best, latest],
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)
    trainer.fit(Flat())
    epoch_of = {name: torch.load(tmp_path / f"{name}.ckpt", weights_only=False)["epoch"] for name in ("best", "last")}
    assert epoch_of == {"best": 0, "last": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


class Batches(Flat):
    """Batches shaped as amf train's (a tuple whose third item holds the labels), which Throughput counts."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch[0], batch_idx)

    def train_dataloader(self):
        x = torch.randn(8, 32)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x, x[:, 0]), batch_size=2)


def test_a_resume_from_the_checkpoint_saved_at_an_epochs_end_trains_on(tmp_path):
    """last.ckpt is written in the epoch's end hooks; a resume with a step limit (``amf train --resume
    --max-steps``) runs the end hooks of that epoch again, with no epoch start, which the throughput callback must
    survive (it raised AttributeError there)."""
    def fit(epochs: int, steps: int = -1, **kwargs) -> pl.Trainer:
        trainer = pl.Trainer(max_epochs=epochs, max_steps=steps, limit_train_batches=2, limit_val_batches=1,
                             logger=False,
                             callbacks=[*checkpoints(tmp_path, "select/score", "max"), Throughput()],
                             enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
        trainer.fit(Batches(), **kwargs)
        return trainer

    fit(1)
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] == 0
    assert fit(3, steps=3, ckpt_path=tmp_path / "last.ckpt").global_step == 3  # one step more
