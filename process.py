#!/usr/bin/env python3
"""MIDOG 2025 Track 2 algorithm: classify each page of the input stack as atypical or normal.

    python process.py [--input /input] [--output /output] [--weights DIR]

Reads the stack named by ``<input>/inputs.json``, runs the shipped ONNX ensemble's members on all pages
(CUDA when available, else CPU), votes, and writes ``<output>/multiple-mitotic-figure-classification.json``.
Models: ``--weights``, else ``$AMF_WEIGHTS``, else ``/opt/ml/model`` when it holds ``ensemble.json``
(Grand Challenge's uploaded model tarball), else ``weights/`` next to this file.

Progress (the release first, then pages, provider, timings) goes to stdout; an error is one line on stderr naming
the file and the problem. Exit codes: 0 done; 2 input error; 3 output not writable; 4 model error (weights missing
or unreadable, unusable model output); 1 unexpected internal error (with a traceback). A non-zero exit writes no
output file. Device: CUDA when a GPU is visible and usable, else the CPU (one stdout line says why CUDA was wanted
but not used); ``AMF_DEVICE``, ``AMF_GPU_MIN_PAGES`` and ``AMF_THREADS`` adjust it (runtime/device.py).
onnxruntime's telemetry is off: the run writes nothing outside the output folder and /tmp.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

# numpy's OpenBLAS starts a thread per CPU when it loads, and they spin for a while: on 2 CPUs that cost the cold
# start as much CPU time as the import itself, taken from the workers beside it. The runtime does no BLAS work.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from runtime.contract import default_weights
from runtime.device import choice_needs_page_count
from runtime.ensemble import Ensemble
from runtime.errors import EXIT_INTERNAL, EXIT_OK, AmfError
from runtime.forked import ForkedRead, fork_is_safe
from runtime.grand_challenge import find_stack, results_json, write_results
from runtime.stack import read_stack
from runtime.version import __version__


def run(input_dir: Path, output_dir: Path, weights: Path) -> int:
    start = time.perf_counter()
    print(f"amf-mtl {__version__}: MIDOG 2025 Track 2, atypical vs normal mitotic figures", flush=True)
    stack = find_stack(input_dir)
    # A forked child reads the stack while this process loads the model (runtime/forked.py), unless the device
    # choice has to wait for the page count.
    reading = None if choice_needs_page_count() else ForkedRead(read_stack, stack)
    pages, read_seconds = timed_read(stack) if reading is None else (None, 0.0)
    loading = time.perf_counter()
    try:
        ensemble = Ensemble(weights, n_pages=None if pages is None else len(pages), fork=fork_is_safe())
    finally:  # an input error is reported before a model error, as when the read came first
        if reading is not None:
            pages, read_seconds = reading.result()
    loaded = time.perf_counter()
    print(f"{stack}: {len(pages)} pages read in {read_seconds:.2f} s"
          f"{' (in a child process, beside the model load)' if reading else ''}", flush=True)
    if ensemble.device_note:
        print(f"CUDA wanted but not used, running on the CPU: {ensemble.device_note}", flush=True)
    print(f"{ensemble.model_file} ({ensemble.spec.identity()}): {ensemble.describe()}; loaded in "
          f"{loaded - loading:.2f} s", flush=True)
    prediction = ensemble.predict(pages)
    inferred = time.perf_counter()
    results = results_json(prediction.atypical, prediction.confidence)
    target = write_results(output_dir, results, len(pages))
    n_atypical = sum(r["class"] == "atypical" for r in results)
    end = time.perf_counter()
    print(f"{target}: {len(results)} pages, {n_atypical} atypical; inference {inferred - loaded:.2f} s, write "
          f"{end - inferred:.2f} s, total {end - start:.2f} s", flush=True)
    return EXIT_OK


def timed_read(stack: Path) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    return read_stack(stack), time.perf_counter() - start


def fail(exc: AmfError) -> int:
    """One line on stderr: the kind of error, then the message (which names the file); its exit code."""
    print(f"{exc.kind}: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
    return exc.exit_code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, default=Path("/input"), help="GC input folder (default /input)")
    p.add_argument("--output", type=Path, default=Path("/output"), help="output folder (default /output)")
    p.add_argument("--weights", type=Path, help="folder with ensemble.json (default: see above)")
    args = p.parse_args(argv)
    try:
        return run(args.input, args.output, args.weights or default_weights())
    except AmfError as exc:  # input 2, output 3, model 4 (runtime/errors.py)
        return fail(exc)
    except Exception:  # noqa: BLE001 - anything else is our bug: say so, with the traceback
        traceback.print_exc()
        print("internal error (see the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The output is written and closed and both streams are flushed: skip the interpreter's teardown, which
    # spends ~80 ms freeing the session's buffers and modules in a process that is about to end anyway.
    os._exit(code)
