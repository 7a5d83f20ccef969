"""Inference speed on this machine: our ONNX ensemble vs our PyTorch eager ensemble vs a stand-in of the
MIDOG25 reference container (timm EfficientNetV2-M, 224 px, page by page, PyTorch eager, random weights).

    python bench/inference_speed.py [--repeats 5] [--weights weights] [--input test/input]

(a) cold: each system as a whole new process on a 16-page stack (import, model load, read, infer, write),
    runs alternated system by system, median of --repeats; peak RSS of each process (wait4 rusage);
(b) warm: per-stack latency (16 pages) and throughput (256 patches) in one process;
(c) the machine's fp32 matmul peak, and our warm latency as a multiple of the FLOP floor
    (ensemble FLOPs per stack / peak). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TORCH_COLD = """
import json, sys
sys.path.insert(0, {root!r})
import torch
from runtime.grand_challenge import find_stack, results_json, write_results
from runtime.stack import read_stack
from runtime.vote import vote
from training.network import MultiTaskNet, NetworkConfig, to_input
folds = json.load(open({spec!r}))["folds"]
nets = [MultiTaskNet(NetworkConfig.from_dict({{**f["network"], "pretrained": False}})).pruned().eval() for f in folds]
pages = torch.from_numpy(read_stack(find_stack({input!r})))
with torch.inference_mode():
    x = to_input(pages).contiguous(memory_format=torch.channels_last)
    probs = torch.stack([torch.sigmoid(n(x)) for n in nets], 1).numpy()
