"""Inference speed on this machine: the shipped int8 graph vs its weight-only twin vs a stand-in of the MIDOG25
reference container (timm EfficientNetV2-M, 224 px, page by page, PyTorch eager, random weights).

    python bench/inference_speed.py [--repeats 7] [--weights weights] [--input test/input]

(a) cold: each system as a whole new process (interpreter, imports, model load, read, infer, write), on the
    16-page stack and on a 1-page stack (the int8 ensemble also without its CPU graphs, as it loaded before),
    runs alternated system by system, median of --repeats; peak RSS of each process (wait4 rusage); and where
    process.py's cold time goes (interpreter, imports, then its own read / load / inference + write timings;
    the read runs in a child process beside the load);
(b) warm: per-stack latency (16 pages and 1 page) and throughput (256-patch batches) in one process.
The weight-only graph is made from the shipped one (its weights expanded, then int8 weights only). Prints
Markdown tables. Run it on quiet cores: not while a training run shares them.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PHASES = {"load (the stack is read beside it)": r"loaded in ([\d.]+) s",
          "inference + write": r"inference \+ write ([\d.]+) s"}  # process.py's own timings, from its stdout
READ = r"pages read in ([\d.]+) s"


def run_cold(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of one whole process (its output is a few lines: no pipe fills)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr.read()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, proc.stdout.read()


def one_page_input(pages: np.ndarray, folder: Path) -> Path:
    """A Grand Challenge input folder holding a 1-page stack (the first page)."""
    import SimpleITK as sitk

    from runtime.grand_challenge import find_stack

    template = find_stack(ROOT / "test" / "input")
    target = folder / template.relative_to(ROOT / "test" / "input")
    target.parent.mkdir(parents=True)
    (folder / "inputs.json").write_text((ROOT / "test" / "input" / "inputs.json").read_text())
    sitk.WriteImage(sitk.GetImageFromArray(pages[:1], isVector=True), str(target))
    return folder


def spec_without_cpu_graphs(weights: Path, folder: Path) -> None:
    import json

    from runtime.contract import SPEC_FILE

    spec = json.loads((weights / SPEC_FILE).read_text())
    spec.pop("cpu_model_files", None)
    (folder / SPEC_FILE).write_text(json.dumps(spec))


def standard_graph_twin(weights: Path, folder: Path) -> Path:
    """The shipped ensemble without its CPU graphs: one CPU session fuses the QDQ graph at every start."""
    from runtime.contract import MODEL_FILE

    folder.mkdir(parents=True)
    (folder / MODEL_FILE).symlink_to((weights / MODEL_FILE).resolve())
    spec_without_cpu_graphs(weights, folder)
    return folder


def weight_only_twin(weights: Path, folder: Path) -> Path:
    """The shipped ensemble with float activations and int8 weights only (the earlier export), for comparison;
    made in a child process, so that this one stays small for the cold runs' peak-RSS figures."""
    script = ("import sys, onnx; from pathlib import Path; from runtime.contract import MODEL_FILE; "
              "from training.quantize import expand_weights, quantize_weights; w, f = map(Path, sys.argv[1:]); "
              "f.mkdir(parents=True, exist_ok=True); "
              "onnx.save(quantize_weights(expand_weights(onnx.load(str(w / MODEL_FILE)))), str(f / MODEL_FILE))")
    subprocess.run([sys.executable, "-c", script, str(weights), str(folder)], cwd=ROOT, check=True)
    spec_without_cpu_graphs(weights, folder)
    return folder


