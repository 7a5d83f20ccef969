"""One writer per fold, and run-level files written once: the rule that lets several ``amf train`` processes share a
run folder (a SLURM array, one fold per task; ``--jobs``) and refuses a second run into a fold being trained.

- A fold is trained by the process that holds its lock, ``<run>/<fold>/.lock`` (an flock through filelock): another
  ``amf train`` that wants the same fold is refused with one line naming the holder. The kernel releases the lock
  when its process ends, however it ends, so a crashed or killed run leaves nothing stuck.
- A run-level file (the recipe, the training rows and their fingerprints) is written whole under a temporary name
  and renamed into place, so a reader never sees half of it; and written once: a second writer with the same
  content leaves it as it is, one with different content (another recipe, seed or data into the same ``--out``) is
  refused, under a short run-wide lock so that two processes starting at the same moment cannot both write.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from runtime.errors import OutputError
from training.run_files import fold_folder, write_atomically

FOLD_LOCK = ".lock"  # in each fold folder, held while the fold trains
HOLDER_NOTE = ".lock.holder"  # beside it while it is held: who holds it, for the refusal's line
RUN_LOCK = ".run-files.lock"  # in the run folder, held while run-level files are compared and written
RUN_LOCK_WAIT_S = 60  # writing the run-level files takes well under a second


@contextmanager
def claim_folds(run: Path, folds: list[str]) -> Iterator[None]:
    """Hold the lock of each of the ``folds`` of ``run`` until the block ends; a fold another process holds is an
    OutputError (exit 3) naming it and its holder. Only the first process of a DDP job (rank 0) claims: the other
    ranks train the same fold with it."""
    from lightning.pytorch.utilities import rank_zero_only  # the rank from the environment (srun, torchrun)

    if rank_zero_only.rank != 0:
        yield
        return
    with ExitStack() as held:
        for fold in folds:
            folder = fold_folder(run, fold)
            folder.mkdir(parents=True, exist_ok=True)
            lock = FileLock(folder / FOLD_LOCK, timeout=0)
            try:
                held.enter_context(lock)
            except Timeout:
                raise OutputError(f"--out {folder}: being trained by another amf train ({_holder(folder)}); wait for "
                                  "it to end, or train into another --out") from None
            note = folder / HOLDER_NOTE
            note.write_text(_me() + "\n")
            held.callback(note.unlink, missing_ok=True)  # before the lock is released (callbacks run in reverse)
        yield


def write_once(path: Path, content: bytes, replaces: Callable[[bytes], bool] | None = None) -> None:
    """``path`` holds ``content`` afterwards: written whole under a temporary name and renamed, or left as it is when
    it holds the same bytes; different bytes there are an OutputError (exit 3): another run wrote this folder, unless
    ``replaces(those bytes)`` says the new content may take their place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(path.parent / RUN_LOCK, timeout=RUN_LOCK_WAIT_S):
            if path.is_file():
                earlier = path.read_bytes()
                if earlier == content:
                    return
                if replaces is None or not replaces(earlier):
                    raise OutputError(f"--out {path.parent}: holds a run with another {path.name} (other options, seed "
                                      "or data); train into another --out, or give the same options to add folds to it")
            write_atomically(path, content)
    except Timeout:
        raise OutputError(f"--out {path.parent}: {RUN_LOCK} held for over {RUN_LOCK_WAIT_S} s by another "
                          "process") from None


def _me() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}" + (
        f", SLURM job {os.environ['SLURM_JOB_ID']}" if "SLURM_JOB_ID" in os.environ else "")


def _holder(folder: Path) -> str:
    note = folder / HOLDER_NOTE
    return note.read_text().strip() if note.is_file() else "holder unknown"
