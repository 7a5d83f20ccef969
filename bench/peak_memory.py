"""Peak memory of a whole process tree: process.py reads the stack in a child and runs the folds in workers.

    python bench/peak_memory.py [--repeats 3] [-- COMMAND ...]

Runs COMMAND (default: process.py on test/input into a temporary folder) --repeats times and samples every
process of its tree from /proc every 2 ms: the peak of the summed RSS (shared pages counted once per process,
an upper bound) and of the summed PSS (shared pages split between the processes that map them). Linux only;
wait4's ru_maxrss, as in bench/inference_speed.py, sees one process at a time. Prints a Markdown table. Run it
on quiet cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def _field_kb(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(root: int) -> tuple[int, int, int]:
    """(summed RSS kB, summed PSS kB, processes) of root and its descendants now."""
    kids, todo, rss, pss, count = _children(), [root], 0, 0, 0
    while todo:
        pid = todo.pop()
        rss += _field_kb(f"/proc/{pid}/status", "VmRSS:")
        pss += _field_kb(f"/proc/{pid}/smaps_rollup", "Pss:")
        count += 1
        todo += kids.get(pid, [])
    return rss, pss, count


def peak(command: list[str]) -> tuple[int, int, int, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    best = (0, 0, 0)
    while proc.poll() is None:
        best = tuple(max(a, b) for a, b in zip(best, tree_memory(proc.pid)))
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
        print("| run | peak summed RSS MB | peak summed PSS MB | most processes at once | wall s |")
        print("|---|---|---|---|---|")
        for run in range(1, args.repeats + 1):
            for name in Path(out).iterdir():
                name.unlink()
            rss, pss, count, wall = peak(command)
            print(f"| {run} | {rss / 1024:.0f} | {pss / 1024:.0f} | {count} | {wall:.2f} |")


if __name__ == "__main__":
    main()
