"""Choose the ensemble's decision threshold and test-time augmentation on the validation parts only.

    python -m training.calibrate runs/amibr-mtl-e25 --manifest ../shared/data/amibr/manifest.csv --split train \
        [--tta] [--write]

Each fold model predicts its own validation part (its held-out domain or slides), never the test split.
- TTA: the mean validation balanced accuracy at threshold 0.5 with and without D4 TTA; nothing is
  fitted, so the comparison is unbiased. D4 is recommended when it is higher.
- Threshold: one threshold shared by all folds (fitting one per fold would overfit a single domain),
  the grid value that maximises the mean validation balanced accuracy.
Writes ``calibration.json`` in the run folder; ``--write`` also puts the threshold into every fold's
``config.json`` (export.py carries it into ``ensemble.json``).

``--pick OUT`` with several runs of the same folds (e.g. a run and its continuation with ``--init``): for each
fold, the model with the highest validation balanced accuracy is copied to ``OUT/<fold>/``, and
``OUT/selection.json`` records every candidate's figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from training.checkpoint import CONFIG_FILE, WEIGHTS_FILE, find_fold_checkpoints, load_pruned
from training.data import FORMATS, load_patches
from training.evaluate import predict
from training.folds import Fold

GRID = np.round(np.arange(0.2, 0.81, 0.01), 2)


def best_shared_threshold(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(threshold, mean BA) over the grid for [(labels, probabilities)] of several folds; ties -> nearest 0.5."""
    scores = np.array([np.mean([balanced_accuracy_score(y, p >= t) for y, p in parts]) for t in GRID])
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    i = best[np.argmin(np.abs(GRID[best] - 0.5))]
    return float(GRID[i]), float(scores[i])


def calibrate(runs: list[str | Path], manifest: str, fmt: str = "amibr", split: str | None = None,
              tta: bool = False) -> dict:
    data = load_patches(manifest, fmt)
    if split:
        data = data.where(split=split)
    folds, plain, augmented = [], [], []
    for folder in (f for r in runs for f in find_fold_checkpoints(r)):
        net, config = load_pruned(folder)
        fold = Fold(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["fold"].items()})
        _, val, _ = fold.indices(data.domains, data.slides)
        if len(val) == 0:
            raise ValueError(f"{folder}: no validation patches of fold {fold.name} in {manifest}")
        y = data.labels[val]
        row = {"fold": folder.name, "model": str(folder), "patches": int(len(val)),
               "probs": predict(net, data.images[val])}
        plain.append((y, row["probs"]))
        row["ba_at_0.5"] = float(balanced_accuracy_score(y, row["probs"] >= 0.5))
        if tta:
            p = predict(net, data.images[val], tta=True)
            augmented.append((y, p))
            row["ba_at_0.5_tta"] = float(balanced_accuracy_score(y, p >= 0.5))
        del row["probs"]
        folds.append(row)
    doc: dict = {"folds": folds, "mean_ba_at_0.5": float(np.mean([f["ba_at_0.5"] for f in folds]))}
    if tta:
        doc["mean_ba_at_0.5_tta"] = float(np.mean([f["ba_at_0.5_tta"] for f in folds]))
        doc["tta"] = "d4" if doc["mean_ba_at_0.5_tta"] > doc["mean_ba_at_0.5"] else "none"
    threshold, score = best_shared_threshold(augmented if tta and doc["tta"] == "d4" else plain)
    doc.update({"threshold": threshold, "mean_ba_at_threshold": score})
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folder(s) with fold checkpoints")
    p.add_argument("--manifest", required=True, help="the manifest the folds were trained on")
    p.add_argument("--format", default="amibr", choices=list(FORMATS))
    p.add_argument("--split", help="the split the folds were trained on (e.g. train)")
    p.add_argument("--tta", action="store_true", help="also compare D4 test-time augmentation")
    p.add_argument("--write", action="store_true", help="write the threshold into each fold's config.json")
    p.add_argument("--pick", metavar="OUT", help="copy each fold's best model across the runs into this folder")
    args = p.parse_args(argv)
    doc = calibrate(args.runs, args.manifest, args.format, args.split, args.tta)
    if args.pick:
        print(json.dumps(pick_per_fold(doc, args.pick), indent=2))
        return
    print(json.dumps(doc, indent=2))
    for run in args.runs:
        (Path(run) / "calibration.json").write_text(json.dumps(doc, indent=2) + "\n")
        if args.write:
            for folder in find_fold_checkpoints(run):
                config = json.loads((folder / CONFIG_FILE).read_text())
                config["threshold"] = doc["threshold"]
                (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))


if __name__ == "__main__":
    main()
