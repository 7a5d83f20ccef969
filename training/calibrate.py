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
- Sources: run or fold folders (PyTorch, fp32) and exported ensembles (their members through runtime.ensemble,
  as the container runs them). Several sources of the same folds are also compared as candidate ensembles
  (:func:`compare_sources`): each alone, all together, the better one per fold; the first source (e.g. the
  shipped ensemble) is replaced only by a gain of at least SHIP_MIN_GAIN mean validation BA.
Writes ``calibration.json`` in each run folder (never into an exported ensemble) and ``--out``; ``--write`` also
puts the threshold into every fold's ``config.json`` (export.py carries it into ``ensemble.json``; the rule goes
there by ``amf export --vote``).

``amf pick RUN RUN ... --out OUT`` with several runs of the same folds (e.g. a run and its continuation with
``--init``): for each fold, the model with the highest validation balanced accuracy is copied to
``OUT/<fold>/``, and ``OUT/selection.json`` records every candidate's figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from runtime.contract import MAJORITY, SPEC_FILE, VOTE_RULES, is_exported, read_spec
from runtime.errors import InputError, ModelError
from runtime.vote import vote
from training.checkpoint import load_pruned
from training.data import ManifestError, PatchSet, load
from training.evaluate import predict
from training.folds import Fold
from training.run_files import CONFIG_FILE, WEIGHTS_FILE, find_fold_checkpoints

GRID = np.round(np.arange(0.2, 0.81, 0.01), 2)
RULE_MIN_GAIN = 0.005  # mean validation BA another vote rule must gain over majority (seed 001's) to replace it
SHIP_MIN_GAIN = 0.005  # mean validation BA a candidate ensemble must gain over the baseline (the first source)


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


@dataclass(frozen=True)
class FoldModel:
    """One model of a fold, from a source: a run (or fold) folder's checkpoint, or a member of an exported
    ensemble (its output ``column``), scored as the container runs it."""

    source: str  # the RUN argument it comes from
    name: str  # the checkpoint folder, or ENSEMBLE/member
    group: str  # the fold it is a member of
    fold: Fold
    column: int | None = None  # exported ensembles only


def _fold(entry: dict | None, where: str) -> Fold:
    if not entry:
        raise ModelError(f"{where}: records no fold definition (re-export it, or give its run folder)")
    return Fold(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()})


def fold_models(source: str | Path) -> list[FoldModel]:
    """The fold models of a run (or fold) folder, or the members of an exported ensemble."""
    if is_exported(source):
        spec, doc = read_spec(source), json.loads((Path(source) / SPEC_FILE).read_text())
        return [FoldModel(str(source), f"{source}/{name}", group, _fold(entry.get("fold"), f"{spec.path}: {name}"), i)
                for i, (entry, name, group) in enumerate(zip(doc["folds"], spec.fold_names, spec.member_of))]
    return [FoldModel(str(source), str(folder), folder.name,
                      _fold(json.loads((folder / CONFIG_FILE).read_text()).get("fold"), str(folder / CONFIG_FILE)))
            for folder in find_fold_checkpoints(source)]


def model_probabilities(models: list[FoldModel], rows: list[np.ndarray], images: np.ndarray, tta: str,
                        batch_size: int, device: str) -> list[np.ndarray]:
    """Each model's P(atypical) on its ``rows`` of ``images``: checkpoints in PyTorch (fp32), the members of an
    exported ensemble through runtime.ensemble as the container runs them (one pass over their rows' union)."""
    from runtime.ensemble import Ensemble

    out: list[np.ndarray] = [np.empty(0)] * len(models)
    exported: dict[str, list[int]] = {}
    for i, model in enumerate(models):
        if model.column is None:
            net, _ = load_pruned(Path(model.name))
            out[i] = predict(net, images[rows[i]], batch_size, tta, device, label=f"{model.name} (tta {tta})")
        else:
            exported.setdefault(model.source, []).append(i)
    for source, members in exported.items():
        union = np.unique(np.concatenate([rows[i] for i in members]))
        ensemble = Ensemble(source, tta=tta)
        try:
            probs = ensemble.probabilities(images[union])
        finally:
            ensemble.close()
        print(f"{source}: {len(members)} members on {len(union)} validation patches (tta {tta}, {ensemble.provider})")
        for i in members:
            out[i] = probs[np.searchsorted(union, rows[i]), models[i].column]
    return out


def calibrate(runs: list[str | Path], data: PatchSet, tta: str = "none", batch_size: int = 64,
              device: str = "cpu", rule: str = "auto", compare: bool = True) -> dict:
    """Each fold model on its validation part of ``data``. ``runs``: run or fold folders, or exported ensembles.
    ``tta``: the mode the threshold is chosen for (none | d4), or ``auto``: score both at 0.5 and choose d4 only
    when it is higher. ``rule``: the vote rule the threshold is chosen for, or ``auto``: each rule at its best
    threshold, chosen by :func:`choose_rule`. With several sources and ``compare``, ``comparison`` scores each one
    alone, all of them together and the better one per fold (:func:`compare_sources`), or says why it cannot
    (``skipped``: a source lacks a fold, e.g. a continuation of one fold)."""
    modes = ("none", "d4") if tta in ("d4", "auto") else ("none",)
    models = [m for r in runs for m in fold_models(r)]
    rows = []
    for model in models:
        _, val, _ = model.fold.indices(data.domains, data.slides)
        if len(val) == 0:
            raise ManifestError(f"{model.name}: no validation patches of fold {model.fold.name} in the data "
                                "(--manifest, --split: the ones the folds were trained on)")
        rows.append(val)
    folds = [{"fold": m.group, "model": m.name, "source": m.source, "patches": int(len(val))}
             for m, val in zip(models, rows)]
    parts = {}
    for mode in modes:
        probs = model_probabilities(models, rows, data.images, mode, batch_size, device)
        parts[mode] = [(data.labels[val], p) for val, p in zip(rows, probs)]
        for row, (y, p) in zip(folds, parts[mode]):
            row["ba_at_0.5" + ("_tta" if mode == "d4" else "")] = float(balanced_accuracy_score(y, p >= 0.5))
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
    sources = list(dict.fromkeys(str(r) for r in runs))
    if compare and len(sources) > 1:
        lacking = missing_folds(folds, sources)
        doc["comparison"] = {"skipped": lacking} if lacking else compare_sources(folds, parts[tta], sources)
    return doc


