"""Training on a SLURM cluster (scripts/slurm/, docs/cluster.md): the ranks of an ``srun`` job, and stopping a fold
cleanly when the cluster asks.

Ranks: Lightning's ``SLURMEnvironment`` reads them from ``srun`` (``--num-nodes``, tasks per node = ``--devices``),
and its DDP takes gloo on CPUs, NCCL on GPUs. It is passed with ``auto_requeue=False``, as :class:`StopOnSignal`
does the requeue.

Stopping: SLURM sends ``USR1`` before the time limit (``#SBATCH --signal=USR1@120``) and ``TERM`` on ``scontrol
requeue`` or ``scancel``. The signal only raises a flag. At the end of the training batch (every rank agrees on
it), once the module's own end-of-batch hook has run (the average of the weights is updated there), the fold's
``ckpt/last.ckpt`` gets the whole training state (resume.py's part included), and the process ends (exit 128 + the
signal). After ``USR1`` under SLURM, rank 0 first requeues its own job, which starts the same script again:
``amf train --resume`` continues from that checkpoint. Why not Lightning's own auto-requeue: its handler saves
``hpc_ckpt_N.ckpt`` inside the signal handler, at whatever point the signal lands (possibly between two of the
optimizer's updates), into the trainer's root folder, and leaves the process training until SLURM kills it; a
resume from there cannot be exact.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def environment_plugins() -> list:
    """Lightning's cluster environment under SLURM (ranks from ``srun``), without its auto-requeue; none elsewhere."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


class StopOnSignal(Checkpoint):
    """Saves ``last`` at the end of the training batch during which USR1 or TERM arrived, requeues the SLURM job after
    USR1, and ends the process; prints one line that says so. Lightning resumes a checkpoint saved at a batch's end
    after that batch, so every other end-of-batch hook must have run first: as a ``Checkpoint`` Lightning runs this
    callback after all others (the module's own ones too, e.g. the weight average's update), and the module's own
    hook, which comes after callbacks, it runs itself.
    During an epoch's last batch (or its validation) it waits for the next epoch's start: the epoch's end has written
    ``last`` then, and a resume from there needs nothing more."""

    def __init__(self, name: str, last: Path) -> None:
        self.name, self.last = name, last
        self.received = 0
        self._previous: dict = {}

    def _flag(self, signum: int, frame) -> None:
        self.received = signum

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.received = 0
        self._previous = {s: signal.signal(s, self._flag) for s in STOP_SIGNALS}  # after Lightning's own handlers

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 >= trainer.num_training_batches or not self._asked(trainer):
            return
        module.on_train_batch_end(outputs, batch, batch_idx)  # Lightning's own call never comes: the process ends
        trainer.save_checkpoint(self.last, weights_only=False)  # the whole state: optimizer, loops, callbacks
        self._stop(trainer, f"saved {self.last} at epoch {trainer.current_epoch + 1}, after step {batch_idx + 1}")

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._asked(trainer):
            self._stop(trainer, f"stopped after epoch {trainer.current_epoch}, whose end saved {self.last}")

    def _asked(self, trainer: L.Trainer) -> bool:
        return trainer.strategy.reduce_boolean_decision(bool(self.received), all=False)  # every rank agrees

    def _stop(self, trainer: L.Trainer, done: str) -> None:
        received = signal.Signals(self.received or signal.SIGTERM)
        job = os.environ.get("SLURM_JOB_ID")
        after = "amf train --resume continues from there"
        if received == signal.SIGUSR1 and job and trainer.is_global_zero:
            after = requeue(job)
        if trainer.is_global_zero:
            print(f"[{self.name}] {received.name}: {done} (global step {trainer.global_step}); {after}", flush=True)
        raise SystemExit(128 + received)

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


class RankReport(Callback):
    """Several processes (DDP): each prints, when training ends, one line with its rank and a digest of its
    weights, which agree when the ranks trained one model (every rank's log line, not rank 0's only)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            digest = hashlib.sha256()
            for tensor in module.state_dict().values():
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            print(f"[{self.name}] rank {trainer.global_rank} of {trainer.world_size}: weights "
                  f"{digest.hexdigest()[:16]}", flush=True)


def requeue(job: str) -> str:
    """``scontrol requeue JOB``; what happened, for the log line."""
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"requeue of SLURM job {job} failed ({exc}): resubmit it"
    if done.returncode:
        return f"requeue of SLURM job {job} failed ({done.stderr.strip()}): resubmit it"
    return f"requeued SLURM job {job}: it continues from there"
