"""The cold start's candidates, in CPU seconds (steadier than wall time on shared cores): for one worker's share
of the shipped ensemble (its first two CPU graphs, one thread, as process.py's workers hold them on two CPUs), each
in a fresh process: the session builds, the first run on the 16-page stack, the best warm run and the page faults,
under each session setting; the reader and numpy's import in a fresh process; then the warm 16-page run of the
four graphs as two single-thread worker processes vs one process with two threads (wall, best of --repeats); and
where one CPU graph's warm run goes, per operator type (onnxruntime's profiler, one thread, runs of
CPU_IMAGES_PER_RUN images as the runtime's, the memory arena on; its file goes to a temporary folder).

    python bench/cold_start_candidates.py [--repeats 5] [--weights weights] [--input test/input]

Settings: ``runtime`` (runtime/session.py: the CPU graphs built without re-optimising them, no memory arena,
CPU_IMAGES_PER_RUN images a run), the same in runs of 1, 2, 8 and all 16 images, ``re-optimised`` (all of
onnxruntime's optimisations again at load), ``no memory pattern``, ``memory arena`` (onnxruntime's default),
``glibc huge pages`` (malloc on transparent huge pages).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # name: (a line that changes the session options o, environment, images a run: 0 the runtime's)
    "runtime": ("", {}, 0),
    "runs of 1 image": ("", {}, 1),
    "runs of 2 images": ("", {}, 2),
    "runs of 8 images": ("", {}, 8),
    "one run of all 16 images": ("", {}, 16),
    "re-optimised": ("o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL", {}, 0),
    "no memory pattern": ("o.enable_mem_pattern = False", {}, 0),
    "memory arena": ("o.enable_cpu_mem_arena = True", {}, 0),
    "glibc huge pages": ("", {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, 0),
}
ONE_WORKER = """
import json, resource, sys, time
from runtime.grand_challenge import find_stack
from runtime.session import CPU_IMAGES_PER_RUN, load_onnxruntime, run_sessions, session_options
from runtime.stack import read_stack

stack, files, repeats = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
images = int(sys.argv[4]) or CPU_IMAGES_PER_RUN
pages, ort = read_stack(find_stack(stack)), load_onnxruntime()
o = session_options(ort, 1, prefused=True)
{setting}
clock, faults = time.process_time, lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
start = clock()
sessions = [ort.InferenceSession(f, o, providers=["CPUExecutionProvider"]) for f in files]
built, f0 = clock(), faults()
run_sessions(sessions, pages, "image", "prob", images)
first, f1 = clock(), faults()
warm = []
for _ in range(repeats):
    t = clock()
    run_sessions(sessions, pages, "image", "prob", images)
    warm.append(clock() - t)
