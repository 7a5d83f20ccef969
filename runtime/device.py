"""Where the ensemble runs: onnxruntime's CUDA provider when a usable GPU is present, else the CPU.

Sessions are built by runtime/session.py (onnxruntime imported there only). When CUDA is wanted but
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

from runtime.session import SessionError, build_session, load_onnxruntime

CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# The lowest Linux driver for each CUDA major release (CUDA minor-version compatibility).
DRIVER_FLOOR = {12: "525.60.13", 13: "580.65.06"}


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
    built_for = getattr(ort.capi.build_and_package_info, "cuda_version", "") or "0"
    problem = driver_problem(version.value, int(built_for.split(".")[0]))
    if problem:
        return problem
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "the NVIDIA driver finds no usable GPU"
    return None


def cuda_session(model_file: Path, input_name: str, output_name: str, threads: int, ort: ModuleType | None = None):
    """(session on CUDA, None) when CUDA can start, else (None, why not in one line). A graph that lacks the
    input or output is a ModelError, as on the CPU."""
    ort = ort or load_onnxruntime()
    note = cuda_problem(ort)
    if note is not None:
        return None, note
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels in site-packages
    try:  # enable_fallback=0: raise, rather than print an "EP Error" block and retry on the CPU
        session = build_session(model_file, [(CUDA, CUDA_OPTIONS), CPU], threads, input_name, output_name, ort=ort,
                                enable_fallback=0)
    except SessionError as exc:
        return None, f"the CUDA provider failed to start: {_first_line(exc.__cause__)}"
    if session.get_providers()[0] != CUDA:
        return None, "the CUDA provider's libraries did not load"
    return session, None


def _first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    found = re.search(r"(CUDA|CUDNN|CUBLAS) failure \d+: [^;]+", text)
    return found.group(0).strip() if found else text[:200]


def cpu_threads() -> int:
    """``AMF_THREADS``, else the CPUs this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return int(os.environ.get("AMF_THREADS", 0)) or cores
