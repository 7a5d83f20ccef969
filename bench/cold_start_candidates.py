"""The cold start's candidates, in CPU seconds (steadier than wall time on shared cores): for one worker's share
of the shipped ensemble (its first two CPU graphs, one thread, as process.py's workers hold them on two CPUs), each
in a fresh process: the session builds, the first run on the 16-page stack, the best warm run and the page faults,
under each session setting; then the warm 16-page run of the four graphs as two single-thread worker processes vs
one process with two threads (wall, best of --repeats); and where one CPU graph's warm run goes, per operator
type (onnxruntime's profiler, one thread; its file goes to a temporary folder).

    python bench/cold_start_candidates.py [--repeats 5] [--weights weights] [--input test/input]

Settings: ``runtime`` (runtime/session.py: the CPU graphs built without re-optimising them), ``re-optimised``
(all of onnxruntime's optimisations again at load), ``no memory pattern``, ``no arena``, ``glibc huge pages``
(malloc on transparent huge pages).
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
SETTINGS = {  # name: (a line that changes the session options o, environment)
    "runtime": ("", {}),
    "re-optimised": ("o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL", {}),
    "no memory pattern": ("o.enable_mem_pattern = False", {}),
    "no arena": ("o.enable_cpu_mem_arena = False", {}),
    "glibc huge pages": ("", {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),
}
ONE_WORKER = """
import json, resource, sys, time
from runtime.grand_challenge import find_stack
from runtime.session import load_onnxruntime, session_options
from runtime.stack import read_stack

stack, files, repeats = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
pages, ort = read_stack(find_stack(stack)), load_onnxruntime()
o = session_options(ort, 1, prefused=True)
{setting}
clock, faults = time.process_time, lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
start = clock()
sessions = [ort.InferenceSession(f, o, providers=["CPUExecutionProvider"]) for f in files]
built, f0 = clock(), faults()
for s in sessions:
    s.run(["prob"], {{"image": pages}})
first, f1 = clock(), faults()
warm = []
for _ in range(repeats):
    t = clock()
    for s in sessions:
        s.run(["prob"], {{"image": pages}})
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

PROFILE = """
import collections, json, sys, tempfile
from runtime.grand_challenge import find_stack
from runtime.session import load_onnxruntime, session_options
from runtime.stack import read_stack

pages, ort = read_stack(find_stack(sys.argv[1])), load_onnxruntime()
o = session_options(ort, 1, prefused=True)
o.enable_profiling, o.profile_file_prefix = True, tempfile.mkdtemp(prefix="amf-profile-") + "/run"
session = ort.InferenceSession(sys.argv[2], o, providers=["CPUExecutionProvider"])
for _ in range(int(sys.argv[3]) + 1):
    session.run(["prob"], {"image": pages})
per_op, count = collections.Counter(), collections.Counter()
for event in json.load(open(session.end_profiling())):
    if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
        per_op[event["args"]["op_name"]] += event["dur"]
        count[event["args"]["op_name"]] += 1
print(json.dumps({op: [us, count[op]] for op, us in per_op.items()}))
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
        for name, (setting, env) in SETTINGS.items():
            out = fresh(ONE_WORKER.format(setting=setting), str(args.input), files, str(args.repeats), env=env)
            found[name].append(json.loads(out))
    print("| setting (2 CPU graphs, 1 thread) | build s | first run s | warm run s | page faults: first run | "
          "per warm run |\n|---|---|---|---|---|---|")
    for name, runs in found.items():
        best = {k: min(r[k] for r in runs) for k in runs[0]}
        print(f"| {name} | {best['build']:.3f} | {best['first']:.3f} | {best['warm']:.3f} | "
              f"{best['first_faults']} | {best['warm_faults']} |")
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
            print(f"| {op} | {us / total:.1%} | {n // (args.repeats + 1)} |")


if __name__ == "__main__":
    main()
