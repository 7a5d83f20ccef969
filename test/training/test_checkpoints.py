"""training/train.py's checkpoints: ``last.ckpt`` follows every epoch, ``best.ckpt`` only the selection."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from training.train import checkpoints


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
