"""The files of a run folder and of its fold folders, named once, where the finished folds are, and how a file is
written whole (torch-free: ``amf curves`` reads them fast, and ``amf`` checks its sources with them before torch
loads)."""

import os
import re
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
CHECKPOINT_FOLDER, LAST_CHECKPOINT = "ckpt", "last.ckpt"  # in a fold folder: Lightning's checkpoints (train.py)
FOLD_MARKERS = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FOLDER)  # a sub-folder with one of these is a fold folder
UNSAFE_IN_NAMES = re.compile(r'[<>:"/\\|?*\x00-\x1f]')  # refused by Windows (and ":" by docker -v mounts)
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
def safe_name(fold_name: str) -> str:
    """A fold's name as a file name: ``val-amibr:tupac16`` -> ``val-amibr_tupac16`` (the name users see keeps the
    colon)."""
    return UNSAFE_IN_NAMES.sub("_", fold_name)


def fold_folder(run: Path, fold_name: str) -> Path:
    """A fold's folder in a run folder: ``run/safe_name(fold_name)``, or the fold's own name where an earlier run
    (before names were made safe) has that folder."""
    earlier = run / fold_name
    safe = run / safe_name(fold_name)
    return earlier if earlier != safe and earlier.is_dir() else safe


def fold_weights(init: Path, fold_name: str) -> Path:
    """The weights a fold starts from (``amf train --init``): ``init/<fold>/`` when it exists, else ``init`` itself
    (one model for all)."""
    for candidate in (fold_folder(init, fold_name) / WEIGHTS_FILE, init / WEIGHTS_FILE, init):
        if candidate.is_file():
            return candidate
    raise InputError(f"--init {init}: neither {fold_folder(init, fold_name) / WEIGHTS_FILE} nor a weights file (an "
                     "earlier run folder with this fold, a fold folder or a .safetensors file)")


def unfinished_folds(run: Path) -> list[Path]:
    """The fold folders of a run folder that lack their model (a fold not finished, or whose weights were lost)."""
    if not run.is_dir() or (run / WEIGHTS_FILE).is_file():
        return []
    return sorted(p for p in run.iterdir() if p.is_dir() and not (p / WEIGHTS_FILE).is_file()
                  and any((p / marker).exists() for marker in FOLD_MARKERS))
