"""Training on several devices (Lightning DDP, as ``--devices 2`` runs it): two CPU processes (gloo) train one short
epoch of one fold on the 16-patch fixture through ``train_fold``.

Checks: the validation predictions of every rank are gathered, each patch counted once although
DistributedSampler pads the validation set to a multiple of the process count (the fold's 3 validation patches
become 4, one repeated), so that val/ba equals a single-process validation of the same weights; and the
training sampler splits the data across the ranks (disjoint indices) rather than repeating it on each.
The run is a script in a subprocess: Lightning's DDP launcher starts rank 1 by running the same command again.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
from conftest import AMIBR_FIXTURE, ROOT

from training import train
from training.checkpoint import load_weights_only
from training.data import DataSource, load
from training.folds import Fold

# 3 validation patches, an odd count: DistributedSampler pads it to 4 for 2 processes
VAL_SLIDES = ("midog21-aperio-cs2/103.tiff", "midog21-aperio-cs2/141.tiff")

SCRIPT = """
import json, os, sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, {root!r})
from training import train, validation_epoch
from training.augment import AugmentConfig
from training.data import DataSource, load
from training.folds import Fold
from training.masks import generate_masks
from training.network import NetworkConfig
from training.recipe import Recipe
from training.sampling import DomainAwareSampler

out = Path({out!r})
rank = int(os.environ.get("LOCAL_RANK", "0"))
record = {{"train": {{}}, "val": {{}}, "metric_inputs": {{}}, "drawn": [], "loss_ema": None}}

def key(task):
    return f"{{task.recipe.sampling}}/{{task.current_epoch}}"

step = train.MitosisTask.training_step
def training_step(self, batch, batch_idx):
    record["train"].setdefault(key(self), []).extend(batch[-1].tolist())
    return step(self, batch, batch_idx)
train.MitosisTask.training_step = training_step

val_step = train.MitosisTask.validation_step
def validation_step(self, batch, batch_idx):
    record["val"].setdefault(key(self), []).extend(batch[-1].tolist())
    return val_step(self, batch, batch_idx)
train.MitosisTask.validation_step = validation_step

score = validation_epoch.balanced_accuracy_score
def balanced_accuracy_score(labels, predicted):
    record["metric_inputs"].setdefault(current[0], []).append(len(labels))
    return score(labels, predicted)
validation_epoch.balanced_accuracy_score = balanced_accuracy_score

draw = DomainAwareSampler.__iter__
def drawn(self):
    indices = list(draw(self))
    record["drawn"].append(indices)
    record["sampler"] = self
    yield from indices
DomainAwareSampler.__iter__ = drawn

data = load([DataSource(Path({manifest!r}))])
masks = generate_masks(data.images)
net = NetworkConfig(backbone="resnetv2_18", head_hidden=(32, 16), decoder_channels=(32, 16, 8))
still = AugmentConfig(d4=False, rotation_deg=0, stain_scale=0, stain_shift=0, brightness=0, contrast=0)
recipe = Recipe(epochs=1, batch_size=4, lr=1e-3, select="val_ba", seed=5, network=net, augment=still)
options = train.RunOptions(accelerator="cpu", devices=2, precision="32-true")
current = ["shuffle"]
train.train_fold(Fold(val_slides={val_slides!r}, index=0, n_splits=5), data, masks, recipe, out, options)
current[0] = "domain-aware"  # a second fold in the same processes, as the CLI runs its folds
train.train_fold(Fold(val_slides={val_slides!r}, index=1, n_splits=5), data, masks,
                 replace(recipe, epochs=2, sampling="domain-aware"), out, options)
record["loss_ema"] = record.pop("sampler").loss_ema.tolist()
(out / f"rank{{rank}}.json").write_text(json.dumps(record))
"""


def test_two_process_ddp_gathers_validation_once_per_patch_and_splits_training(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT.format(root=str(ROOT), out=str(out), manifest=str(AMIBR_FIXTURE / "manifest.csv"),
                                    val_slides=VAL_SLIDES))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]

    data = load([DataSource(AMIBR_FIXTURE / "manifest.csv")])
    fold = Fold(val_slides=VAL_SLIDES, index=0, n_splits=5)
    train_idx, val_idx, _ = fold.indices(data.domains, data.slides)
    assert (len(train_idx), len(val_idx)) == (13, 3)

    # shuffled training: each rank gets its own share (13 padded to 14, 7 each; one batch of 4, drop_last)
    seen = [r["train"]["shuffle/0"] for r in ranks]
    assert [len(s) for s in seen] == [4, 4] and not set(seen[0]) & set(seen[1]), f"both ranks trained on {seen}"
    # validation: 2 patches per rank, one of the 3 seen twice in all; the metrics count each once
    for sampling in ("shuffle/0", "domain-aware/0", "domain-aware/1"):
        val_seen = ranks[0]["val"][sampling] + ranks[1]["val"][sampling]
        assert sorted(set(val_seen)) == [0, 1, 2] and len(val_seen) == 4, val_seen
    for r in ranks:
        assert r["metric_inputs"] == {"shuffle": [3], "domain-aware": [3, 3]}
    # domain-aware sampling (with replacement, losses fed back): every rank draws the same list each epoch (the
    # distributed wrapper splits it between them), as every rank's sampler learns every rank's losses
    assert len(ranks[0]["drawn"]) == len(ranks[1]["drawn"]) == 2
    assert ranks[0]["drawn"] == ranks[1]["drawn"]
    assert ranks[0]["loss_ema"] == ranks[1]["loss_ema"]
    trained = {i for r in ranks for epoch in (0, 1) for i in r["train"][f"domain-aware/{epoch}"]}
    assert {i for i, loss in enumerate(ranks[0]["loss_ema"]) if loss > 0} == trained

    folder = out / fold.name
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert (out / "cv2of5" / "model.safetensors").is_file()
    rows = [r for r in csv.DictReader((folder / "metrics.csv").open()) if r.get("val/ba")]
    assert len(rows) == 1
    ddp_ba, ddp_auroc = float(rows[0]["val/ba"]), float(rows[0]["val/auroc"])

    # the same weights validated in one process: the same BA and AUROC
    state = load_weights_only(folder / "ckpt" / "last.ckpt")
    module = train.MitosisTask(**state["hyper_parameters"])
    module.load_state_dict(state["state_dict"])
    val = data.subset(val_idx)
    loader = torch.utils.data.DataLoader(train.tensors(val, np.zeros((len(val), 128, 128), bool),
                                                       np.zeros(len(val), int)), 64)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    metrics = trainer.validate(module, loader, verbose=False)[0]
    assert metrics["val/ba"] == ddp_ba
    assert metrics["val/auroc"] == pytest.approx(ddp_auroc, abs=1e-6)
