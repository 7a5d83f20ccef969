"""Fold models on their own fold's validation part, never the test split: what ``amf calibrate`` and ``amf pick``
choose with.

A member is one model of an ensemble, a member of its fold: a run's (or fold folder's) checkpoint, run in PyTorch
(fp32), or a column of an exported ensemble, run through runtime.ensemble as the container runs it. The members of a
fold are its models in the sources given (fold folders of the same name, or an exported ensemble's ``group``).
Each member is described by a record (``amf calibrate``'s and ``amf pick``'s JSON rows: ``fold``, ``model``,
``source``, ``patches``, then its figures) and scored as (labels, P(atypical)) on its fold's validation part.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from runtime.contract import SPEC_FILE, is_exported, read_spec
from runtime.errors import ModelError
from training.checkpoint import load_pruned
from training.data import ManifestError, PatchSet
from training.evaluate import predict
from training.folds import Fold
from training.run_files import CONFIG_FILE, find_fold_checkpoints

Scores = tuple[np.ndarray, np.ndarray]  # (labels [N], P(atypical) [N]: one member, or [N, M]: a fold's members)


@dataclass(frozen=True)
class Member:
    """One model of a fold, from a source: a run (or fold) folder's checkpoint, or a member of an exported
    ensemble (its output ``column``)."""

    source: str  # the RUN argument it comes from
    name: str  # the checkpoint folder, or ENSEMBLE/member
    group: str  # the name of the fold it is a member of
    fold: Fold
    column: int | None = None  # exported ensembles only


def _fold(entry: dict | None, where: str) -> Fold:
    if not entry:
        raise ModelError(f"{where}: records no fold definition (re-export it, or give its run folder)")
    return Fold.from_dict(entry)


def members(source: str | Path) -> list[Member]:
    """The fold models of a run (or fold) folder, or the members of an exported ensemble."""
    if is_exported(source):
        spec, doc = read_spec(source), json.loads((Path(source) / SPEC_FILE).read_text())
        return [Member(str(source), f"{source}/{name}", group, _fold(entry.get("fold"), f"{spec.path}: {name}"), i)
                for i, (entry, name, group) in enumerate(zip(doc["folds"], spec.member_names, spec.member_of))]
    return [Member(str(source), str(folder), folder.name,
                   _fold(json.loads((folder / CONFIG_FILE).read_text()).get("fold"), str(folder / CONFIG_FILE)))
            for folder in find_fold_checkpoints(source)]


def validation_rows(chosen: list[Member], data: PatchSet) -> list[np.ndarray]:
    """Each member's rows of ``data``: its fold's validation part. None, or members of one fold on different
    patches, is a ManifestError."""
    rows, first = [], {}  # fold name -> its first member's rows
    for member in chosen:
        _, val, _ = member.fold.indices(data.domains, data.slides)
        if len(val) == 0:
            raise ManifestError(f"{member.name}: no validation patches of fold {member.fold.name} in the data "
                                "(--manifest, --split: the ones the folds were trained on)")
        if not np.array_equal(first.setdefault(member.group, val), val):
            raise ManifestError(f"{member.name}: the members of fold {member.group} validate on different patches")
        rows.append(val)
    return rows


def describe(chosen: list[Member], rows: list[np.ndarray]) -> list[dict]:
    """One JSON row per member: its fold, name, source and validation patches."""
    return [{"fold": m.group, "model": m.name, "source": m.source, "patches": int(len(val))}
            for m, val in zip(chosen, rows)]


def member_scores(chosen: list[Member], rows: list[np.ndarray], data: PatchSet, tta: str, batch_size: int,
           device: str) -> list[Scores]:
    """Each member's (labels, P(atypical)) on its ``rows`` of ``data``: checkpoints in PyTorch (fp32), the members
    of an exported ensemble through runtime.ensemble as the container runs them (one pass over their rows'
    union)."""
    from runtime.ensemble import Ensemble

    probs: list[np.ndarray] = [np.empty(0)] * len(chosen)
    exported: dict[str, list[int]] = {}
    for i, member in enumerate(chosen):
        if member.column is None:
            net, _ = load_pruned(Path(member.name))
            probs[i] = predict(net, data.images[rows[i]], batch_size, tta, device,
                               label=f"{member.name} (tta {tta})")
        else:
            exported.setdefault(member.source, []).append(i)
    for source, columns in exported.items():
        union = np.unique(np.concatenate([rows[i] for i in columns]))
        ensemble = Ensemble(source, tta=tta)
        try:
            union_probs = ensemble.probabilities(data.images[union])
        finally:
            ensemble.close()
        print(f"{source}: {len(columns)} members on {len(union)} validation patches (tta {tta}, {ensemble.provider})")
        for i in columns:
            probs[i] = union_probs[np.searchsorted(union, rows[i]), chosen[i].column]
    return [(data.labels[val], p) for val, p in zip(rows, probs)]


def ba_at_half(scores: list[Scores]) -> list[float]:
    """Balanced accuracy at threshold 0.5 of each member."""
    return [float(balanced_accuracy_score(y, p >= 0.5)) for y, p in scores]


def by_fold(records: list[dict], scores: list[Scores], keep: Callable[[dict], bool] = lambda record: True
            ) -> dict[str, Scores]:
    """fold -> (validation labels, [N, M] probabilities of its members that ``keep(record)`` selects), the folds in
    the order they first appear (the members of a fold validate on the same patches: :func:`validation_rows`)."""
    chosen: dict[str, list[Scores]] = {}
    for record, one in zip(records, scores):
        if keep(record):
            chosen.setdefault(record["fold"], []).append(one)
    return {name: (ones[0][0], np.stack([p for _, p in ones], axis=1)) for name, ones in chosen.items()}

