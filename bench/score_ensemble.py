"""Score an exported ensemble (default: the shipped weights/) on a labelled manifest, through the same
runtime code as process.py (model.ensemble: ONNX session, TTA, vote). Prints the Markdown table.

    python bench/score_ensemble.py --manifest ../shared/data/amibr/manifest.csv --split test \
        [--weights weights] [--tta none|d4] [--out reports/shipped]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.data import FORMATS, load_patches  # noqa: E402
from model.ensemble import Ensemble  # noqa: E402
from model.metrics import evaluate_models, markdown_table, write_report  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--format", default="amibr", choices=[*FORMATS, "folders"])
    p.add_argument("--split", help="score only this split (e.g. test)")
    p.add_argument("--weights", default=str(Path(__file__).resolve().parents[1] / "weights"))
    p.add_argument("--tta", choices=["none", "d4"], help="override the manifest's TTA switch")
    p.add_argument("--out", help="also write report.json/md, roc.png, confusion.png here")
    args = p.parse_args()
    data = load_patches(args.manifest, args.format)
    if args.split:
        data = data.where(split=args.split)
    ensemble = Ensemble(args.weights, expand_weights=True)
    if args.tta:
        ensemble.tta = args.tta
    start = time.perf_counter()
    pred = ensemble.predict(data.images)
    seconds = time.perf_counter() - start
    names = [f["name"] for f in ensemble.spec["folds"]]
    results = {name: (pred.fold_probs[:, i], pred.fold_probs[:, i] >= ensemble.thresholds[i]) for i, name in enumerate(names)}
    results[f"ensemble vote (tta {ensemble.tta})"] = (pred.confidence, pred.atypical)
    table = evaluate_models(data.labels, data.domains, results)
    print(f"{len(data)} patches, {ensemble.provider}, {seconds:.1f} s ({len(data) / seconds:.1f} patches/s)\n")
    print(markdown_table(table))
    if args.out:
        write_report(table, data.labels, results, args.out, f"{Path(args.weights).name} on {Path(args.manifest).name} ({args.split or 'all'})")


if __name__ == "__main__":
    main()
