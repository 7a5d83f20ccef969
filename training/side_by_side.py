"""``amf train --jobs N``: train folds side by side on the CPU, each in an ``amf train`` process of its own.

A training step on a small batch does not keep many cores busy, so several fold processes that share the cores
out as threads train more patches per second than one process that uses them all (on 2 cores, two folds of one
thread each: about 30 % more). More processes than cores take turns on them (on 2 cores, three folds trained no
faster in all than one process). Each child gets the parent's arguments with ``--folds NAME --jobs 1``
appended (argparse keeps the last value) and writes its output to ``<out>/<fold folder name>.log``. On a GPU,
folds run one after another: processes sharing one GPU were slower per fold than the folds one at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from training.run_files import safe_name

CHILD = "import sys; from cli.main import main; sys.exit(main())"


def threads_per_job(jobs: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // jobs)


def _train_one(argv: list[str], out: Path, fold: str, threads: int) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_file = out / f"{safe_name(fold)}.log"
    print(f"[{fold}] started: a process of its own, {threads} thread{'s' * (threads > 1)}, output in {log_file}",
          flush=True)
    with open(log_file, "a") as log:
        code = subprocess.run([sys.executable, "-c", CHILD, *argv, "--folds", fold, "--jobs", "1"], env=env,
                              stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    print(f"[{fold}] " + (f"failed (exit {code}): see {log_file}" if code else "finished"), flush=True)
    return code


def train_side_by_side(argv: list[str], out: Path, folds: list[str], jobs: int) -> int:
    """Train ``folds`` (names), ``jobs`` at a time; 0 when every fold finished, else 1 (the failures named)."""
    threads, cpus = threads_per_job(jobs), len(os.sched_getaffinity(0))
    if jobs > cpus:
        print(f"note: --jobs {jobs} on {cpus} CPU{'s' * (cpus > 1)}: more fold processes than cores take turns on "
              "them (--jobs at most the core count trains fastest)", flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        codes = list(pool.map(lambda fold: _train_one(argv, out, fold, threads), folds))
    return 1 if any(codes) else 0
