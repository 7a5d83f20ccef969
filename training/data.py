"""Labelled patch sets: read a manifest (or a class-folder tree) and load every patch into memory.

Four layouts are built in (`--format`):
- ``amibr``: the AMi-Br ``manifest.csv`` (``file``, ``label`` = atypical|normal, ``domain``, ``split``,
  ``votes_atypical``, ``slide``, ``x``, ``y``).
- ``midog25``: the published MIDOG 2025 atypical training CSV (``image_id``, ``majority`` = AMF|NMF, slide
  ``filename``, position ``coordinateX/Y``, votes: the share of the experts present, ``expert1..3``, who say
  AMF); the domain from ``Tumor`` (or ``Scanner``, ``Species``: ``--domain-column``); ``.png`` is appended to an
  ``image_id`` without an extension. The slide, position and expert columns are read where the CSV has them.
- ``csv``: any other CSV, its columns named by ``--columns`` (:func:`csv_format`).
- ``folders``: ``ROOT/<class>/*.png`` (one domain) or ``ROOT/<domain>/<class>/*.png``, class folders named
  atypical|normal (or AMF|NMF).
Pixels are read by the runtime's reader (``runtime.stack.read_image``: 16-bit scaled, palettes through their colour
map, alpha dropped, gray replicated), so a file gives training the array that ``amf predict`` and the container
get. Patches of another size are centre-cropped or edge-padded to 128 x 128 by the runtime's rule
(``runtime.stack.fit_size``), never resized; each PatchSet counts them (``resized``).

One way in: :func:`check` reads only the CSVs (no images, no torch: ``amf`` checks the data options with it before
torch loads) and :func:`load` reads the rows a command uses; :func:`load_every_row` adds the rows ``--split`` holds
out, for the overlap guard (training/guard.py) and ``amf data``. Several datasets (the ``amf`` data options
repeated) load as one PatchSet: each row keeps its dataset's name (``datasets``), and with two or more its domain
becomes ``dataset:domain``.
"""

from __future__ import annotations

import csv
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from runtime.contract import PATCH_SIZE
from runtime.errors import InputError
from runtime.stack import PATCH_SUFFIXES, SUFFIXES, fit_size, read_image
from training.choices import AMIBR, CSV_FORMAT, FOLDERS, MIDOG25

IMAGE_SUFFIXES = PATCH_SUFFIXES + SUFFIXES  # the class folders' images: what the runtime reads


class ManifestError(InputError):
    """A manifest that cannot be used (exit 2): missing, a split it does not have, or bad rows (every one listed)."""


@dataclass(frozen=True)
class ManifestFormat:
    """Which CSV columns hold what, and which label values mean atypical / normal."""

    path_column: str
    label_column: str
    domain_column: str | None = None
    split_column: str | None = None
    votes_column: str | None = None
    slide_column: str | None = None
    positive: tuple[str, ...] = ("atypical", "AMF")
    negative: tuple[str, ...] = ("normal", "NMF")
    default_suffix: str = ""  # appended to a path value that has no extension
    votes_scale: float = 1.0  # votes_column / votes_scale = the fraction of experts voting atypical
    x_column: str | None = None  # the figure's position on its slide
    y_column: str | None = None
    expert_columns: tuple[str, ...] = ()  # one label per expert (empty: that expert did not vote)


FORMATS: dict[str, ManifestFormat] = {
    AMIBR: ManifestFormat("file", "label", "domain", "split", "votes_atypical", "slide", votes_scale=3.0,
                            x_column="x", y_column="y"),
    MIDOG25: ManifestFormat("image_id", "majority", "Tumor", slide_column="filename", default_suffix=".png",
                              x_column="coordinateX", y_column="coordinateY",
                              expert_columns=("expert1", "expert2", "expert3")),
}
CSV_KEYS = {"path": "path_column", "label": "label_column", "domain": "domain_column", "split": "split_column",
            "votes": "votes_column", "slide": "slide_column", "x": "x_column", "y": "y_column"}


