"""Checks of a command's paths before it starts working (and before torch loads): a source of the wrong kind, a
missing file, an output that cannot be written. Each failure is one of runtime/errors.py's errors, which
cli/main.py prints as one ``amf COMMAND: error: ...`` line with its exit code. Nothing here creates anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.contract import SPEC_FILE, is_exported
from runtime.errors import InputError, ModelError, OutputError

ENSEMBLE_SOURCE = f"an exported ensemble folder ({SPEC_FILE}, written by amf export)"


def sources(paths: list[Path], *, ensembles: bool, distinct: bool = False) -> None:
    """Each of ``paths`` is a run (or fold) folder with finished folds, or, where ``ensembles``, an exported
    ensemble; ``distinct``: none is given twice (amf export: its members would be the same twice)."""
    from training.run_files import RUN_SOURCE, find_fold_checkpoints  # torch-free; not needed for --help
    takes = f"{RUN_SOURCE}, or {ENSEMBLE_SOURCE}" if ensembles else RUN_SOURCE
    seen = set()
    for path in paths:
        if distinct and path.resolve() in seen:
            raise InputError(f"{path} is given twice: each source once")
        seen.add(path.resolve())
        if is_exported(path):
            if not ensembles:
                raise InputError(f"{path} is an exported ensemble ({SPEC_FILE}), not a run: this command takes "
                                 f"{RUN_SOURCE}")
        else:
            find_fold_checkpoints(path, expected=takes)

def finished(paths: list[Path], *, finished_only: bool) -> None:
    """``amf export``: every fold folder of each run has its model; one that lacks it is a ModelError (exit 4) naming
    them, unless ``finished_only``, which exports the finished folds and prints the ones left out."""
    from training.run_files import WEIGHTS_FILE, unfinished_folds

    missing = [str(folder) for path in paths if not is_exported(path) for folder in unfinished_folds(path)]
    if not missing:
        return
    if not finished_only:
        raise ModelError(f"{len(missing)} fold(s) without their model ({WEIGHTS_FILE}): {', '.join(missing)} "
                         "(unfinished, or its weights lost): amf train --resume finishes them; --finished-only "
                         "exports the other folds")
    print(f"--finished-only: {len(missing)} fold(s) left out, without their model: {', '.join(missing)}")


def existing(path: Path | None, option: str, what: str, folder: bool = False) -> None:
    """``option``'s ``path``, when given, exists (a folder where ``folder``); ``what`` says what it should be."""
    if path is not None and not (path.is_dir() if folder else path.exists()):
        raise InputError(f"{option} {path}: {'no such folder' if folder else 'not found'} ({what})")


def output_folder(path: Path, option: str = "--out") -> None:
    """``path`` is, or can be made, a writable folder."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: a file is there, not a folder")
    _creatable(path, option)


def output_file(path: Path, option: str = "--out") -> None:
    """A file can be written at ``path`` (its folder is, or can be made, writable)."""
    if path.is_dir():
        raise OutputError(f"{option} {path}: a folder is there; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{option} {path}: the file is not writable")
    _creatable(path.parent, option, path)


def _creatable(folder: Path, option: str, target: Path | None = None) -> None:
    """The nearest folder that exists on the way to ``folder`` is a writable folder."""
    target = target or folder
    nearest = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    if not nearest.is_dir():
        raise OutputError(f"{option} {target}: {nearest} is a file, not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {target}: {nearest} is not writable (choose another {option})")
