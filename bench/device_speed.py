"""CPU or GPU per Grand Challenge job: process.py cold on one stack with the CUDA provider vs the CPU (4 threads,
as on a g4dn.xlarge), and the warm per-stack time of each. Needs only the runtime (requirements.txt for CUDA).

    python bench/device_speed.py [--repeats 5] [--input test/input] [--weights DIR] [--threads 4]

Prints a Markdown table; a device that cannot run here gets a row saying why (runtime/device.py's reason).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference_speed import best_and_median, run_cold  # noqa: E402

from runtime.contract import default_weights  # noqa: E402
from runtime.ensemble import Ensemble  # noqa: E402
from runtime.grand_challenge import find_stack  # noqa: E402
from runtime.stack import read_stack  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--input", default=str(ROOT / "test" / "input"))
    p.add_argument("--weights", default=str(default_weights()))
    p.add_argument("--threads", default="4", help="CPU threads for the CPU rows (a g4dn.xlarge has 4 vCPUs)")
    args = p.parse_args()
    pages = read_stack(find_stack(args.input))
    out = tempfile.mkdtemp(prefix="amf-bench-")
    process = [sys.executable, "process.py", "--input", args.input, "--output", out, "--weights", args.weights]
    print(f"{len(pages)}-page stack, {args.repeats} runs each\n")
    print("| device | cold process.py, median s (min-max) | peak RSS MB | warm per stack, best s (median) |\n"
          "|---|---|---|---|")
    for device in ("cpu", "cuda"):
        os.environ["AMF_DEVICE"] = device
        if device == "cpu":
            os.environ["AMF_THREADS"] = args.threads
        else:
            os.environ.pop("AMF_THREADS", None)
        ensemble = Ensemble(args.weights, n_pages=len(pages))
        if ensemble.device_note:
            print(f"| {device} | not measured: {ensemble.device_note} | | |")
            continue
        cold = [run_cold(process) for _ in range(args.repeats)]
        seconds = [run[0] for run in cold]  # run_cold: (seconds, peak RSS MB, stdout)
        best, median = best_and_median(lambda e=ensemble: e.predict(pages), args.repeats)
        label = f"{device} ({ensemble.provider}, {args.threads} threads)" if device == "cpu" else ensemble.provider
        print(f"| {label} | {statistics.median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f}) | "
              f"{max(run[1] for run in cold):.0f} | {best:.3f} ({median:.3f}) |", flush=True)

if __name__ == "__main__":
    main()
