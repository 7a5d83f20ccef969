"""``amf calibrate``: the ensemble's decision threshold, vote rule and test-time augmentation, chosen on the
validation parts only.

    amf calibrate runs/amibr-mtl-e25 [runs/second-run] --manifest ../shared/data/amibr/manifest.csv --split train \
        [--tta auto] [--vote auto] [--write]

Each fold model predicts its own validation part (training/validation.py), never the test split; the members of a
fold are its models in the sources given. The choices (training/choose.py): ``--tta auto`` scores none and d4 at
threshold 0.5 and keeps the better (``--tta none|d4`` fixes it); ``--vote auto`` scores each rule at its best
shared threshold and keeps majority unless another gains at least VOTE_MIN_GAIN (``--vote RULE`` fixes it).
Sources: run or fold folders (PyTorch, fp32) and exported ensembles (their members as the container runs them).
Several sources of the same folds are also compared as candidate ensembles (training/compare.py).
Writes ``calibration.json`` in each run folder (never into an exported ensemble) and ``--out``; ``--write`` also
puts the threshold into every fold's ``config.json`` (export.py carries it into ``ensemble.json``; the vote rule
goes there by ``amf export --vote``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from runtime.contract import VOTE_RULES, is_exported
from training import validation
from training.choose import choose_tta, choose_vote, score_votes
from training.compare import compare_sources, comparison_table
from training.data import PatchSet, load
from training.run_files import CONFIG_FILE, find_fold_checkpoints


def calibrate(sources: list[str | Path], data: PatchSet, tta: str = "none", batch_size: int = 64,
              device: str = "cpu", vote: str = "auto") -> dict:
    """Each fold model of ``sources`` (run or fold folders, or exported ensembles) on its validation part of
    ``data``. ``tta``: the mode the threshold is chosen for (none | d4), or ``auto``: score both at 0.5 and choose
    d4 only when it is higher. ``vote``: the vote rule the threshold is chosen for, or ``auto``: each rule at its
    best threshold, chosen by :func:`training.choose.choose_vote`. With several sources, ``comparison`` scores each
    one alone, all of them together and the better one per fold (:func:`training.compare.compare_sources`), or
    says why it cannot (``skipped``: a source lacks a fold, e.g. a continuation of one fold)."""
    members = [m for source in sources for m in validation.members(source)]
    rows = validation.validation_rows(members, data)
    records = validation.describe(members, rows)
    scores = {}  # tta mode -> each member's (labels, probabilities)
    for mode in ("none", "d4") if tta in ("d4", "auto") else ("none",):
        scores[mode] = validation.member_scores(members, rows, data, mode, batch_size, device)
        for record, ba in zip(records, validation.ba_at_half(scores[mode])):
            record["ba_at_0.5" + ("_tta" if mode == "d4" else "")] = ba
    doc: dict = {"folds": records, "mean_ba_at_0.5": float(np.mean([r["ba_at_0.5"] for r in records]))}
    if "d4" in scores:
        doc["mean_ba_at_0.5_tta"] = float(np.mean([r["ba_at_0.5_tta"] for r in records]))
    if tta == "auto":
        tta = choose_tta(doc["mean_ba_at_0.5"], doc["mean_ba_at_0.5_tta"])
    per_fold = validation.by_fold(records, scores[tta])
    votes = score_votes(per_fold, VOTE_RULES if vote == "auto" else (vote,))
    chosen = choose_vote({v: scored["mean_ba"] for v, scored in votes.items()}) if vote == "auto" else vote
    doc.update({"tta": tta, "vote": chosen, "threshold": votes[chosen]["threshold"],
                "mean_ba_at_threshold": votes[chosen]["mean_ba"],
                "members_per_fold": {name: p.shape[1] for name, (_, p) in per_fold.items()}, "vote_rules": votes})
    distinct = list(dict.fromkeys(str(s) for s in sources))
    if len(distinct) > 1:
        doc["comparison"] = compare_sources(records, scores[tta], distinct)
    return doc


def write_threshold(run: str | Path, threshold: float) -> None:
    """``--write``: the threshold into each fold's ``config.json`` of a run folder."""
    for folder in find_fold_checkpoints(run):
        config = json.loads((folder / CONFIG_FILE).read_text())
        config["threshold"] = threshold
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def run(args: argparse.Namespace) -> None:
    """``amf calibrate`` (arguments: cli/main.py). ``calibration.json`` goes into scores run folder given (never into
    an exported ensemble) and into ``--out``; the comparison of several sources also as ``comparison.md``."""
    data = load(args.data, args.split)
    doc = calibrate(args.runs, data, args.tta, args.batch_size, args.device, args.vote)
    print(json.dumps(doc, indent=2))
    comparison = doc.get("comparison") or {}
    table = comparison_table(comparison) if "decision" in comparison else None
    if "skipped" in comparison:
        print(f"not compared as ensembles: {comparison['skipped']}")
    if table:
        print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "calibration.json").write_text(json.dumps(doc, indent=2) + "\n")
        if table:
            (args.out / "comparison.md").write_text(table + "\n")
    for run_folder in (r for r in args.runs if not is_exported(r)):
        (Path(run_folder) / "calibration.json").write_text(json.dumps(doc, indent=2) + "\n")
        if args.write:
            write_threshold(run_folder, doc["threshold"])
