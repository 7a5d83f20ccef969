"""``amf train``'s checks of everything that can fail before the first training step, run before anything is
written: a run that cannot start says why in one line and leaves ``--out`` as it was.

Per fold to train: a training and a validation part (selection needs one), at least one batch of training rows
(the loaders drop an incomplete batch: fewer rows would give no training step at all), a folder name of its own
(names are made safe for file systems: two folds must not share one), ``--init``'s weights for it (tensors the
network has, of its shapes: read from the file's header against the recipe's network, built once), and with
``--resume`` a ``ckpt/last.ckpt`` that can be continued from (a corrupt or truncated one is a ModelError, exit 4,
before the fold's files are touched).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from runtime.errors import InputError
from training.checkpoint import check_resumable, init_mismatch
from training.data import ManifestError, PatchSet
from training.folds import Fold
from training.network import build_network
from training.recipe import Recipe
from training.run_files import CHECKPOINT_FOLDER, LAST_CHECKPOINT, fold_folder, fold_weights


def fold_rows(fold: Fold, data: PatchSet, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) row indices of ``fold`` in ``data``, less the rows ``exclude`` keeps out of training
    (``--drop-overlap``); a ManifestError when either part is empty."""
    train, val, _ = fold.indices(data.domains, data.slides)
    if exclude is not None:
        train = np.setdiff1d(train, exclude)
    if not len(train) or not len(val):
        raise ManifestError(f"fold {fold.name}: {len(train)} training and {len(val)} validation patches in the data "
                            f"(domains: {', '.join(sorted(set(map(str, data.domains))))})")
    return train, val


def check_run(folds: list[Fold], data: PatchSet, recipe: Recipe, exclude: dict[str, np.ndarray], out: Path, *,
              resume: bool = False, init: Path | None = None) -> None:
    """Everything of the module docstring, for ``folds`` (the folds still to train); raises the first problem."""
    folders: dict[Path, str] = {}
    net = None  # the recipe's network, built once for --init's check
    for fold in folds:
        train, _ = fold_rows(fold, data, exclude.get(fold.name))
        if len(train) < recipe.batch_size:
            raise InputError(f"fold {fold.name}: {len(train)} training rows, fewer than one batch of "
                             f"{recipe.batch_size} (an incomplete batch is dropped): --batch-size {len(train)} or "
                             "less, or more data")
        folder = fold_folder(out, fold.name)
        if folder in folders:
            raise InputError(f"folds {folders[folder]} and {fold.name} would share the folder {folder}: rename a "
                             "domain")
        folders[folder] = fold.name
        last = folder / CHECKPOINT_FOLDER / LAST_CHECKPOINT
        if resume and last.is_file():
            check_resumable(last)
        elif init is not None:  # (a resumed fold continues from its checkpoint, not from --init)
            net = net or build_network(replace(recipe.network, pretrained=False), train=True)
            problem = init_mismatch(net, fold_weights(init, fold.name))
            if problem:
                raise InputError(f"--init {problem}")
