"""Training progress for a log: Lightning's bar rewrites one line with carriage returns, which a log file or a pipe
(``nohup amf train ... > run.log``, ``amf train --jobs``' per-fold logs, CI) keeps as one endless line. When stdout
is not a terminal, :func:`progress_callbacks` replaces the bar with :class:`LogLines`: plain lines, a few per epoch
and one with the epoch's figures. In a terminal Lightning's own bar stays.
"""

from __future__ import annotations

import math
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import Callback, ProgressBar

from runtime.progress import is_terminal

LINES_PER_EPOCH = 4  # training lines per epoch, besides the epoch's own
EPOCH_FIGURES = ("train/loss", "val/loss", "val/ba", "val_avg/ba", "select/score")  # those logged, in this order


class LogLines(ProgressBar):
    """``[fold] epoch 3/50: step 25/100, loss 0.512, 0.53 s/step`` every quarter epoch, and after validation
    ``[fold] epoch 3/50 done in 62 s: train/loss 0.5 val/loss 0.48 val/ba 0.731``; rank 0 only (Lightning disables
    the others)."""

    def __init__(self, name: str, lines_per_epoch: int = LINES_PER_EPOCH) -> None:
        super().__init__()
        self.name, self.lines_per_epoch = name, lines_per_epoch
        self._enabled, self._start = True, time.perf_counter()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _epoch(self, trainer: L.Trainer) -> str:
        return f"[{self.name}] epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        total, step = self.total_train_batches, batch_idx + 1
        every = math.ceil(total / self.lines_per_epoch) if math.isfinite(total) else 50
        if not self._enabled or (step % every and step != total):
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        loss_text = f", loss {float(loss):.4f}" if loss is not None else ""
        seconds = (time.perf_counter() - self._start) / step
        print(f"{self._epoch(trainer)}: step {step}/{total if math.isfinite(total) else '?'}{loss_text}, "
              f"{seconds:.2f} s/step", flush=True)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not self._enabled:
            return
        metrics = trainer.callback_metrics
        figures = " ".join(f"{k} {float(metrics[k]):.4f}" for k in EPOCH_FIGURES if k in metrics)
        print(f"{self._epoch(trainer)} done in {time.perf_counter() - self._start:.0f} s" +
              (f": {figures}" if figures else ""), flush=True)


def progress_callbacks(name: str) -> list[Callback]:
    """The callbacks that show fold ``name``'s progress: none in a terminal (Lightning adds its bar), else LogLines."""
    return [] if is_terminal(sys.stdout) else [LogLines(name)]