print(json.dumps({{"build": built - start, "first": first - built, "warm": min(warm), "first_faults": f1 - f0,
                  "warm_faults": (faults() - f1) // repeats}}))
"""
LAYOUT = """
import sys, time
from runtime.ensemble import Ensemble
from runtime.forked import fork_is_safe
from runtime.grand_challenge import find_stack
from runtime.stack import read_stack

pages = read_stack(find_stack(sys.argv[1]))
ensemble = Ensemble(sys.argv[2], fork=sys.argv[4] == "fork" and fork_is_safe())
times = []
for _ in range(int(sys.argv[3]) + 1):
    start = time.perf_counter()
    ensemble.predict(pages)
    times.append(time.perf_counter() - start)
print(ensemble.layout, min(times[1:]))
"""

READ = """
import os, sys, time
os.environ.pop("OPENBLAS_NUM_THREADS", None)
if sys.argv[2] == "1":
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
start = time.process_time()
import numpy
numpy_seconds = time.process_time() - start
from runtime import stack
from runtime.grand_challenge import find_stack
if sys.argv[3] == "simpleitk":
    stack._read_rgb8_tiff = lambda path, size: None
path = find_stack(sys.argv[1])
start = time.process_time()
stack.read_stack(path)
print(numpy_seconds, time.process_time() - start)
"""  # numpy's import (OpenBLAS threads: its default, or "1"), then the stack read (tifffile, or "simpleitk" only)

PROFILE = """
import collections, json, sys, tempfile
from runtime.grand_challenge import find_stack
from runtime.session import CPU_IMAGES_PER_RUN, load_onnxruntime, run_sessions, session_options
from runtime.stack import read_stack

pages, ort = read_stack(find_stack(sys.argv[1])), load_onnxruntime()
o = session_options(ort, 1, prefused=True)
o.enable_profiling, o.profile_file_prefix = True, tempfile.mkdtemp(prefix="amf-profile-") + "/run"
# With the profiler on and no arena, a warm run page-faults about 15,000 times (the profiler's records are
# allocated among the activations) and the elementwise nodes take four times as long as without the profiler,
# where a warm run faults none; the arena keeps the run's memory as warm as an unprofiled run's.
o.enable_cpu_mem_arena = True
session = ort.InferenceSession(sys.argv[2], o, providers=["CPUExecutionProvider"])
runs = int(sys.argv[3]) + 1
for _ in range(runs):
    run_sessions([session], pages, "image", "prob", CPU_IMAGES_PER_RUN)
session_runs = runs * -(-len(pages) // CPU_IMAGES_PER_RUN)
per_op, count = collections.Counter(), collections.Counter()
for event in json.load(open(session.end_profiling())):
    if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
        per_op[event["args"]["op_name"]] += event["dur"]
        count[event["args"]["op_name"]] += 1
print(json.dumps({op: [us, count[op] // session_runs] for op, us in per_op.items()}))  # nodes per session run
"""


def fresh(script: str, *args: str, env: dict | None = None) -> str:
    env = {**os.environ, "AMF_DEVICE": "cpu", "AMF_THREADS": "2", **(env or {})}
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True).stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--weights", type=Path, default=ROOT / "weights")
    p.add_argument("--input", type=Path, default=ROOT / "test" / "input")
    args = p.parse_args()
    spec = json.loads((args.weights / "ensemble.json").read_text())
    files = ",".join(str(args.weights / f) for f in spec["cpu_model_files"][:2])
    print(f"{time.strftime('%Y-%m-%d')}; {len(os.sched_getaffinity(0))} CPUs; CPU seconds of one process, "
          f"fresh each time, best of {args.repeats} such processes per setting (settings alternated)\n")
    found: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for _ in range(args.repeats):
        for name, (setting, env, images) in SETTINGS.items():
            out = fresh(ONE_WORKER.format(setting=setting), str(args.input), files, str(args.repeats), str(images),
                        env=env)
            found[name].append(json.loads(out))
    print("| setting (2 CPU graphs, 1 thread) | build s | first run s | warm run s | page faults: first run | "
          "per warm run |\n|---|---|---|---|---|---|")
    for name, runs in found.items():
        best = {k: min(r[k] for r in runs) for k in runs[0]}
        print(f"| {name} | {best['build']:.3f} | {best['first']:.3f} | {best['warm']:.3f} | "
              f"{best['first_faults']} | {best['warm_faults']} |")
    reads: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.repeats):
        for threads in ("", "1"):
            for reader in ("tifffile", "simpleitk"):
                out = fresh(READ, str(args.input), threads, reader)
                reads.setdefault((threads, reader), []).append(tuple(map(float, out.split())))
    print("\n| in a fresh process | import numpy, CPU s | read the 16-page stack, CPU s |\n|---|---|---|")
    for (threads, reader), runs in reads.items():
        print(f"| OpenBLAS threads: {threads or 'its default'}; reader: {reader} | "
              f"{min(r[0] for r in runs):.3f} | {min(r[1] for r in runs):.3f} |")
    print("\n| layout of the 4 CPU graphs (2 CPUs) | warm 16-page run, best wall s |\n|---|---|")
    layouts: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for how in ("fork", "in-process"):
            layout, seconds = fresh(LAYOUT, str(args.input), str(args.weights), str(args.repeats), how).rsplit(" ", 1)
            layouts.setdefault(f"{layout} ({'1 thread each' if how == 'fork' else '2 threads each'})",
                               []).append(float(seconds))
    for layout, seconds in layouts.items():
        print(f"| {layout} | {min(seconds):.3f} |")
    graph = args.weights / spec["cpu_model_files"][0]
    per_op = json.loads(fresh(PROFILE, str(args.input), str(graph), str(args.repeats)))
    total = sum(us for us, _ in per_op.values())
    print(f"\n| operator type ({graph.name}, 16 pages, 1 thread, all runs) | share of kernel time | nodes |\n"
          "|---|---|---|")
    for op, (us, n) in sorted(per_op.items(), key=lambda item: -item[1][0]):
        if us / total >= 0.005:
            print(f"| {op} | {us / total:.1%} | {n} |")


if __name__ == "__main__":
    main()
