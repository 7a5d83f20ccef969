#!/usr/bin/env python3
"""MIDOG 2025 Track 2 algorithm: classify each page of the input stack as atypical or normal.

    python process.py [--input /input] [--output /output] [--weights DIR]

Reads the stack named by ``<input>/inputs.json``, runs the shipped ONNX fold ensemble on all pages
(CUDA when available, else CPU), votes, and writes ``<output>/multiple-mitotic-figure-classification.json``.
Models: ``--weights``, else ``$AMF_WEIGHTS``, else ``/opt/ml/model`` when it holds ``ensemble.json``
(Grand Challenge's uploaded model tarball), else ``weights/`` next to this file.

Exit codes: 0 done; 2 input error; 3 output not writable; 4 model error; 1 unexpected internal error.
Any non-zero exit writes no output file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from model.ensemble import MANIFEST_FILE, Ensemble, ModelError, results_json
from model.grand_challenge import OutputError, find_stack, validate_results, write_results
from model.stack import InputError, read_stack

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_OUTPUT, EXIT_MODEL = 0, 1, 2, 3, 4
HERE = Path(__file__).resolve().parent


def default_weights() -> Path:
    if os.environ.get("AMF_WEIGHTS"):
        return Path(os.environ["AMF_WEIGHTS"])
    if (Path("/opt/ml/model") / MANIFEST_FILE).is_file():
        return Path("/opt/ml/model")
    return HERE / "weights"


def run(input_dir: Path, output_dir: Path, weights: Path) -> int:
    start = time.perf_counter()
    stack = find_stack(input_dir)
    pages = read_stack(stack)
    ensemble = Ensemble(weights)
    loaded = time.perf_counter()
    prediction = ensemble.predict(pages)
    results = results_json(prediction)
    validate_results(results, len(pages))
    target = write_results(output_dir, results)
    done = time.perf_counter()
    n_atypical = int(prediction.atypical.sum())
    print(f"{stack.name}: {len(pages)} pages, {n_atypical} atypical; {len(ensemble.thresholds)} fold models on "
          f"{ensemble.provider}, tta {ensemble.tta}; read+load {loaded - start:.2f} s, inference "
          f"{done - loaded:.2f} s -> {target}", flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, default=Path("/input"))
    p.add_argument("--output", type=Path, default=Path("/output"))
    p.add_argument("--weights", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        return run(args.input, args.output, args.weights or default_weights())
    except InputError as exc:
        print(f"input error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OutputError as exc:
        print(f"output error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    except ModelError as exc:
        print(f"model error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except Exception:  # noqa: BLE001 - anything else is our bug: say so, with the traceback
        traceback.print_exc()
        print("internal error (see the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