def best_and_median(fn, repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--weights", type=Path, help="folder with ensemble.json (default: as process.py)")
    p.add_argument("--input", type=Path, default=ROOT / "test" / "input", help="GC input folder, 16-page stack")
    args = p.parse_args()

    from runtime.contract import default_weights
    from runtime.ensemble import Ensemble
    from runtime.grand_challenge import find_stack
    from runtime.stack import read_stack

    weights = args.weights or default_weights()
    pages = read_stack(find_stack(args.input))
    tmp = Path(tempfile.mkdtemp(prefix="amf-bench-"))
    twin = weight_only_twin(weights, tmp / "weight-only")
    standard = standard_graph_twin(weights, tmp / "standard")
    single = one_page_input(pages, tmp / "one-page")
    py, out = sys.executable, str(tmp / "out")

    def ours(w: Path, stack: Path) -> list[str]:
        return [py, "process.py", "--input", str(stack), "--output", out, "--weights", str(w)]

    def reference(stack: Path) -> list[str]:
        return [py, "bench/reference_standin.py", "--input", str(stack), "--output", out]

    systems = {
        "int8 (process.py)": ours(weights, args.input),
        "int8, QDQ graph fused at load (process.py)": ours(standard, args.input),
        "int8 weights only (process.py)": ours(twin, args.input),
        "reference stand-in": reference(args.input),
        "int8 (process.py), 1 page": ours(weights, single),
        "reference stand-in, 1 page": reference(single),
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import process'": [py, "-c", "import process"],
    }
    print(f"machine: {os.cpu_count()} CPUs; {len(pages)}-page stack; weights {weights}\n")
    cold: dict[str, list[tuple[float, float, str]]] = {k: [] for k in systems}
    for _ in range(args.repeats):
        for name, cmd in systems.items():
            cold[name].append(run_cold(cmd))
    median = {k: statistics.median(r[0] for r in v) for k, v in cold.items()}
    print(f"## (a) cold: whole processes, alternated, median of {args.repeats}")
    print("| system | median s | min s | max s | peak RSS MB | reference / this |\n|---|---|---|---|---|---|")
    for name in list(systems)[:6]:
        t = [r[0] for r in cold[name]]
        ref = median["reference stand-in, 1 page" if name.endswith("1 page") else "reference stand-in"]
        print(f"| {name} | {median[name]:.3f} | {min(t):.3f} | {max(t):.3f} | "
              f"{max(r[1] for r in cold[name]):.0f} | {ref / median[name]:.1f}x |")
    print("\nwhere process.py's cold 16-page time goes (medians): CPU graphs | QDQ graph fused at load")
    shared = {"interpreter (python -c pass)": median["python -c pass"],
              "imports (python -c 'import process', less the interpreter)":
                  median["python -c 'import process'"] - median["python -c pass"]}
    print("| phase | CPU graphs s | QDQ graph s |\n|---|---|---|")
    phases = {name: dict(shared) for name in ("int8 (process.py)", "int8, QDQ graph fused at load (process.py)")}
    for name, table in phases.items():
        for phase, pattern in PHASES.items():
            table[phase] = statistics.median(float(re.search(pattern, r[2]).group(1)) for r in cold[name])
        table["the rest (argument parsing, finding the stack, exit)"] = median[name] - sum(table.values())
        table["stack read, in a child process during the load"] = statistics.median(
            float(re.search(READ, r[2]).group(1)) for r in cold[name])
    ours_cpu, ours_qdq = phases.values()
    for phase in ours_cpu:
        print(f"| {phase} | {ours_cpu[phase]:.3f} | {ours_qdq[phase]:.3f} |")

    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from reference_standin import build, classify

    int8, weight_only, ref_model = Ensemble(weights), Ensemble(twin), build()
    many = np.concatenate([pages] * 16)
    warm = {
        "int8": (lambda: int8.predict(pages), lambda: int8.predict(pages[:1]), lambda: int8.predict(many)),
        "int8 weights only": (lambda: weight_only.predict(pages), lambda: weight_only.predict(pages[:1]),
                              lambda: weight_only.predict(many)),
        "reference stand-in": (lambda: classify(ref_model, torch.from_numpy(pages)),
                               lambda: classify(ref_model, torch.from_numpy(pages[:1])), None),
    }
    print(f"\n## (b) warm, in one process ({int8.provider} for ONNX)")
    print("| system | 16-page stack, best s | median s | 1 page, best s | patches/s (256-patch batches) |\n"
          "|---|---|---|---|---|")
    for name, (stack_fn, page_fn, many_fn) in warm.items():
        best, med = best_and_median(stack_fn, args.repeats)
        page_best, _ = best_and_median(page_fn, args.repeats)
        rate = len(many) / best_and_median(many_fn, 2)[0] if many_fn else len(pages) / best
        print(f"| {name} | {best:.3f} | {med:.3f} | {page_best:.3f} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
