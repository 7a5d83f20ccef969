"""One validation epoch's predictions, per validated network (``val``: the raw weights; ``val_avg``: their average),
scored over every process with each patch counted once.

Several processes (DDP): DistributedSampler pads the validation set to a multiple of the process count by repeating
up to W - 1 patches; the probabilities, labels and row indices of every rank are gathered and the repeats dropped, so
that BA and AUROC equal a single process's. The mean loss is Lightning's way (batch-size-weighted, over all ranks,
padding included: off by at most W - 1 of N patches).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score


class ValidationEpoch:
    def __init__(self) -> None:
        self._batches: dict[str, dict[str, list[torch.Tensor]]] = {}  # prefix -> probs, loss sums, labels, index
        self._scores: dict[str, dict[str, float]] | None = None

    def add(self, prefix: str, probs: torch.Tensor, loss: torch.Tensor, labels: torch.Tensor,
            index: torch.Tensor) -> None:
        """One batch of the network logged under ``prefix``: its probabilities, mean loss, labels, row indices."""
        batches = self._batches.setdefault(prefix, {"probs": [], "loss": [], "labels": [], "index": []})
        batches["probs"].append(probs.detach())
        batches["loss"].append(loss.detach().float() * len(labels))
        batches["labels"].append(labels.detach())
        batches["index"].append(index.detach())

    def scores(self, module: L.LightningModule) -> dict[str, dict[str, float]]:
        """Per prefix: ``ba`` and ``auroc`` (at 0.5, each patch once) and the mean ``loss``, over every process.
        Computed once (every rank calls it, in the same order): the selection between raw and averaged weights
        asks before the task logs them."""
        if self._scores is None:
            self._scores = {prefix: _score(module, batches) for prefix, batches in self._batches.items()}
        return self._scores


def _score(module: L.LightningModule, batches: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    gather = lambda key: module.all_gather(torch.cat(batches[key])).reshape(-1).cpu().numpy()  # noqa: E731
    index = gather("index")
    once = np.unique(index, return_index=True)[1]  # each patch once: DistributedSampler pads with repeats
    labels, probs = gather("labels")[once] >= 0.5, gather("probs")[once]
    auroc = roc_auc_score(labels, probs) if 0 < labels.sum() < len(labels) else float("nan")
    loss = module.all_gather(torch.stack(batches["loss"]).sum()).sum().item() / len(index)
    return {"ba": float(balanced_accuracy_score(labels, probs >= 0.5)), "auroc": float(auroc), "loss": loss}
