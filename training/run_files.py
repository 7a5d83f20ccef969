"""The files of a run folder and of its fold folders, named once, where the finished folds are, and how a file is
written whole (torch-free: ``amf curves`` reads them fast, and ``amf`` checks its sources with them before torch
loads)."""

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runtime.errors import InputError

WEIGHTS_FILE = "model.safetensors"  # a finished fold's network (checkpoint.py)
CONFIG_FILE = "config.json"  # beside it: network config, recipe, fold, selection (checkpoint.py)
METRICS_FILE = "metrics.csv"  # Lightning's per-epoch log (train.py)
EARLIER_METRICS = "metrics.earlier.csv"  # metrics.csv of the parts before a --resume, until the fold finishes
CURVES_FILE = "curves.png"  # in the run folder: amf train redraws it as each fold finishes (curves.py)
TRAINING_ROWS = "training-rows.csv"  # in the run folder: the rows it trained on (guard.py)
TRAINING_PRINTS = "training-fingerprints.npy"  # beside it: their pixel fingerprints (overlap.py)
RUN_SOURCE = f"a run folder of amf train, or one of its fold folders (with {WEIGHTS_FILE})"  # for error messages


def find_fold_checkpoints(run: str | Path, expected: str = RUN_SOURCE) -> list[Path]:
    """Fold folders (those holding a finished ``model.safetensors``) under a run folder, or the folder itself; none
    is an InputError saying what was ``expected``."""
    run = Path(run)
    if (run / WEIGHTS_FILE).is_file():
        return [run]
    folds = sorted(p.parent for p in run.glob(f"*/{WEIGHTS_FILE}"))
    if not folds:
        problem = "no fold checkpoints in it or its sub-folders" if run.is_dir() else "no such folder"
        raise InputError(f"{run}: {problem}; expected {expected}")
    return folds


def write_atomically(path: Path, content: bytes) -> None:
    """Write ``path`` whole under a temporary name beside it, then rename it into place."""
    with atomic_path(path) as partial:
        partial.write_bytes(content)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` for a writer to fill; renamed to ``path`` when the block ends without an
    error, removed otherwise."""
    partial = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.partial")
    try:
        yield partial
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
