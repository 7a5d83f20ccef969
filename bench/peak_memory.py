"""Peak memory of a whole process tree: process.py reads the stack in a child and runs the folds in workers.

    python bench/peak_memory.py [--repeats 3] [-- COMMAND ...]

Runs COMMAND (default: process.py on test/input into a temporary folder) --repeats times and samples its whole
process tree (psutil) every 2 ms: the peak of the summed RSS (shared pages counted once per process, an upper
bound), of the summed PSS (shared pages split between the processes that map them; Linux), and of the largest
single process's RSS (e.g. one of ``amf predict``'s fold workers). wait4's
ru_maxrss, as in bench/inference_speed.py, sees one process at a time. Prints a Markdown table. Run it on quiet
cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def tree_memory(root: psutil.Process) -> tuple[int, int, int, int]:
    """(summed RSS bytes, summed PSS bytes, processes, the largest process's RSS bytes) of root and its descendants
    now."""
    rss = pss = count = largest = 0
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0, 0
    for proc in tree:
        try:
            info = proc.memory_full_info()
        except psutil.NoSuchProcess:  # ended between the listing and the read
            continue
        rss, pss, count, largest = rss + info.rss, pss + info.pss, count + 1, max(largest, info.rss)
    return rss, pss, count, largest


def peak(command: list[str]) -> tuple[int, int, int, int, float]:
    start = time.perf_counter()
    proc = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    best = (0, 0, 0, 0)
    while proc.poll() is None:
        best = tuple(max(a, b) for a, b in zip(best, tree_memory(proc)))
        time.sleep(0.002)
    if proc.returncode:
        sys.exit(f"{' '.join(command)}: exit {proc.returncode}")
    return (*best, time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("command", nargs="*", help="the command to measure (after --)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as out:
        command = args.command or [sys.executable, "process.py", "--input", "test/input", "--output", out]
        print(f"`{' '.join(command)}`, {os.cpu_count()} CPUs\n")
        print("| run | peak summed RSS MB | peak summed PSS MB | most processes at once | largest process peak RSS MB "
              "| wall s |")
        print("|---|---|---|---|---|---|")
        for run in range(1, args.repeats + 1):
            for name in Path(out).iterdir():
                name.unlink()
            rss, pss, count, largest, wall = peak(command)
            print(f"| {run} | {rss / 2**20:.0f} | {pss / 2**20:.0f} | {count} | {largest / 2**20:.0f} | {wall:.2f} |")


if __name__ == "__main__":
    main()
