"""Score fold checkpoints (and their majority vote) on a labelled manifest.

    python -m model.evaluate runs/amibr-mtl --manifest ../shared/data/amibr/manifest.csv --split test \
        --out reports/amibr-mtl

Writes report.json, report.md (balanced accuracy, sensitivity, specificity, AUROC; overall and per
domain; each fold model and the vote), roc.png and confusion.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import find_fold_checkpoints, load_pruned
from model.data import FORMATS, load_patches
from model.metrics import bootstrap_note, evaluate_models, markdown_table, write_report
from model.network import ClassifierNet
from model.vote import vote


@torch.inference_mode()
def predict(net: ClassifierNet, images: np.ndarray, batch_size: int = 64, tta: bool = False) -> np.ndarray:
    """P(atypical) for uint8 [N,H,W,3] patches, fp32 on CPU; ``tta`` averages over the 8 D4 variants."""
    probs = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).float() / 255
        views = [torch.rot90(v, k, (2, 3)) for v in (x, x.flip(3)) for k in range(4)] if tta else [x]
        probs.append(torch.stack([torch.sigmoid(net(v)) for v in views]).mean(0))
    return torch.cat(probs).numpy()


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
    title = f"{', '.join(Path(r).name for r in args.runs)} on {Path(args.manifest).name}" + (f" ({args.split})" if args.split else "")
    note = bootstrap_note(data.slides, args.bootstrap)
    write_report(table, data.labels, results, args.out, title, note)
    print(markdown_table(table), note, sep="\n")


if __name__ == "__main__":
    main()
