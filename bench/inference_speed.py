"""Inference speed on this machine: the shipped int8 graph vs its weight-only twin vs a stand-in of the MIDOG25
reference container (timm EfficientNetV2-M, 224 px, page by page, PyTorch eager, random weights).

    python bench/inference_speed.py [--repeats 5] [--weights weights] [--input test/input]

(a) cold: each system as a whole new process (interpreter, imports, model load, read, infer, write), on the
    16-page stack and on a 1-page stack (the int8 ensemble also without its CPU graphs, as it loaded before),
    runs alternated system by system, median of --repeats; peak RSS of each process (wait4 rusage); the cold
    16-page ratio to the reference stand-in; and the budget of process.py's cold 16-page run: interpreter,
    imports, stack read (in a child process beside the session build), session build, the first run's extra
    cost, inference, write (process.py's own timings; the inference's warm time from a fresh process that runs
    the ensemble as process.py does, forked workers included);
(b) warm: per-stack latency (16 pages and 1 page) and throughput (256-patch batches) in one process.
The weight-only graph is made from the shipped one (its weights expanded, then int8 weights only). Prints
the machine (CPU model and its int8 instructions), the date and Markdown tables. Run it on quiet cores: not
while a training run shares them.
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
TIMINGS = {"read": r"pages read in ([\d.]+) s", "load": r"loaded in ([\d.]+) s",  # process.py's own, from its stdout
           "inference": r"inference ([\d.]+) s", "write": r"write ([\d.]+) s"}
WARM_RUNS = """
import sys, time
from runtime.ensemble import Ensemble
from runtime.forked import fork_is_safe
from runtime.grand_challenge import find_stack
from runtime.stack import read_stack

pages, ensemble = read_stack(find_stack(sys.argv[1])), Ensemble(sys.argv[2], fork=fork_is_safe())
times = []
for _ in range(int(sys.argv[3])):
    start = time.perf_counter()
    ensemble.predict(pages)
    times.append(time.perf_counter() - start)
print(ensemble.layout, *times, sep="\\n")
"""  # process.py's ensemble in a fresh process: its first run, then the warm ones


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


def machine() -> str:
    """``<CPU model>, <n> CPUs, int8/bf16 instructions: ...`` from /proc/cpuinfo (Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{os.cpu_count()} CPUs"
    model = re.search(r"model name\s*: (.*)", info)
    flags = set((re.search(r"flags\s*: (.*)", info) or re.search("()", "")).group(1).split())
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return (f"{model.group(1).strip() if model else 'CPU'}, {len(os.sched_getaffinity(0))} CPUs, "
            f"{' '.join(found) or 'no AVX2'}")


def warm_runs(stack: Path, weights: Path, repeats: int) -> tuple[str, float, float]:
    """(layout, first run s, best warm run s) of process.py's ensemble on the stack, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", WARM_RUNS, str(stack), str(weights), str(repeats + 1)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    times = [float(t) for t in out[1:]]
    return out[0], times[0], min(times[1:])


def print_budget(runs: list[tuple[float, float, str]], median: dict[str, float],
                 warm: tuple[str, float, float]) -> None:
    """Where process.py's cold 16-page run goes: its own timings (medians over ``runs``), the interpreter and the
    imports from their own processes, the first run's extra cost from ``warm``."""
    timing = {k: statistics.median(float(re.search(p, r[2]).group(1)) for r in runs) for k, p in TIMINGS.items()}
    layout, first, best = warm
    interpreter = median["python -c pass"]
    imports = median["python -c 'import process'"] - interpreter
    rows = {"interpreter (`python -c pass`)": interpreter,
            "imports (`python -c 'import process'`, less the interpreter)": imports,
            "session build (onnxruntime's import, forking the workers, their session builds)": timing["load"],
            f"inference: the warm run ({layout}, best of a fresh process's warm runs)": min(best, timing["inference"]),
            "the first run's extra cost (cold inference less the warm run)": max(timing["inference"] - best, 0.0),
            "write (results JSON)": timing["write"]}
    total = median["int8 (process.py)"]
    rows["the rest (argument parsing, finding the stack, forks, exit)"] = total - sum(rows.values())
    print("\n| phase of the cold 16-page run | s | share |\n|---|---|---|")
    for phase, seconds in rows.items():
        print(f"| {phase} | {seconds:.3f} | {seconds / total:.0%} |")
    print(f"| **total (median wall)** | **{total:.3f}** | |")
    print(f"| stack read, in a child process beside the session build (not on the path) | {timing['read']:.3f} | |")
    print(f"\n(in that fresh process the first run took {first:.3f} s, the best warm run {best:.3f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
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
    # runtime/'s byte code, compiled as the image compiles it (Dockerfile): an interpreter that may not write it
    # (PYTHONDONTWRITEBYTECODE) would otherwise compile runtime/ again at every start
    subprocess.run([py, "-m", "compileall", "-q", "runtime"], cwd=ROOT, check=True)
    print(f"{time.strftime('%Y-%m-%d')}; machine: {machine()}; {len(pages)}-page stack; weights {weights}\n")
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
    ratio = median["reference stand-in"] / median["int8 (process.py)"]
    print(f"\ncold 16-page run: {median['int8 (process.py)']:.3f} s vs the reference stand-in's "
          f"{median['reference stand-in']:.3f} s (medians): **{ratio:.1f}x**")
    print_budget(cold["int8 (process.py)"], median, warm_runs(args.input, weights, args.repeats))

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
