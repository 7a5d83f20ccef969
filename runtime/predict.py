"""Predict many patches or stacks in one process with the container's ensemble (local evaluations).

    amf predict PATH [PATH ...] --out predictions.csv [--weights DIR] [--batch-size N] [--tta MODE] [--device D]

PATH is a stack (``.tif``/``.tiff``/``.mha``: every page, read by the container's rules), a patch image
(``.png``/``.jpg``/``.jpeg``/``.bmp``), a folder (searched recursively for both), or a CSV manifest (its
``file``, ``image_id``, ``path`` or ``filename`` column, relative to the CSV's folder). Patches go through
the ensemble ``--batch-size`` per inference run (default: runtime/ensemble.py's ``default_pages_per_run``),
with a progress line on stderr (runtime/progress.py: live in a terminal, plain lines in a log). Writes one CSV
row per patch: source, page, class, confidence (P(atypical) of the ensemble), and each member's probability,
into a temporary file that is renamed into place at the end (no partial CSV). The weights are looked up as
process.py does (runtime/contract.py: ``default_weights``). Errors: one ``amf predict: error: ...`` line on
stderr and process.py's exit codes (runtime/errors.py): input 2, output 3, model 4.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from runtime.contract import default_weights
from runtime.ensemble import Ensemble
from runtime.errors import EXIT_OK, InputError, OutputError
from runtime.forked import fork_is_safe
from runtime.progress import Progress
from runtime.stack import PATCH_SUFFIXES, SUFFIXES, read_image

PATH_COLUMNS = ("file", "image_id", "path", "filename")


def expand(paths: list[Path]) -> list[Path]:
    """Folders and CSV manifests -> the image files they name, in a stable order."""
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder (PATH: a stack, a patch image, a folder of them or a CSV "
                             "manifest)")
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES + PATCH_SUFFIXES)
        elif path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                column = next((c for c in PATH_COLUMNS if c in (reader.fieldnames or [])), None)
                if column is None:
                    raise InputError(f"{path}: no column among {PATH_COLUMNS}")
                for row in reader:
                    name = Path(row[column])
                    files.append(path.parent / (name if name.suffix else name.with_suffix(".png")))
        else:
            files.append(path)
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise InputError(f"{len(missing)} file(s) not found, e.g. {missing[:3]}")
    if not files:  # as process.py: no image is an input error, and nothing is written
        raise InputError(f"{', '.join(map(str, paths))}: no image (stacks {'/'.join(SUFFIXES)}, patches "
                         f"{'/'.join(PATCH_SUFFIXES)})")
    return files


def pages_of(files: list[Path]) -> Iterator[tuple[str, int, np.ndarray]]:
    for file in files:
        pages = read_image(file)
        for i, page in enumerate(pages):
            yield str(file), i, page


class AtomicCsv:
    """A CSV written to a temporary file beside ``path`` and renamed into place by :meth:`commit`; a failed run
    leaves no file behind (``with`` discards it), and any failure to write is an OutputError naming ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write the CSV ({exc.strerror or exc})") from None
        self.file = os.fdopen(fd, "w", newline="")
        self.writer = csv.writer(self.file)

    def writerow(self, row: list) -> None:
        try:
            self.writer.writerow(row)
        except OSError as exc:
            self._fail(exc)

    def commit(self) -> None:
        try:
            self.file.close()
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self._fail(exc)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        Path(self.tmp).unlink(missing_ok=True)

    def _fail(self, exc: OSError) -> None:
        self.discard()
        raise OutputError(f"{self.path}: cannot write the CSV ({exc.strerror or exc})") from None

    def __enter__(self) -> AtomicCsv:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.discard()


def predict_files(files: list[Path], ensemble: Ensemble, out: Path) -> int:
    """Pages go to the ensemble ``ensemble.pages_per_run`` at a time (``--batch-size``)."""
    names = ensemble.spec.member_names
    batch = ensemble.pages_per_run
    total = len(files)
    start, done = time.perf_counter(), 0
    buffer: list[tuple[str, int, np.ndarray]] = []

    def flush(writer: AtomicCsv) -> None:
        nonlocal done
        pred = ensemble.predict(np.stack([b[2] for b in buffer]))
        for (source, page, _), a, c, probs in zip(buffer, pred.atypical, pred.confidence, pred.member_probs):
            writer.writerow([source, page, "atypical" if a else "normal", f"{c:.6f}", *[f"{p:.6f}" for p in probs]])
        done += len(buffer)
        buffer.clear()
        progress.update(f"predicted {done} patches from {total} file(s), "
                        f"{done / (time.perf_counter() - start):.1f} patches/s")

    with Progress(sys.stderr) as progress, AtomicCsv(out) as writer:  # the progress line ends however the run ends
        writer.writerow(["source", "page", "class", "confidence", *[f"prob_{n}" for n in names]])
        for item in pages_of(files):
            buffer.append(item)
            if len(buffer) == batch:
                flush(writer)
        if buffer:
            flush(writer)
        writer.commit()
    return done


def run(args: argparse.Namespace) -> int:
    """``amf predict`` (arguments: cli/main.py); an input, output or model error is raised with process.py's exit
    code (runtime/errors.py), which cli/main.py prints as one line. ``--device`` sets AMF_DEVICE
    (runtime/device.py)."""
    if args.device:
        os.environ["AMF_DEVICE"] = args.device
    files = expand(args.paths)
    ensemble = Ensemble(args.weights or default_weights(), tta=args.tta, vote=args.vote, fork=fork_is_safe(),
                        pages_per_run=args.batch_size)
    note = f" (CUDA not used: {ensemble.device_note})" if ensemble.device_note else ""
    print(f"{len(files)} file(s); {ensemble.describe()}, {ensemble.pages_per_run} patches per run{note}",
          file=sys.stderr)
    try:
        n = predict_files(files, ensemble, args.out)
    finally:
        ensemble.close()
    print(f"wrote {n} rows to {args.out}", file=sys.stderr)
    return EXIT_OK
