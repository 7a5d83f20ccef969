"""``amf pick RUN RUN ... --out OUT``: per fold, the best of several runs' models of the same folds (e.g. a run
and its continuation with ``--init``).

Each fold model predicts its own validation part (never the test split, no TTA); the one with the highest
balanced accuracy at threshold 0.5 is copied to ``OUT/<fold>/`` (ties keep the earlier run), and
``OUT/selection.json`` records every candidate's figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from training import validation
from training.data import PatchSet, load
from training.run_files import CONFIG_FILE, WEIGHTS_FILE


def candidates(runs: list[str | Path], data: PatchSet, batch_size: int = 64, device: str = "cpu") -> list[dict]:
    """Each fold model of ``runs``: its record (training/validation.py) with ``ba_at_0.5`` on its validation
    part."""
    members = [m for run in runs for m in validation.members(run)]
    rows = validation.validation_rows(members, data)
    records = validation.describe(members, rows)
    scores = validation.member_scores(members, rows, data, "none", batch_size, device)
    for record, ba in zip(records, validation.ba_at_half(scores)):
        record["ba_at_0.5"] = ba
    return records


def pick_per_fold(records: list[dict], out: str | Path) -> dict:
    """Copy each fold's best model (validation BA at 0.5; ties keep the earlier run) into ``out``."""
    out = Path(out)
    best: dict[str, dict] = {}
    for record in records:
        if record["fold"] not in best or record["ba_at_0.5"] > best[record["fold"]]["ba_at_0.5"]:
            best[record["fold"]] = record
    for name, record in best.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for file in (WEIGHTS_FILE, CONFIG_FILE):
            shutil.copy2(Path(record["model"]) / file, out / name / file)
    selection = {"chosen": {name: record["model"] for name, record in sorted(best.items())},
                 "mean_ba_at_0.5": float(np.mean([record["ba_at_0.5"] for record in best.values()])),
                 "candidates": records}
    (out / "selection.json").write_text(json.dumps(selection, indent=2) + "\n")
    return selection


def run(args: argparse.Namespace) -> None:
    """``amf pick`` (arguments: cli/main.py)."""
    data = load(args.data, args.split)
    records = candidates(args.runs, data, args.batch_size, args.device)
    print(json.dumps(pick_per_fold(records, args.out), indent=2))
