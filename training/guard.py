"""The overlap guard of ``amf train`` and ``amf evaluate``: no figure held out of training comes back into it,
through another dataset or within one (training/overlap.py finds the figures shown twice).

- ``amf train``, before any training: (1) a row that ``--split`` holds out (AMi-Br's test split, say) matching a
  training row, of another dataset or of its own; (2) per fold, a row of its validation (or test) part matching a
  row of its training part. Either is refused (InputError, exit 2) unless ``--drop-overlap``
  (the training-side rows are dropped: (1) from the data, (2) from that fold's training part) or
  ``--allow-overlap`` (recorded in each fold's config.json).
- The run folder records the rows it trained on (``training-rows.csv``: dataset, path, slide, x, y; and their
  fingerprints, ``training-fingerprints.npy``), and ``amf export`` carries that record into the exported ensemble's
  folder (beside ensemble.json; the container does not read it); ``amf evaluate`` of that run or export warns in
  its report when evaluation rows are training rows, or show their figures.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import InputError
from training import overlap
from training.data import PatchSet
from training.folds import Fold
from training.run_files import TRAINING_PRINTS, TRAINING_ROWS, write_atomically
from training.run_lock import write_once

EXAMPLES = 3  # examples in a refusal or a warning
ROW_FIELDS = ("dataset", "path", "slide", "x", "y")
SAME_ROW = "same row"  # amf evaluate: an evaluation row that is a training row itself


@dataclass
class Guarded:
    """What the guard leaves to train: the data (less rows dropped) and per fold the rows kept out of training."""

    data: PatchSet
    exclude: dict[str, np.ndarray] = field(default_factory=dict)  # fold name -> row indices of data
    dropped: int = 0


def describe(data: PatchSet, i: int) -> str:
    name = data.datasets[i] if data.datasets is not None else ""
    return f"{name} {data.paths[i]}" if name else data.paths[i]


def _refuse(count: int, what: str, examples: list[str]) -> None:
    raise InputError(f"{count} training row(s) show a figure {what}, e.g. {'; '.join(examples[:EXAMPLES])}: "
                     "--drop-overlap drops them from training, --allow-overlap trains anyway")


def guard(everything: PatchSet, chosen: np.ndarray, folds: list[Fold], *, drop: bool, allow: bool) -> Guarded:
    """``everything``: every row of every dataset; ``chosen``: bool, the rows ``--split`` keeps; ``folds``: the
    folds to run. Refuses, drops or allows as the module says; returns the data to train on."""
    data = everything.subset(np.flatnonzero(chosen))
    matches = overlap.find_overlaps(everything)
    if not matches:
        return Guarded(data)
    if allow:
        print(f"--allow-overlap: {len(matches)} figure(s) shown twice, trained on as they are")
        return Guarded(data)
    where = np.full(len(everything), -1)  # row of everything -> row of data (-1: not in it)
    where[chosen] = np.arange(len(data))
    held = [(m.i, m.j, m.kind) if chosen[m.i] else (m.j, m.i, m.kind) for m in matches
            if chosen[m.i] != chosen[m.j]]  # (training row, held-out row, kind)
    result = Guarded(data)
    if held:
        examples = [f"{describe(everything, t)} = {describe(everything, h)} ({kind})" for t, h, kind in held]
        if not drop:
            _refuse(len({t for t, _, _ in held}), "that --split holds out", examples)
        keep = np.ones(len(data), bool)
        keep[[where[t] for t, _, _ in held]] = False
        renumber = np.where(keep, np.cumsum(keep) - 1, -1)
        where = np.where(where >= 0, renumber[np.maximum(where, 0)], -1)
        result = Guarded(data.subset(np.flatnonzero(keep)), dropped=int((~keep).sum()))
        data = result.data
        print(f"--drop-overlap: dropped {result.dropped} training row(s) that show figures --split holds out "
              f"(e.g. {examples[0]})")
    pairs = [(int(where[m.i]), int(where[m.j]), m.kind) for m in matches if where[m.i] >= 0 and where[m.j] >= 0]
    for fold in folds:
        train, val, test = fold.indices(data.domains, data.slides)
        trained, held_out = set(train.tolist()), set(val.tolist()) | set(test.tolist())
        sides = [(a, b, kind) for i, j, kind in pairs for a, b in ((i, j), (j, i)) if a in trained and b in held_out]
        if not sides:
            continue
        examples = [f"{describe(data, a)} = {describe(data, b)} ({kind})" for a, b, kind in sides]
        if not drop:
            _refuse(len({a for a, _, _ in sides}), f"of fold {fold.name}'s held-out part", examples)
        result.exclude[fold.name] = np.array(sorted({a for a, _, _ in sides}), int)
        print(f"--drop-overlap: fold {fold.name} trains without {len(result.exclude[fold.name])} row(s) that show "
              f"figures of its held-out part (e.g. {examples[0]})")
    return result


def record_training_rows(folder: Path, data: PatchSet) -> None:
    """``folder/training-rows.csv`` (dataset, path, slide, x, y) and ``folder/training-fingerprints.npy``: the
    rows a run trains on, for :func:`evaluation_warning`."""
    positions = data.positions if data.positions is not None else np.full((len(data), 2), np.nan)
    rows = [dict(zip(ROW_FIELDS, [_dataset(data, i), Path(path).resolve(), _slide(data, i),
                                  *("" if np.isnan(v) else f"{v:g}" for v in positions[i])]))
            for i, path in enumerate(data.paths)]
    _write_record(folder, rows, overlap.fingerprints(data.images), write_once)


def carry_training_rows(sources: list[Path], out: Path) -> int:
    """``amf export``: the record of the rows its sources (runs, fold folders, exported ensembles) trained on, into
    the export's folder ``out``, each row once, so that ``amf evaluate`` of the export warns as it does for a run.
    Returns the rows carried; with none recorded, an earlier export's record there is removed."""
    folders = _recorded(sources)
    rows, prints, seen = [], [], set()
    for folder in folders:
        for row, fingerprint in zip(_read_rows(folder), np.load(folder / TRAINING_PRINTS)):
            if (row["dataset"], row["path"]) not in seen:
                seen.add((row["dataset"], row["path"]))
                rows.append(row)
                prints.append(fingerprint)
    if not rows:
        for name in (TRAINING_ROWS, TRAINING_PRINTS):
            (out / name).unlink(missing_ok=True)
        return 0
    _write_record(out, rows, np.stack(prints), write_atomically)
    return len(rows)


