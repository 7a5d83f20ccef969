"""Score fold checkpoints (and their majority vote) on a labelled manifest.

    python -m training.evaluate runs/amibr-mtl --manifest ../shared/data/amibr/manifest.csv --split test \
        --out reports/amibr-mtl

Writes report.json, report.md (balanced accuracy, sensitivity, specificity, AUROC; overall and per
domain; each fold model and the vote), roc.png and confusion.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from runtime import tta as test_time
from runtime.contract import TTA_VIEWS
from runtime.vote import vote
from training.checkpoint import find_fold_checkpoints, load_pruned
from training.data import FORMATS, load_patches
from training.metrics import bootstrap_note, evaluate_models, markdown_table, write_report
from training.network import to_input


@torch.inference_mode()
def predict(net: torch.nn.Module, images: np.ndarray, batch_size: int = 64, tta: bool = False) -> np.ndarray:
    """P(atypical) for uint8 [N,H,W,3] patches, fp32 on CPU; ``tta``: the container's D4 test-time
    augmentation (runtime/tta.py), the mean over the 8 views."""
    mode = "d4" if tta else "none"
    step = max(1, batch_size // TTA_VIEWS[mode])
    probs = []
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        views = torch.from_numpy(test_time.views(chunk, mode))
        probs.append(test_time.mean_over_views(torch.sigmoid(net(to_input(views))).numpy(), len(chunk)))
    return np.concatenate(probs)


def evaluate_run(runs: list[str | Path], images: np.ndarray, tta: bool = False,
                 vote_folds: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per fold model and the vote: name -> (probability, predicted class). Fold models are named by their
    folder, or ``run/fold`` where folders of several runs share a name."""
    folders = [f for r in runs for f in find_fold_checkpoints(r)]
    clash = len({f.name for f in folders}) < len(folders)
    results, columns, thresholds = {}, [], []
    for folder in folders:
        net, config = load_pruned(folder)
        p = predict(net, images, tta=tta)
        t = float(config.get("threshold", 0.5))
        results[f"{folder.parent.name}/{folder.name}" if clash else folder.name] = (p, p >= t)
        columns.append(p)
        thresholds.append(t)
    if vote_folds and len(columns) > 1:
        pred, conf = vote(np.stack(columns, 1), thresholds)
        results[f"vote ({len(columns)} folds)"] = (conf, pred)
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folder(s) with fold checkpoints, or fold folders")
    p.add_argument("--manifest", required=True)
    p.add_argument("--format", default="amibr", choices=[*FORMATS, "folders"])
    p.add_argument("--split", help="evaluate only this split (e.g. test)")
    p.add_argument("--tta", action="store_true", help="average over the 8 rotations/flips")
    p.add_argument("--no-vote", action="store_true", help="score the models one by one only (e.g. ablation variants)")
    p.add_argument("--bootstrap", type=int, default=2000,
                   help="resamples for 95 %% intervals of BA, over slides where the manifest names them (0: off)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    data = load_patches(args.manifest, args.format)
    if args.split:
        data = data.where(split=args.split)
    results = evaluate_run(args.runs, data.images, tta=args.tta, vote_folds=not args.no_vote)
    table = evaluate_models(data.labels, data.domains, results, data.slides, args.bootstrap)
    title = f"{', '.join(Path(r).name for r in args.runs)} on {Path(args.manifest).name}"
    title += f" ({args.split})" if args.split else ""
    note = bootstrap_note(data.slides, args.bootstrap)
    write_report(table, data.labels, results, args.out, title, note)
    print(markdown_table(table), note, sep="\n")


if __name__ == "__main__":
    main()