write_results({output!r}, results_json(*vote(probs, [f["threshold"] for f in folds])))
"""


def run_cold(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one whole process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def matmul_peak_gflops(sizes: tuple[int, ...] = (1024, 2048, 3072, 4096), repeats: int = 5) -> tuple[float, str]:
    """The best fp32 matrix-multiply rate found (torch.mm and numpy, several square sizes), and where."""
    import torch

    best = (0.0, "")
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for lib, mm in (("torch.mm", lambda a=a, b=b: torch.mm(a, b)),
                        ("numpy", lambda a=a, b=b: np.matmul(a.numpy(), b.numpy()))):
            mm()
            seconds = min(_timed(mm) for _ in range(repeats))
            best = max(best, (2 * n ** 3 / seconds / 1e9, f"{lib} {n}x{n}"))
    return best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ensemble_flops_per_stack(folds: list[dict], pages: int = 16, size: int = 128) -> float:
    """Multiply-adds of every Conv2d/Linear (x 2 = FLOPs), counted with forward hooks."""
    import torch

    from training.network import MultiTaskNet, NetworkConfig

    total = 0
    for f in folds:
        net = MultiTaskNet(NetworkConfig.from_dict({**f["network"], "pretrained": False})).pruned().eval()
        macs = []

        def hook(module, inputs, output, macs=macs):
            if isinstance(module, torch.nn.Conv2d):
                kh, kw = module.kernel_size
                macs.append(output.numel() * module.in_channels // module.groups * kh * kw)
            else:
                macs.append(output.numel() * module.in_features)

        layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        handles = [m.register_forward_hook(hook) for m in layers]
        with torch.inference_mode():
            net(torch.zeros(1, 3, size, size))
        for h in handles:
            h.remove()
        total += 2 * sum(macs) * pages
    return float(total)


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
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--weights", help="folder with ensemble.json (default: as process.py)")
    p.add_argument("--input", default=str(ROOT / "test" / "input"))
    args = p.parse_args()

    import torch

    from runtime.contract import SPEC_FILE, default_weights
    from runtime.ensemble import Ensemble
    from runtime.grand_challenge import find_stack
    from runtime.stack import read_stack

    args.weights = args.weights or str(default_weights())
    spec = str(Path(args.weights) / SPEC_FILE)
    folds = json.loads(Path(spec).read_text())["folds"]
    pages = read_stack(find_stack(args.input))
    out = tempfile.mkdtemp(prefix="amf-bench-")
    py = sys.executable
    systems = {
        "ONNX ensemble (process.py)": [py, "process.py", "--input", args.input, "--output", out,
                                       "--weights", args.weights],
        "PyTorch eager ensemble": [py, "-c", TORCH_COLD.format(root=str(ROOT), spec=spec, input=args.input,
                                                               output=out)],
        "reference stand-in (EffNetV2-M, 224 px, per page)": [py, "bench/reference_standin.py", "--input", args.input,
                                                              "--output", out],
    }
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} threads {torch.get_num_threads()}; "
          f"{len(folds)} fold models; stack of {len(pages)} pages\n")
    cold: dict[str, list[tuple[float, float]]] = {k: [] for k in systems}
    for _ in range(args.repeats):
        for name, cmd in systems.items():
            cold[name].append(run_cold(cmd))
    ref = statistics.median(t for t, _ in cold[list(systems)[2]])
    print("## (a) cold: whole process on one 16-page stack, alternated, median of", args.repeats)
    print("| system | median s | min s | max s | peak RSS MB | vs reference |\n|---|---|---|---|---|---|")
    for name, runs in cold.items():
        t = [r[0] for r in runs]
        speed_up = "1.0x" if name == list(systems)[2] else f"{ref / statistics.median(t):.1f}x faster"
        print(f"| {name} | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} | {max(r[1] for r in runs):.0f} | "
              f"{speed_up} |")

    ensemble = Ensemble(args.weights)
    expanded = Ensemble(args.weights, expand_weights=True)
    many = np.concatenate([pages] * 16)
    from training.network import MultiTaskNet, NetworkConfig, to_input
    sys.path.insert(0, str(ROOT / "bench"))
    from reference_standin import build, classify

    nets = [MultiTaskNet(NetworkConfig.from_dict({**f["network"], "pretrained": False})).pruned().eval() for f in folds]

    def torch_ensemble(batch: np.ndarray) -> None:
        with torch.inference_mode():
            x = to_input(torch.from_numpy(batch)).contiguous(memory_format=torch.channels_last)
            torch.stack([torch.sigmoid(n(x)) for n in nets], 1)

    reference = build()
    warm = {
        "ONNX ensemble (as process.py: int8 weights)": (lambda: ensemble.predict(pages),
                                                        lambda: ensemble.predict(many)),
        "ONNX ensemble (weights expanded at load, as runtime.predict)": (lambda: expanded.predict(pages),
                                                                     lambda: expanded.predict(many)),
        "PyTorch eager ensemble": (lambda: torch_ensemble(pages), lambda: torch_ensemble(many)),
        "reference stand-in": (lambda: classify(reference, torch.from_numpy(pages)), None),
    }
    print(f"\n## (b) warm, in one process ({ensemble.provider} for ONNX)")
    print("| system | per 16-page stack, best s | median s | patches/s (256-patch batches) |\n|---|---|---|---|")
    onnx_best = float("inf")
    for name, (stack_fn, many_fn) in warm.items():
        best, med = best_and_median(stack_fn, args.repeats)
        rate = len(many) / best_and_median(many_fn, 2)[0] if many_fn else len(pages) / best
        if name.startswith("ONNX"):
            onnx_best = min(onnx_best, best)
        print(f"| {name} | {best:.3f} | {med:.3f} | {rate:.1f} |", flush=True)

    peak, where = matmul_peak_gflops()
    flops = ensemble_flops_per_stack(folds)
    floor = flops / (peak * 1e9)
    print("\n## (c) FLOP floor")
    print(f"fp32 matmul peak ({where}, {torch.get_num_threads()} threads): {peak:.0f} GFLOP/s; "
          f"ensemble: {flops / 1e9:.0f} GFLOP per 16-page stack -> floor {floor:.3f} s; "
          f"best ONNX warm stack {onnx_best:.3f} s = {onnx_best / floor:.2f}x the floor")


if __name__ == "__main__":
    main()
