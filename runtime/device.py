"""Where the ensemble runs: onnxruntime's CUDA provider when a usable GPU is present, else the CPU.

onnxruntime is imported through ``load_onnxruntime()`` only, with its telemetry off. When CUDA is wanted but
cannot start (no driver in the container, a driver too old for the CUDA line onnxruntime-gpu was built
for, the CPU-only wheel, a provider error), ``cuda_session`` returns the reason as one line and the ensemble
runs on the CPU. CUDA runs with TF32 off and heuristic cuDNN algorithm choice, so that answers match the CPU's.

Environment: ``AMF_DEVICE=auto|cpu|cuda`` (auto: CUDA when NVIDIA device nodes exist); ``AMF_GPU_MIN_PAGES``
(default 1): stacks with fewer pages run on the CPU even with a GPU present; ``AMF_THREADS``: CPU threads.
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path
from types import ModuleType

CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# The lowest Linux driver for each CUDA major release (CUDA minor-version compatibility).
DRIVER_FLOOR = {12: "525.60.13", 13: "580.65.06"}


def load_onnxruntime() -> ModuleType:
    """onnxruntime with telemetry off: releases after 1.26 write a device ID and a usage database under
    ~/.cache, look up Microsoft's event server, and warn on stderr when HOME is read-only, unless
    ORT_DISABLE_TELEMETRY is set before the first import. Its own log lines are silenced: failures reach us
    as exceptions."""
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)
    return onnxruntime


def wants_cuda(n_pages: int | None = None) -> bool:
    """AMF_DEVICE decides; on auto, CUDA when a GPU is visible and the stack has AMF_GPU_MIN_PAGES pages."""
    wanted = os.environ.get("AMF_DEVICE", "auto").lower()
    if wanted in ("cpu", "cuda"):
        return wanted == "cuda"
    min_pages = int(os.environ.get("AMF_GPU_MIN_PAGES", 1))
    return (n_pages is None or n_pages >= min_pages) and gpu_visible()


def choice_needs_page_count() -> bool:
    """Whether :func:`wants_cuda` must know the stack's size: on auto, with a GPU visible and
    AMF_GPU_MIN_PAGES above 1."""
    return (os.environ.get("AMF_DEVICE", "auto").lower() not in ("cpu", "cuda")
            and int(os.environ.get("AMF_GPU_MIN_PAGES", 1)) > 1 and gpu_visible())


def gpu_visible() -> bool:
    """NVIDIA device nodes exist: a GPU is passed to this container."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def driver_problem(driver: int, cuda_major: int) -> str | None:
    """Why a driver that supports CUDA ``driver`` (cuDriverGetVersion: 12040 = 12.4) cannot run a build for
    CUDA ``cuda_major``, or None."""
    if driver // 1000 >= cuda_major:
        return None
    floor = DRIVER_FLOOR.get(cuda_major, "?")
    return (f"the NVIDIA driver supports CUDA {driver // 1000}.{driver % 1000 // 10}, this onnxruntime-gpu "
            f"needs CUDA {cuda_major} (driver >= {floor})")


def cuda_problem(ort: ModuleType, libcuda: str = "libcuda.so.1") -> str | None:
    """Why CUDA cannot start in this process, or None when it may: checked before onnxruntime tries, so
    that a missing or old driver costs no library loading and prints nothing."""
    if CUDA not in ort.get_available_providers():
        return f"this onnxruntime {ort.__version__} is the CPU build (no CUDA provider)"
    try:
        cuda = ctypes.CDLL(libcuda)
    except OSError:
        return f"no NVIDIA driver in this container ({libcuda} not found)"
    version = ctypes.c_int(0)
    if cuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return "the NVIDIA driver does not report its CUDA version"
    from onnxruntime.capi import build_and_package_info

    built_for = getattr(build_and_package_info, "cuda_version", "") or "0"
    problem = driver_problem(version.value, int(built_for.split(".")[0]))
    if problem:
        return problem
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "the NVIDIA driver finds no usable GPU"
    return None


def cuda_session(ort: ModuleType, model_file: Path, options):
    """(session on CUDA, None) when CUDA can start, else (None, why not in one line)."""
    note = cuda_problem(ort)
    if note is not None:
        return None, note
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels in site-packages
    try:  # enable_fallback=0: raise, rather than print an "EP Error" block and retry on the CPU
        session = ort.InferenceSession(str(model_file), options, providers=[(CUDA, CUDA_OPTIONS), CPU],
                                       enable_fallback=0)
    except (RuntimeError, ValueError) as exc:
        return None, f"the CUDA provider failed to start: {_first_line(exc)}"
    if session.get_providers()[0] != CUDA:
        return None, "the CUDA provider's libraries did not load"
    return session, None


def session_options(ort: ModuleType, threads: int):
    """The runtime's session options: all graph optimisations, ``threads`` intra-op threads, quiet, and no CPU
    memory arena: with one, each session keeps the largest batch's activations reserved after the run (``amf predict``
    over 1,000 patches, batches of 256: each fold worker peaked at 968 MB with the arena, 366 MB without; README,
    Performance)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    return options


def _first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    found = re.search(r"(CUDA|CUDNN|CUBLAS) failure \d+: [^;]+", text)
    return found.group(0).strip() if found else text[:200]


def cpu_threads() -> int:
    """``AMF_THREADS``, else the CPUs this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return int(os.environ.get("AMF_THREADS", 0)) or cores
