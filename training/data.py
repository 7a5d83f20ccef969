"""Labelled patch sets: read a manifest (or a class-folder tree) and load every patch into memory.

Three layouts are built in (`--format`):
- ``amibr``: the AMi-Br ``manifest.csv`` (``file``, ``label`` = atypical|normal, ``domain``, ``split``,
  ``votes_atypical``).
- ``midog25``: the MIDOG 2025 atypical training CSV (``image_id``, ``majority`` = AMF|NMF, domain from
  ``Tumor``); ``.png`` is appended to an ``image_id`` without an extension.
- ``folders``: ``ROOT/<class>/*.png`` (one domain) or ``ROOT/<domain>/<class>/*.png``, class folders named
  atypical|normal (or AMF|NMF).
Any other CSV works through :class:`ManifestFormat` with your own column names.
"""

from __future__ import annotations

import csv
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.contract import PATCH_SIZE
from runtime.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


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


FORMATS: dict[str, ManifestFormat] = {
    "amibr": ManifestFormat("file", "label", "domain", "split", "votes_atypical", "slide"),
    "midog25": ManifestFormat("image_id", "majority", "Tumor", default_suffix=".png"),
}


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

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> PatchSet:
        index = np.asarray(index)
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return replace(
            self,
            images=self.images[index],
            labels=self.labels[index],
            domains=self.domains[index],
            paths=[self.paths[i] for i in index],
            splits=pick(self.splits),
            votes=pick(self.votes),
            slides=pick(self.slides),
        )

    def where(self, *, split: str | None = None, domains: list[str] | None = None) -> PatchSet:
        keep = np.ones(len(self), bool)
        if split is not None:
            if self.splits is None:
                raise ManifestError(f"split {split!r} asked for, but the manifest has no split column")
            keep &= self.splits == split
        if domains is not None:
            keep &= np.isin(self.domains, domains)
        return self.subset(np.flatnonzero(keep))


@dataclass
class _Row:
    line: int
    path: Path
    label: int
    domain: str
    split: str | None
    votes: float | None
    slide: str | None = None


def load_patches(source: str | Path, format: str | ManifestFormat = "amibr", root: str | Path | None = None,
                 patch_size: int = PATCH_SIZE) -> PatchSet:
    """Load a labelled patch set. ``source`` is a CSV manifest or, with ``format='folders'``, a folder.

    Paths in a manifest are relative to ``root`` (default: the manifest's folder). Every bad row (missing
    file, unknown label, unreadable image, wrong size) is collected and reported in one ManifestError.
    """
    source = Path(source)
    if format == "folders":
        rows, problems = _scan_folders(source)
    else:
        fmt = FORMATS[format] if isinstance(format, str) else format
        rows, problems = _read_manifest(source, fmt, Path(root) if root else source.parent)
    images = np.zeros((len(rows), patch_size, patch_size, 3), np.uint8)

    def load(i: int) -> str | None:
        try:
            with Image.open(rows[i].path) as im:
                rgb = np.asarray(im.convert("RGB"))
        except Exception as exc:  # any decoder failure is a bad row
            return f"line {rows[i].line}: {rows[i].path}: unreadable image ({exc})"
        if rgb.shape[:2] != (patch_size, patch_size):
            return (f"line {rows[i].line}: {rows[i].path}: image is {rgb.shape[1]}x{rgb.shape[0]}, "
                    f"expected {patch_size}x{patch_size}")
        images[i] = rgb
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
    return PatchSet(
        images=images,
        labels=np.array([r.label for r in rows], np.int64),
        domains=np.array([r.domain for r in rows]),
        paths=[str(r.path) for r in rows],
        splits=np.array([r.split or "" for r in rows]) if has_split else None,
        votes=np.array([np.nan if r.votes is None else r.votes for r in rows], np.float32) if has_votes else None,
        slides=np.array([f"{r.domain}/{r.slide or r.path.name}" for r in rows]) if has_slides else None,
    )


def load_split(source: str | Path, format: str | ManifestFormat = "amibr", root: str | Path | None = None,
               split: str | None = None) -> PatchSet:
    """:func:`load_patches`, then only the rows of ``split`` when given (the ``amf`` data options), checked first
    by :func:`check_split`."""
    check_split(source, format, root, split)
    data = load_patches(source, format, root)
    return data.where(split=split) if split else data


def check_split(source: str | Path, format: str | ManifestFormat = "amibr", root: str | Path | None = None,
                split: str | None = None) -> None:
    """The data options, checked before any image is read (reads the CSV only; no torch, so ``amf`` calls it before
    torch loads): the manifest (or class-folder root) exists, ``--root`` is a folder, and ``--split`` selects rows;
    a ManifestError names what is wrong and the splits there are."""
    source = Path(source)
    if root is not None and not Path(root).is_dir():
        raise ManifestError(f"--root {root}: not a folder (the folder the manifest's paths are relative to)")
    if format == "folders":
        if not source.is_dir():
            raise ManifestError(f"{source}: not a folder (--format folders reads ROOT/[domain/]class/*.png)")
        if split:
            raise ManifestError(f"--split {split!r}: class folders have no splits (--format folders reads every image)")
        return
    _manifest_file(source)
    column = (FORMATS[format] if isinstance(format, str) else format).split_column
    if not split:
        return
    if column is None:
        raise ManifestError(f"--split {split!r}: a {format} manifest has no split column (leave --split out)")
    with source.open(newline="") as f:
        splits = Counter((row.get(column) or "").strip() for row in csv.DictReader(f))
    if not splits[split]:
        there = ", ".join(f"{name} ({n} rows)" for name, n in sorted(splits.items()) if name) or "none"
        raise ManifestError(f"--split {split!r}: no row of {source} is in that split; its splits: {there}")


def _manifest_file(path: Path) -> None:
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")


def _read_manifest(path: Path, fmt: ManifestFormat, root: Path) -> tuple[list[_Row], list[str]]:
    _manifest_file(path)
    with path.open(newline="") as f:
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
            votes = None
            if fmt.votes_column and rec.get(fmt.votes_column, "") not in ("", None):
                votes = float(rec[fmt.votes_column]) / 3.0
            slide = (rec.get(fmt.slide_column) or "").strip() or None if fmt.slide_column else None
            rows.append(_Row(line, file, y,
                             rec[fmt.domain_column].strip() if fmt.domain_column else "all",
                             rec[fmt.split_column].strip() if fmt.split_column else None, votes, slide))
    return rows, problems


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
