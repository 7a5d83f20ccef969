"""Weight averaging (``weight_averaging=ema``): an exponential moving average of the network, validated beside the
raw network every epoch; selection keeps the better of the two.

The task holds the average (``MitosisTask.averaged``, a frozen submodule: Lightning's checkpoints keep it beside the
network, so --resume continues it); :class:`RawOrAverage`, the callback such a task brings, updates it, validates it
and picks. Lightning's ``WeightAveraging`` / ``EMAWeightAveraging`` callbacks are not used: they swap the average in
for validation (only one of the two weights is validated), average the whole LightningModule, copy the average over
the raw weights when training ends and move the raw weights out of the checkpoint's ``state_dict``; their EMA step
(``get_ema_avg_fn``, per tensor) also rounds differently from torch's ``_foreach_lerp_`` used here.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from training.recipe import SELECTIONS, Recipe


def ema_update(decay: float, warmup: bool):
    """AveragedModel's update, ``ema = d * ema + (1 - d) * current`` (torch's EMA). With ``warmup`` the decay grows
    with the updates so far, ``d = min(decay, (1 + n) / (10 + n))`` (the ``num_updates`` rule of TensorFlow's
    ExponentialMovingAverage): the average forgets the random start within the first epochs instead of carrying
    it for ~1/(1 - decay) steps."""
    if not warmup:
        return get_ema_multi_avg_fn(decay)

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        get_ema_multi_avg_fn(min(decay, (1 + int(n)) / (10 + int(n))))(averaged, current, n)

    return update


def averaged_copy(net: nn.Module, recipe: Recipe) -> AveragedModel | None:
    """The EMA of ``net``'s parameters AND buffers (BatchNorm running statistics), in fp32 like the parameters
    (autocast leaves them fp32), frozen so that the optimizer skips it; None unless the recipe averages."""
    if recipe.weight_averaging != "ema":
        return None
    return AveragedModel(net, multi_avg_fn=ema_update(recipe.ema_decay, recipe.ema_warmup),
                         use_buffers=True).requires_grad_(False)


class RawOrAverage(Callback):
    """Updates the task's average after every optimizer step, validates it beside the raw network (``val_avg/*``)
    and logs the better of the two by the recipe's selection metric (``select/score``; ``select/ema`` 1 where the
    average won, raw on a tie). Each checkpoint records the latest winner (``selected_weights``: raw | ema), which
    train_fold reads back from ``best.ckpt``."""

    def __init__(self, recipe: Recipe) -> None:
        self.metric = "ba" if recipe.select == "val_ba" else "loss"  # of the validation scores
        self.better = max if SELECTIONS[recipe.select][1] == "max" else min
        self.selected = "raw"

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        module.averaged.update_parameters(module.net)

    def on_validation_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx,
                                dataloader_idx: int = 0) -> None:
        with trainer.precision_plugin.val_step_context():  # the validation step's autocast, as for the raw network
            module.validate(module.averaged.module, "val_avg", batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        scores = {prefix: s[self.metric] for prefix, s in module.validation.scores(module).items()}
        winner = self.better(scores, key=scores.get)  # "val" first: raw on a tie
        self.selected = "ema" if winner == "val_avg" else "raw"
        module.log_dict({"select/score": scores[winner], "select/ema": float(winner == "val_avg")}, sync_dist=False)

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["selected_weights"] = self.selected
