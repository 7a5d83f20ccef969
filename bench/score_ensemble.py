"""Score exported ensembles (default: the shipped weights/) on a labelled manifest, through the same
runtime code as process.py (runtime.ensemble: ONNX session, TTA, vote). Prints the Markdown table of
balanced accuracy with 95 % bootstrap intervals (resampling slides where the manifest names them).
Given two ``--weights`` folders it also prints the paired interval of the difference of their votes.

    python bench/score_ensemble.py --manifest ../shared/data/amibr/manifest.csv --split test \
        [--weights weights [--weights other/weights]] [--tta none|d4] [--out reports/shipped]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.contract import TTA_MODES, default_weights  # noqa: E402
from runtime.ensemble import Ensemble  # noqa: E402
from training.data import FORMATS, load_patches  # noqa: E402
from training.metrics import bootstrap_ba_difference, bootstrap_note, evaluate_models, markdown_table, write_report  # noqa: E402


def score(weights: Path, images: np.ndarray, tta: str | None, prefix: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each fold model and the vote of one exported ensemble: name -> (probability, predicted class)."""
    ensemble = Ensemble(weights, expand_weights=True, tta=tta)
    start = time.perf_counter()
    pred = ensemble.predict(images)
    seconds = time.perf_counter() - start
    print(f"{weights}: {len(images)} patches, {ensemble.provider}, {seconds:.1f} s "
          f"({len(images) / seconds:.1f} patches/s)")
    results = {f"{prefix}{name}": (pred.fold_probs[:, i], pred.fold_probs[:, i] >= ensemble.thresholds[i])
               for i, name in enumerate(ensemble.spec.fold_names)}
    results[f"{prefix}ensemble vote (tta {ensemble.tta})"] = (pred.confidence, pred.atypical)
    return results


def difference_table(table: dict, labels: np.ndarray, domains: np.ndarray, groups: np.ndarray | None,
                     votes: dict[str, np.ndarray], n: int) -> str:
    """One row: BA(vote A) - BA(vote B) per column of ``table``, with its paired bootstrap interval."""
    (name_a, a), (name_b, b) = votes.items()
    cells = []
    for column in table[name_a]:
        keep = np.ones(len(labels), bool) if column == "all" else domains == column
        lo, hi = bootstrap_ba_difference(labels[keep], a[keep], b[keep], None if groups is None else groups[keep], n)
        diff = table[name_a][column]["balanced_accuracy"] - table[name_b][column]["balanced_accuracy"]
        cells.append(f"{diff:+.4f} ({lo:+.3f} to {hi:+.3f})")
    return "\n".join([f"| paired difference | {' | '.join(table[name_a])} |", "|---" * (len(cells) + 1) + "|",
                      f"| vote A - vote B | {' | '.join(cells)} |"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--format", default="amibr", choices=[*FORMATS, "folders"])
    p.add_argument("--split", help="score only this split (e.g. test)")
    p.add_argument("--weights", type=Path, action="append",
                   help="exported ensemble folder; twice to compare two (default: as process.py)")
    p.add_argument("--tta", choices=TTA_MODES, help="override the ensemble spec's TTA mode")
    p.add_argument("--bootstrap", type=int, default=2000,
                   help="resamples for 95 %% intervals of BA, over slides where the manifest names them (0: off; "
                   "two ensembles' paired difference still gets 2000)")
    p.add_argument("--out", help="also write report.json/md, roc.png, confusion.png here")
    args = p.parse_args()
    weights = args.weights or [default_weights()]
    if len(weights) > 2:
        p.error("at most two --weights folders")
    data = load_patches(args.manifest, args.format)
    if args.split:
        data = data.where(split=args.split)
    results, votes = {}, {}
    for i, folder in enumerate(weights):
        part = score(folder, data.images, args.tta, f"{'AB'[i]}: " if len(weights) == 2 else "")
        vote_name = next(reversed(part))  # score() adds the vote last
        results, votes[vote_name] = results | part, part[vote_name][1]
    table = evaluate_models(data.labels, data.domains, results, data.slides, args.bootstrap)
    note = bootstrap_note(data.slides, args.bootstrap)
    print("", markdown_table(table), note, sep="\n")
    if len(weights) == 2:
        diff = difference_table(table, data.labels, data.domains, data.slides, votes, args.bootstrap or 2000)
        comparison = f"A = {weights[0]}, B = {weights[1]}; paired 95 % bootstrap interval:\n\n{diff}"
        print("", comparison, sep="\n")
        note = f"{note}\n\n{comparison}".strip()
    if args.out:
        title = f"{' vs '.join(w.name for w in weights)} on {Path(args.manifest).name} ({args.split or 'all'})"
        write_report(table, data.labels, results, args.out, title, note)


if __name__ == "__main__":
    main()
