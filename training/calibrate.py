"""Choose the ensemble's decision threshold, vote rule and test-time augmentation on the validation parts only.

    amf calibrate runs/amibr-mtl-e25 [runs/second-run] --manifest ../shared/data/amibr/manifest.csv --split train \
        [--tta auto] [--vote auto] [--write]

Each fold model predicts its own validation part (its held-out domain or slides), never the test split. The
members of a fold are its models in the runs given (fold folders of the same name).
- TTA (``--tta auto``): the mean validation balanced accuracy at threshold 0.5 with and without D4 TTA;
  nothing is fitted, so the comparison is unbiased. D4 is chosen when it is higher. ``--tta none|d4`` fixes it.
- Vote rule and threshold: one threshold shared by all folds (fitting one per fold would overfit a single
  domain). Each rule (runtime/vote.py) is scored on each fold's validation part with that fold's members only
  (the other folds' models trained on that domain), at the grid threshold that maximises the mean validation
  balanced accuracy under the chosen TTA. ``--vote auto`` keeps majority unless another rule gains at least
  RULE_MIN_GAIN; with one model per fold every rule is that model at the threshold, so majority stays.
  ``--vote RULE`` fixes it.
Writes ``calibration.json`` in the run folder; ``--write`` also puts the threshold into every fold's
``config.json`` (export.py carries it into ``ensemble.json``; the rule goes there by ``amf export --vote``).

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

from runtime.contract import MAJORITY, VOTE_RULES
from runtime.vote import vote
from training.checkpoint import load_pruned
from training.data import ManifestError, PatchSet, load_datasets
from training.evaluate import predict
from training.folds import Fold
from training.run_files import CONFIG_FILE, WEIGHTS_FILE, find_fold_checkpoints

GRID = np.round(np.arange(0.2, 0.81, 0.01), 2)
RULE_MIN_GAIN = 0.005  # mean validation BA another vote rule must gain over majority (seed 001's) to replace it


def fold_vote(probs: np.ndarray, threshold: float, rule: str = MAJORITY) -> np.ndarray:
    """One fold's answers: its members' probabilities, [N] (one model) or [N, M], voting at ``threshold``."""
    probs = probs.reshape(len(probs), -1)
    return vote(probs, np.full(probs.shape[1], threshold), rule, ["one fold"] * probs.shape[1])[0]


def best_shared_threshold(parts: list[tuple[np.ndarray, np.ndarray]], rule: str = MAJORITY) -> tuple[float, float]:
    """(threshold, mean BA) over the grid for [(labels, probabilities of the fold's members)] of several folds,
    the members voting by ``rule``; ties -> nearest 0.5."""
    scores = np.array([np.mean([balanced_accuracy_score(y, fold_vote(p, t, rule)) for y, p in parts])
                       for t in GRID])
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    i = best[np.argmin(np.abs(GRID[best] - 0.5))]
    return float(GRID[i]), float(scores[i])


def score_rules(per_fold: dict[str, tuple[np.ndarray, np.ndarray]], rules=VOTE_RULES) -> dict[str, dict]:
    """fold -> (validation labels, its members' probabilities [N, M]) -> per rule: the best shared threshold,
    the mean validation BA there, and each fold's BA (``ba``)."""
    scores = {}
    for rule in rules:
        threshold, mean_ba = best_shared_threshold(list(per_fold.values()), rule)
        ba = {name: float(balanced_accuracy_score(y, fold_vote(p, threshold, rule)))
              for name, (y, p) in per_fold.items()}
        scores[rule] = {"threshold": threshold, "mean_ba": mean_ba, "ba": ba}
    return scores


def choose_rule(mean_ba: dict[str, float]) -> str:
    """The vote rule to ship from each rule's mean validation BA: majority unless another gains at least
    RULE_MIN_GAIN (the first of VOTE_RULES among equals)."""
    best = max(VOTE_RULES, key=lambda rule: mean_ba[rule])
    return best if round(mean_ba[best] - mean_ba[MAJORITY], 12) >= RULE_MIN_GAIN else MAJORITY


def calibrate(runs: list[str | Path], data: PatchSet, tta: str = "none", batch_size: int = 64,
              device: str = "cpu", rule: str = "auto") -> dict:
    """Each fold model on its validation part of ``data``. ``tta``: the mode the threshold is chosen for
    (none | d4), or ``auto``: score both at 0.5 and choose d4 only when it is higher. ``rule``: the vote rule
    the threshold is chosen for, or ``auto``: each rule at its best threshold, chosen by :func:`choose_rule`."""
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
    members = {row["fold"]: [] for row in folds}  # fold -> its models' (labels, probabilities)
    for row, part in zip(folds, parts[tta]):
        if members[row["fold"]] and not np.array_equal(members[row["fold"]][0][0], part[0]):
            raise ManifestError(f"{row['model']}: the members of fold {row['fold']} validate on different patches")
        members[row["fold"]].append(part)
    per_fold = {name: (ps[0][0], np.stack([p for _, p in ps], axis=1)) for name, ps in members.items()}
    rules = score_rules(per_fold, VOTE_RULES if rule == "auto" else (rule,))
    chosen = choose_rule({r: v["mean_ba"] for r, v in rules.items()}) if rule == "auto" else rule
    doc.update({"tta": tta, "vote": chosen, "threshold": rules[chosen]["threshold"],
                "mean_ba_at_threshold": rules[chosen]["mean_ba"], "members_per_fold":
                {name: len(ps) for name, ps in members.items()}, "vote_rules": rules})
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
    data = load_datasets(args.data, args.split)
    doc = calibrate(args.runs, data, args.tta, args.batch_size, args.device, args.vote)
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
    data = load_datasets(args.data, args.split)
    doc = calibrate(args.runs, data, "none", args.batch_size, args.device, MAJORITY)
    print(json.dumps(pick_per_fold(doc, args.out), indent=2))