def missing_folds(folds: list[dict], sources: list[str]) -> str | None:
    """Why ``sources`` cannot be compared as ensembles (one lacks a fold the others have), or None."""
    names = sorted({row["fold"] for row in folds})
    for source in sources:
        lacking = [n for n in names if not any(r["fold"] == n and r["source"] == source for r in folds)]
        if lacking:
            return f"{source} has no model of fold(s) {', '.join(lacking)}: compare sources of the same folds"
    return None


def _members(folds: list[dict], parts: list[tuple], keep) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """fold -> (labels, [N, M] probabilities) of the models that ``keep(row)`` selects."""
    chosen: dict[str, list] = {}
    for row, part in zip(folds, parts):
        if keep(row):
            chosen.setdefault(row["fold"], []).append(part)
    return {name: (ps[0][0], np.stack([p for _, p in ps], axis=1)) for name, ps in sorted(chosen.items())}


def compare_sources(folds: list[dict], parts: list[tuple], sources: list[str]) -> dict:
    """Sources of the same folds (runs, exported ensembles) as candidate ensembles, scored on validation: each
    source alone, all together, and per fold the source whose members score the higher BA there (majority at
    0.5: chosen on the very parts it is then scored on, so optimistic). Per candidate and vote rule: the best
    shared threshold, the mean and per-fold BA there, and per fold the paired difference from the first source
    under majority (the baseline, e.g. the shipped ensemble). ``decision``: the candidate with the highest mean
    BA under its rule (:func:`choose_rule`) replaces the baseline only if it gains at least SHIP_MIN_GAIN."""
    lacking = missing_folds(folds, sources)
    if lacking:
        raise InputError(lacking)
    names = sorted({row["fold"] for row in folds})
    alone = {s: _members(folds, parts, lambda row, s=s: row["source"] == s) for s in sources}
    better = {n: max(sources, key=lambda s: (balanced_accuracy_score(alone[s][n][0], fold_vote(alone[s][n][1], 0.5)),
                                             -sources.index(s))) for n in names}
    candidates = {**{f"alone: {s}": alone[s] for s in sources},
                  "all together": _members(folds, parts, lambda row: True),
                  "the better source per fold": {n: alone[better[n]][n] for n in names}}
    scored = {name: score_rules(per_fold) for name, per_fold in candidates.items()}
    baseline = scored[f"alone: {sources[0]}"][MAJORITY]
    for rules in scored.values():
        for r in rules.values():
            r["diff_vs_baseline"] = {n: r["ba"][n] - baseline["ba"][n] for n in names}
    best_rule = {name: choose_rule({r: v["mean_ba"] for r, v in rules.items()}) for name, rules in scored.items()}
    best = max(scored, key=lambda name: scored[name][best_rule[name]]["mean_ba"])
    gain = scored[best][best_rule[best]]["mean_ba"] - baseline["mean_ba"]
    ships = best != f"alone: {sources[0]}" and round(gain, 12) >= SHIP_MIN_GAIN
    return {"baseline": sources[0], "better_source_per_fold": better, "candidates": scored,
            "decision": {"best": best, "vote": best_rule[best], "gain": gain, "min_gain": SHIP_MIN_GAIN,
                         "ship": ships}}


def comparison_table(comparison: dict) -> str:
    """The comparison as a Markdown table: one row per candidate and rule, per-fold BA and paired differences."""
    names = sorted(next(iter(next(iter(comparison["candidates"].values())).values()))["ba"])
    lines = ["| candidate | vote | threshold | mean BA | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for candidate, rules in comparison["candidates"].items():
        for rule, r in rules.items():
            cells = [f"{r['ba'][n]:.4f} ({r['diff_vs_baseline'][n]:+.4f})" for n in names]
            lines.append(f"| {candidate} | {rule} | {r['threshold']:.2f} | {r['mean_ba']:.4f} | "
                         + " | ".join(cells) + " |")
    d = comparison["decision"]
    lines.append(f"\nbest: {d['best']} ({d['vote']}), {d['gain']:+.4f} mean BA against {comparison['baseline']} "
                 f"(majority); {'ship it' if d['ship'] else 'keep the baseline'} (the rule: a gain of at least "
                 f"{d['min_gain']})")
    return "\n".join(lines)


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
    """``amf calibrate`` (arguments: cli/main.py). ``calibration.json`` goes into each run folder given (never into
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
            for folder in find_fold_checkpoints(run_folder):
                config = json.loads((folder / CONFIG_FILE).read_text())
                config["threshold"] = doc["threshold"]
                (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def run_pick(args: argparse.Namespace) -> None:
    """``amf pick`` (arguments: cli/main.py)."""
    data = load(args.data, args.split)
    doc = calibrate(args.runs, data, "none", args.batch_size, args.device, MAJORITY, compare=False)
    print(json.dumps(pick_per_fold(doc, args.out), indent=2))
