"""Choose the static int8 calibration (method, sample size) on the folds' validation parts, never on test.

    python bench/calibration_choice.py --manifest ../shared/data/amibr/manifest.csv [--weights weights]
        [--methods minmax,percentile,entropy] [--sizes 256,1024]

Starts from an exported ensemble (its int8 weights expanded to float: the reference), quantises it statically
with each method and sample size (a fixed, seeded sample of the training split), and prints, per fold, the
validation balanced accuracy of the reference and of each int8 graph, with the accuracy guard's verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from runtime.contract import MODEL_FILE, SPEC_FILE, default_weights  # noqa: E402
from training.data import DataSource, load  # noqa: E402
from training.quantize import (  # noqa: E402
    accuracy_guard,
    calibration_sample,
    expand_weights,
    fold_probabilities,
    quantize,
    validation_ba,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--weights", type=Path, default=default_weights())
    p.add_argument("--split", default="train", help="the calibration and validation rows (default train)")
    p.add_argument("--methods", default="minmax,percentile,entropy")
    p.add_argument("--sizes", default="256,1024")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    members = json.loads((args.weights / SPEC_FILE).read_text())["folds"]
    data = load([DataSource(Path(args.manifest))], args.split)
    reference = expand_weights(onnx.load(str(args.weights / MODEL_FILE)))
    ref_ba = validation_ba(fold_probabilities(reference, data.images), data, members)
    names = [m["name"].removeprefix("val-") for m in members]
    print(f"{len(data)} {args.split} patches; reference = {args.weights / MODEL_FILE} with its weights expanded\n")
    print("| graph | " + " | ".join(names) + " | mean | guard | quantise s |")
    print("|---" * (len(names) + 4) + "|")
    print("| float (reference) | " + " | ".join(f"{b:.4f}" for b in ref_ba) + f" | {np.mean(ref_ba):.4f} | | |")
    for size in (int(s) for s in args.sizes.split(",")):
        sample = calibration_sample(data.images, size, args.seed)
        for method in args.methods.split(","):
            start = time.perf_counter()
            int8 = quantize(reference, "static", sample, method)
            seconds = time.perf_counter() - start
            ba = validation_ba(fold_probabilities(int8, data.images), data, members)
            guard = accuracy_guard(ref_ba, ba)
            print(f"| static {method}, {size} | " + " | ".join(f"{b:.4f}" for b in ba) + f" | {np.mean(ba):.4f} | "
                  f"{'holds' if guard['holds'] else 'fails'} (mean {guard['mean_delta']:+.4f}) | {seconds:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
