"""Choose the ensemble's decision threshold and test-time augmentation on the validation parts only.

    amf calibrate runs/amibr-mtl-e25 --manifest ../shared/data/amibr/manifest.csv --split train [--tta auto] [--write]

Each fold model predicts its own validation part (its held-out domain or slides), never the test split.
- TTA (``--tta auto``): the mean validation balanced accuracy at threshold 0.5 with and without D4 TTA;
  nothing is fitted, so the comparison is unbiased. D4 is chosen when it is higher. ``--tta none|d4`` fixes it.
- Threshold: one threshold shared by all folds (fitting one per fold would overfit a single domain),
  the grid value that maximises the mean validation balanced accuracy under the chosen TTA.
Writes ``calibration.json`` in the run folder; ``--write`` also puts the threshold into every fold's
``config.json`` (export.py carries it into ``ensemble.json``).

``amf pick RUN RUN ... --out OUT`` with several runs of the same folds (e.g. a run and its continuation with
``--init``): for each fold, the model with the highest validation balanced accuracy is copied to
``OUT/<fold>/``, and ``OUT/selection.json`` records every candidate's figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from training.checkpoint import load_pruned
from training.data import ManifestError, PatchSet, load_split
from training.evaluate import predict
from training.folds import Fold
from training.run_files import CONFIG_FILE, WEIGHTS_FILE, find_fold_checkpoints

GRID = np.round(np.arange(0.2, 0.81, 0.01), 2)


def best_shared_threshold(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(threshold, mean BA) over the grid for [(labels, probabilities)] of several folds; ties -> nearest 0.5."""
    scores = np.array([np.mean([balanced_accuracy_score(y, p >= t) for y, p in parts]) for t in GRID])
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    i = best[np.argmin(np.abs(GRID[best] - 0.5))]
    return float(GRID[i]), float(scores[i])


def calibrate(runs: list[str | Path], data: PatchSet, tta: str = "none", batch_size: int = 64,
              device: str = "cpu") -> dict:
    """Each fold model on its validation part of ``data``. ``tta``: the mode the threshold is chosen for
    (none | d4), or ``auto``: score both at 0.5 and choose d4 only when it is higher."""
    modes = ("none", "d4") if tta in ("d4", "auto") else ("none",)
    folds, parts = [], {m: [] for m in modes}
    for folder in (f for r in runs for f in find_fold_checkpoints(r)):
        net, config = load_pruned(folder)
        fold = Fold(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["fold"].items()})
        _, val, _ = fold.indices(data.domains, data.slides)
        if len(val) == 0:
            raise ManifestError(f"{folder}: no validation patches of fold {fold.name} in the data (--manifest, "
                                "--split: the ones the folds were trained on)")
        y = data.labels[val]
        row = {"fold": folder.name, "model": str(folder), "patches": int(len(val))}
        for mode in modes:
            p = predict(net, data.images[val], batch_size, mode, device, label=f"{folder} (tta {mode})")
            parts[mode].append((y, p))
            row["ba_at_0.5" + ("_tta" if mode == "d4" else "")] = float(balanced_accuracy_score(y, p >= 0.5))
        folds.append(row)
    doc: dict = {"folds": folds, "mean_ba_at_0.5": float(np.mean([f["ba_at_0.5"] for f in folds]))}
    if "d4" in modes:
        doc["mean_ba_at_0.5_tta"] = float(np.mean([f["ba_at_0.5_tta"] for f in folds]))
    if tta == "auto":
        tta = "d4" if doc["mean_ba_at_0.5_tta"] > doc["mean_ba_at_0.5"] else "none"
    threshold, score = best_shared_threshold(parts[tta])
    doc.update({"tta": tta, "threshold": threshold, "mean_ba_at_threshold": score})
    return doc


def pick_per_fold(doc: dict, out: str | Path) -> dict:
    """Copy each fold's best model (validation BA at 0.5; ties keep the earlier run) into ``out``."""
    out = Path(out)
    best: dict[str, dict] = {}
    for row in doc["folds"]:
        if row["fold"] not in best or row["ba_at_0.5"] > best[row["fold"]]["ba_at_0.5"]:
            best[row["fold"]] = row
    for name, row in best.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for file in (WEIGHTS_FILE, CONFIG_FILE):
            shutil.copy2(Path(row["model"]) / file, out / name / file)
    selection = {"chosen": {name: row["model"] for name, row in sorted(best.items())},
                 "mean_ba_at_0.5": float(np.mean([row["ba_at_0.5"] for row in best.values()])),
                 "candidates": doc["folds"]}
    (out / "selection.json").write_text(json.dumps(selection, indent=2) + "\n")
    return selection


def run(args: argparse.Namespace) -> None:
    """``amf calibrate`` (arguments: cli/main.py)."""
    data = load_split(args.manifest, args.format, args.root, args.split)
    doc = calibrate(args.runs, data, args.tta, args.batch_size, args.device)
    print(json.dumps(doc, indent=2))
    for run_folder in args.runs:
        (Path(run_folder) / "calibration.json").write_text(json.dumps(doc, indent=2) + "\n")
        if args.write:
            for folder in find_fold_checkpoints(run_folder):
                config = json.loads((folder / CONFIG_FILE).read_text())
                config["threshold"] = doc["threshold"]
                (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def run_pick(args: argparse.Namespace) -> None:
    """``amf pick`` (arguments: cli/main.py)."""
    data = load_split(args.manifest, args.format, args.root, args.split)
    doc = calibrate(args.runs, data, "none", args.batch_size, args.device)
    print(json.dumps(pick_per_fold(doc, args.out), indent=2))