def csv_format(columns: str) -> ManifestFormat:
    """``--columns path=image_id,label=majority,slide=filename,domain=Tumor,x=...,y=...,votes=...,split=...``:
    ``path`` and ``label`` are needed; ``votes`` is a fraction in [0, 1]; ``.png`` is appended to a path without
    an extension."""
    named = {}
    for item in filter(None, (part.strip() for part in columns.split(","))):
        key, sep, column = item.partition("=")
        if not sep or key.strip() not in CSV_KEYS or not column.strip():
            raise ManifestError(f"--columns {item!r}: expected KEY=COLUMN, KEY one of {', '.join(CSV_KEYS)}")
        named[CSV_KEYS[key.strip()]] = column.strip()
    missing = [key for key in ("path", "label") if CSV_KEYS[key] not in named]
    if missing:
        raise ManifestError(f"--columns {columns!r}: name the {' and '.join(missing)} column(s), e.g. "
                            "path=image_id,label=majority")
    return ManifestFormat(**named, default_suffix=".png")


@dataclass(frozen=True)
class DataSource:
    """One dataset of the ``amf`` data options: its manifest (or class-folder root), format, root, name,
    ``--domain-column`` and (format csv) ``--columns``."""

    manifest: Path
    format: str = "amibr"
    root: Path | None = None
    name: str = "amibr"
    domain_column: str | None = None
    columns: str | None = None

    def manifest_format(self) -> ManifestFormat:
        """Which columns of its manifest hold what: the format's (csv: ``--columns``), ``--domain-column`` in place
        of the format's domain column. Class folders have no manifest (a ValueError)."""
        if self.format == FOLDERS:
            raise ValueError(f"{self.manifest}: class folders (--format {FOLDERS}) have no manifest columns")
        fmt = csv_format(self.columns or "") if self.format == CSV_FORMAT else FORMATS[self.format]
        return replace(fmt, domain_column=self.domain_column or fmt.domain_column)

    def split_column(self) -> str | None:
        """The manifest's split column (None: the dataset has no splits, e.g. class folders)."""
        return None if self.format == FOLDERS else self.manifest_format().split_column


@dataclass
class PatchSet:
    """Patches held in memory: ``images`` is uint8 [N, H, W, 3]; ``labels`` 1 = atypical, 0 = normal."""

    images: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    paths: list[str]
    splits: np.ndarray | None = None
    votes: np.ndarray | None = None  # fraction of experts voting atypical, when known
    slides: np.ndarray | None = None  # source slide (``domain/slide``), for slide-grouped cross-validation
    datasets: np.ndarray | None = None  # each row's dataset name (load)
    slide_files: np.ndarray | None = None  # the slide's file name as the manifest gives it ("" unknown)
    positions: np.ndarray | None = None  # float [N, 2]: x, y on that slide (NaN unknown)
    resized: np.ndarray | None = None  # bool: cropped or padded to the patch size

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> PatchSet:
        index = np.asarray(index, int)
        pick = lambda a: None if a is None else [a[i] for i in index] if isinstance(a, list) else a[index]  # noqa: E731
        return replace(self, **{f.name: pick(getattr(self, f.name)) for f in fields(self)})


def check(sources: list[DataSource], split: str | None = None) -> None:
    """The data options, checked before any image is read (reads the CSVs only; no torch, so ``amf`` calls it before
    torch loads): each manifest (or class-folder root) exists, ``--root`` is a folder, and ``--split`` selects rows;
    a ManifestError names what is wrong and the splits there are. With several datasets, ``--split`` applies to
    those with a split column (it must select rows in each of them) and the others give every row; one dataset
    must have the split asked for."""
    if split and len(sources) > 1 and not any(one.split_column() for one in sources):
        raise ManifestError(f"--split {split!r}: none of the {len(sources)} datasets has a split column "
                            "(leave --split out)")
    for one in sources:
        _check_one(one, split if len(sources) == 1 or one.split_column() else None)