def _write_record(folder: Path, rows: list[dict], prints: np.ndarray, write) -> None:
    """Each file written whole, then renamed (``write``): a run's once (run_lock.write_once: ``--jobs`` children and
    SLURM array tasks write the same files at once, other rows are refused), an export's over an earlier one."""
    text = io.StringIO()
    writer = csv.DictWriter(text, ROW_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    buffer = io.BytesIO()
    np.save(buffer, prints)
    for name, content in ((TRAINING_ROWS, text.getvalue().encode()), (TRAINING_PRINTS, buffer.getvalue())):
        write(folder / name, content)


def _recorded(sources: list[Path]) -> list[Path]:
    """The folders with a record among ``sources`` and their parents (a fold folder's run)."""
    return sorted({folder for source in map(Path, sources) for folder in (source, source.parent)
                   if (folder / TRAINING_ROWS).is_file()})


def _read_rows(folder: Path) -> list[dict]:
    with (folder / TRAINING_ROWS).open(newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def _dataset(data: PatchSet, i: int) -> str:
    return str(data.datasets[i]) if data.datasets is not None else ""


def _slide(data: PatchSet, i: int) -> str:
    return str(data.slide_files[i]) if data.slide_files is not None else ""


def evaluation_warning(runs: list[Path], data: PatchSet) -> str | None:
    """A line for the report when rows of ``data`` are rows the runs (or fold folders' runs) trained on, or show
    their figures (a row of any dataset, by slide and position or by pixels); None when none is, or no run
    recorded its rows."""
    folders = _recorded(runs)
    if not folders:
        return None
    rows = [row for folder in folders for row in _read_rows(folder)]
    prints = np.concatenate([np.load(folder / TRAINING_PRINTS) for folder in folders])
    xy = np.array([[float(r["x"] or "nan"), float(r["y"] or "nan")] for r in rows]).reshape(-1, 2)
    found: dict[int, tuple[str, int]] = {}  # evaluation row -> (how, training row)
    identity = {(r["dataset"], r["path"]): k for k, r in enumerate(rows)}
    sets = np.array([_dataset(data, i) for i in range(len(data))])
    for i, j in (overlap.pixel_matches(overlap.fingerprints(data.images), prints)):
        found.setdefault(int(i), (overlap.PIXELS, int(j)))
    if data.slide_files is not None and data.positions is not None:
        slides = np.array([r["slide"] for r in rows])
        for i, j in overlap.position_matches(data.slide_files, data.positions, slides, xy):
            found[int(i)] = (overlap.SLIDE_POSITION, int(j))
    for i, path in enumerate(data.paths):
        if (sets[i], str(Path(path).resolve())) in identity:
            found[i] = (SAME_ROW, identity[sets[i], str(Path(path).resolve())])
    if not found:
        return None
    kinds = {how: sum(h == how for h, _ in found.values())
             for how in (SAME_ROW, overlap.SLIDE_POSITION, overlap.PIXELS)}
    examples = "; ".join(f"{describe(data, i)} = {rows[j]['dataset']} {rows[j]['path']} ({how})"
                         for i, (how, j) in sorted(found.items())[:EXAMPLES])
    counts = ", ".join(f"{n} {how}" for how, n in kinds.items() if n)
    return (f"warning: {len(found)} of {len(data)} evaluation rows are rows the run trained on or show their figures "
            f"({counts}), e.g. {examples}: their scores are inflated")
