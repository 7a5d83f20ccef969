"""The files of a run folder and of its fold folders, named once, and where the finished folds are (torch-free:
``amf curves`` reads them fast, and ``amf`` checks its sources with them before torch loads)."""

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