def load(sources: list[DataSource], split: str | None = None) -> PatchSet:
    """The data options' rows as one PatchSet: checked (:func:`check`), loaded, the rows of ``split`` kept where
    a dataset has a split column."""
    check(sources, split)
    each = _load_each(sources)
    return _concat([data.subset(np.flatnonzero(_in_split(data, split))) for data in each])


def load_every_row(sources: list[DataSource], split: str | None = None) -> tuple[PatchSet, np.ndarray]:
    """Every row of every dataset (checked as by :func:`check`) as one PatchSet, and which of them ``split`` keeps
    (bool): what the overlap guard and ``amf data`` compare, the held-out rows included."""
    check(sources, split)
    each = _load_each(sources)
    return _concat(each), np.concatenate([_in_split(data, split) for data in each])


@dataclass
class _Row:
    line: int
    path: Path
    label: int
    domain: str
    split: str | None
    votes: float | None
    slide: str | None = None
    position: tuple[float, float] | None = None


def _load_patches(one: DataSource, patch_size: int = PATCH_SIZE) -> PatchSet:
    """Load one labelled patch set: a CSV manifest or, with ``--format folders``, a folder.

    Paths in a manifest are relative to ``root`` (default: the manifest's folder). Every bad row (missing
    file, unknown label, unreadable image) is collected and reported in one ManifestError. An image of another
    size is centre-cropped or edge-padded to ``patch_size`` (``runtime.stack.fit_size``) and marked ``resized``.
    """
    source, root = Path(one.manifest), one.root
    if one.format == FOLDERS:
        rows, problems = _scan_folders(source)
    else:
        rows, problems = _read_manifest(source, one.manifest_format(), Path(root) if root else source.parent)
    images = np.zeros((len(rows), patch_size, patch_size, 3), np.uint8)
    resized = np.zeros(len(rows), bool)

    def load(i: int) -> str | None:
        try:
            images[i], resized[i] = _read_image(rows[i].path, patch_size)
        except InputError as exc:  # any decoder failure is a bad row
            return f"line {rows[i].line}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        problems += [p for p in pool.map(load, range(len(rows))) if p]
    if problems:
        shown = "\n  ".join(problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        raise ManifestError(f"{source}: {len(problems)} bad row(s):\n  {shown}{more}")
    if not rows:
        raise ManifestError(f"{source}: no patches")
    has_split = any(r.split is not None for r in rows)
    has_votes = any(r.votes is not None for r in rows)
    has_slides = any(r.slide is not None for r in rows)
    has_positions = any(r.position is not None for r in rows)
    return PatchSet(
        images=images,
        labels=np.array([r.label for r in rows], np.int64),
        domains=np.array([r.domain for r in rows]),
        paths=[str(r.path) for r in rows],
        splits=np.array([r.split or "" for r in rows]) if has_split else None,
        votes=np.array([np.nan if r.votes is None else r.votes for r in rows], np.float32) if has_votes else None,
        slides=np.array([f"{r.domain}/{r.slide or r.path.name}" for r in rows]) if has_slides else None,
        slide_files=np.array([r.slide or "" for r in rows]) if has_slides else None,
        positions=np.array([r.position or (np.nan, np.nan) for r in rows], float) if has_positions else None,
        resized=resized,
    )


def _check_one(one: DataSource, split: str | None) -> None:
    """:func:`check` for one dataset."""
    source, root = Path(one.manifest), one.root
    if root is not None and not Path(root).is_dir():
        raise ManifestError(f"--root {root}: not a folder (the folder the manifest's paths are relative to)")
    if one.format == FOLDERS:
        if not source.is_dir():
            raise ManifestError(f"{source}: not a folder (--format folders reads ROOT/[domain/]class/*.png)")
        if split:
            raise ManifestError(f"--split {split!r}: class folders have no splits (--format folders reads every image)")
        return
    _manifest_file(source)
    column = one.split_column()
    if not split:
        return
    if column is None:
        kind = f"a {one.format}" if one.format in FORMATS else "this"
        raise ManifestError(f"--split {split!r}: {kind} manifest has no split column (leave --split out)")
    with source.open(newline="", encoding="utf-8-sig") as f:
        splits = Counter((row.get(column) or "").strip() for row in csv.DictReader(f))
    if not splits[split]:
        there = ", ".join(f"{name} ({n} rows)" for name, n in sorted(splits.items()) if name) or "none"
        raise ManifestError(f"--split {split!r}: no row of {source} is in that split; its splits: {there}")


def _load_each(sources: list[DataSource]) -> list[PatchSet]:
    """Every row of each dataset, named (``datasets``); with two or more datasets, domains and slides become
    ``dataset:domain`` and ``dataset:domain/slide``. Prints how many patches of a dataset were cropped or padded."""
    each = []
    for one in sources:
        data = _load_patches(one)
        data.datasets = np.full(len(data), one.name)
        if len(sources) > 1:
            data.domains = np.char.add(f"{one.name}:", data.domains.astype(str))
            data.slides = None if data.slides is None else np.char.add(f"{one.name}:", data.slides.astype(str))
        if data.resized.any():
            print(f"{one.name}: {int(data.resized.sum())} of {len(data)} patches cropped or padded to "
                  f"{PATCH_SIZE}x{PATCH_SIZE} (runtime rule: centre crop, edge pad)")
        each.append(data)
    return each


def _in_split(data: PatchSet, split: str | None) -> np.ndarray:
    """Rows that ``--split`` selects: all of a dataset without a split column (or without ``split``)."""
    return np.ones(len(data), bool) if not split or data.splits is None else data.splits == split


def _concat(each: list[PatchSet]) -> PatchSet:
    """One PatchSet of several; a field some of them lack is filled (no split, votes unknown, each patch its own
    slide, no slide file, no position)."""
    if len(each) == 1:
        return each[0]
    fill = {"splits": lambda p: np.full(len(p), ""), "votes": lambda p: np.full(len(p), np.nan, np.float32),
            "slides": lambda p: np.array([f"{d}/{Path(f).name}" for d, f in zip(p.domains, p.paths)]),
            "slide_files": lambda p: np.full(len(p), ""), "positions": lambda p: np.full((len(p), 2), np.nan),
            "datasets": lambda p: np.full(len(p), ""), "resized": lambda p: np.zeros(len(p), bool)}
    joined = {}
    for f in fields(PatchSet):
        values = [getattr(p, f.name) for p in each]
        if f.name == "paths":
            joined[f.name] = [path for v in values for path in v]
        elif all(v is None for v in values):
            joined[f.name] = None
        else:
            joined[f.name] = np.concatenate([fill[f.name](p) if v is None else v for p, v in zip(each, values)])
    return PatchSet(**joined)


def _read_image(path: Path, patch_size: int) -> tuple[np.ndarray, bool]:
    """One patch by the runtime's rules (``runtime.stack.read_image``: what ``amf predict`` and the container
    read), fitted to ``patch_size``; whether it was cropped or padded."""
    pages = read_image(path, None)
    if len(pages) != 1:
        raise InputError(f"{path}: {len(pages)} pages, expected one patch per row")
    resized = pages.shape[1:3] != (patch_size, patch_size)
    return (fit_size(pages, patch_size)[0] if resized else pages[0]), resized


def _manifest_file(path: Path) -> None:
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")


def _read_manifest(path: Path, fmt: ManifestFormat, root: Path) -> tuple[list[_Row], list[str]]:
    _manifest_file(path)
    with path.open(newline="", encoding="utf-8-sig") as f:  # a byte-order mark is not part of the first column
        reader = csv.DictReader(f)
        needed = [c for c in (fmt.path_column, fmt.label_column, fmt.domain_column, fmt.split_column) if c]
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {missing}; has {reader.fieldnames}")
        rows, problems = [], []
        for line, rec in enumerate(reader, start=2):
            value = (rec[fmt.path_column] or "").strip()
            file = root / (value + fmt.default_suffix if value and not Path(value).suffix else value)
            label = (rec[fmt.label_column] or "").strip()
            if label in fmt.positive or label in fmt.negative:
                y = int(label in fmt.positive)
            else:
                problems.append(f"line {line}: unknown label {label!r} (expected one of {fmt.positive + fmt.negative})")
                continue
            if not value or not file.is_file():
                problems.append(f"line {line}: {file}: file not found")
                continue
            try:
                votes, position = _votes(rec, fmt), _position(rec, fmt)
            except ValueError as exc:
                problems.append(f"line {line}: {exc}")
                continue
            slide = (rec.get(fmt.slide_column) or "").strip() or None if fmt.slide_column else None
            rows.append(_Row(line, file, y,
                             rec[fmt.domain_column].strip() if fmt.domain_column else "all",
                             rec[fmt.split_column].strip() if fmt.split_column else None, votes, slide, position))
    return _drop_repeated_rows(path, rows, problems), problems


def _drop_repeated_rows(source: Path, rows: list[_Row], problems: list[str]) -> list[_Row]:
    """The rows less those that repeat an earlier row's file: dropped with a count when they repeat it exactly
    (the same figure would train twice), a problem when they give it another label, domain or split."""
    first: dict[Path, _Row] = {}
    kept, dropped = [], []
    for row in rows:
        earlier = first.setdefault(row.path.resolve(), row)
        if earlier is row:
            kept.append(row)
        elif replace(earlier, line=row.line, path=row.path) == row:
            dropped.append(f"line {row.line} = line {earlier.line}")
        else:
            problems.append(f"line {row.line}: {row.path} is line {earlier.line}'s file with another label, domain, "
                            "split, votes or position")
    if dropped:
        print(f"{source}: {len(dropped)} repeated row(s) dropped, each the same file and values as an earlier row "
              f"({', '.join(dropped[:3])}{', ...' if len(dropped) > 3 else ''})")
    return kept


def _votes(rec: dict, fmt: ManifestFormat) -> float | None:
    """The fraction of experts voting atypical: the votes column, else the experts present (None: unknown)."""
    if fmt.votes_column and (rec.get(fmt.votes_column) or "").strip():
        return _number(rec, fmt.votes_column) / fmt.votes_scale
    present = [v.strip() for v in (rec.get(c) or "" for c in fmt.expert_columns) if v.strip()]
    return sum(v in fmt.positive for v in present) / len(present) if present else None


def _position(rec: dict, fmt: ManifestFormat) -> tuple[float, float] | None:
    x, y = ((rec.get(c) or "").strip() if c else "" for c in (fmt.x_column, fmt.y_column))
    return (_number(rec, fmt.x_column), _number(rec, fmt.y_column)) if x and y else None


def _number(rec: dict, column: str) -> float:
    """The row's ``column`` as a number; a ValueError names the column and the value."""
    value = rec[column].strip()
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"column {column!r}: {value!r} is not a number") from None


def _scan_folders(root: Path) -> tuple[list[_Row], list[str]]:
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder")
    classes = {name.lower(): int(name in ("atypical", "AMF")) for name in ("atypical", "normal", "AMF", "NMF")}
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if any(p.name.lower() in classes for p in subdirs):
        domain_dirs = [(root, "all")]
    else:
        domain_dirs = [(p, p.name) for p in subdirs]
    rows: list[_Row] = []
    for folder, domain in domain_dirs:
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.lower() in classes):
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    rows.append(_Row(len(rows) + 1, file, classes[class_dir.name.lower()], domain, None, None))
    return rows, []
