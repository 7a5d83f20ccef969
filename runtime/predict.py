"""Predict many patches or stacks in one process with the container's ensemble (local evaluations).

    python -m runtime.predict PATH [PATH ...] --out predictions.csv [--weights DIR] [--batch 256]

PATH is a stack (``.tif``/``.tiff``/``.mha``: every page, read by the container's rules), a patch image
(``.png``/``.jpg``/``.jpeg``/``.bmp``), a folder (searched recursively for both), or a CSV manifest (its
``file``, ``image_id``, ``path`` or ``filename`` column, relative to the CSV's folder). Patches go through
the ensemble in batches, with a progress line on stderr. Writes one CSV row per patch: source, page,
class, confidence (P(atypical) of the ensemble), and each fold model's probability. The weights are looked
up as process.py does (runtime/contract.py: ``default_weights``).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from runtime.contract import PATCH_SIZE, default_weights
from runtime.ensemble import Ensemble
from runtime.errors import InputError, ModelError
from runtime.stack import SUFFIXES, fit_size, read_stack, to_uint8

PATCH_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
PATH_COLUMNS = ("file", "image_id", "path", "filename")


def read_patch(path: Path, size: int = PATCH_SIZE) -> np.ndarray:
    """One patch image -> uint8 [1, size, size, 3] (RGBA: alpha dropped; gray: replicated)."""
    import SimpleITK as sitk

    try:
        pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read the image ({str(exc).strip().splitlines()[-1][:200]})") from None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{path}: expected a 2-D gray or colour image, got array shape {pixels.shape}")
    rgb = np.repeat(pixels[..., :1], 3, axis=2) if pixels.shape[2] <= 2 else pixels[..., :3]
    return fit_size(to_uint8(rgb[None]), size)


def expand(paths: list[Path]) -> list[Path]:
    """Folders and CSV manifests -> the image files they name, in a stable order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES + PATCH_SUFFIXES)
        elif path.suffix.lower() == ".csv":
            with path.open(newline="") as f:
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
    return files


def pages_of(files: list[Path]) -> Iterator[tuple[str, int, np.ndarray]]:
    for file in files:
        pages = read_stack(file) if file.suffix.lower() in SUFFIXES else read_patch(file)
        for i, page in enumerate(pages):
            yield str(file), i, page


def predict_files(files: list[Path], ensemble: Ensemble, out: Path, batch: int = 256) -> int:
    names = ensemble.spec.fold_names
    total = len(files)
    start, done = time.perf_counter(), 0
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "page", "class", "confidence", *[f"prob_{n}" for n in names]])
        buffer: list[tuple[str, int, np.ndarray]] = []

        def flush() -> None:
            nonlocal done
            pred = ensemble.predict(np.stack([b[2] for b in buffer]))
            for (source, page, _), a, c, probs in zip(buffer, pred.atypical, pred.confidence, pred.fold_probs):
                writer.writerow([source, page, "atypical" if a else "normal", f"{c:.6f}", *[f"{p:.6f}" for p in probs]])
            done += len(buffer)
            buffer.clear()
            rate = done / (time.perf_counter() - start)
            print(f"\rpredicted {done} patches from {total} file(s), {rate:.1f} patches/s", end="", file=sys.stderr,
                  flush=True)

        for item in pages_of(files):
            buffer.append(item)
            if len(buffer) == batch:
                flush()
        if buffer:
            flush()
    print(file=sys.stderr)
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="CSV to write")
    p.add_argument("--weights", type=Path, help="folder with ensemble.json (default: as process.py)")
    p.add_argument("--batch", type=int, default=256, help="patches per inference run")
    args = p.parse_args(argv)
    try:
        files = expand(args.paths)
        ensemble = Ensemble(args.weights or default_weights(), expand_weights=True)
        note = f" (CUDA not used: {ensemble.device_note})" if ensemble.device_note else ""
        print(f"{len(files)} file(s); {len(ensemble.thresholds)} fold models on {ensemble.provider}{note}",
              file=sys.stderr)
        n = predict_files(files, ensemble, args.out, args.batch)
    except InputError as exc:
        print(f"input error: {exc}", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"model error: {exc}", file=sys.stderr)
        return 4
    print(f"wrote {n} rows to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
