"""Where training runs and in what precision: on a GPU or not (``amf train --device``, as Lightning's accelerator:
training/choices.py), and bf16 autocast where the hardware computes it natively.

CPU runs use bf16 autocast on CPUs with native bf16 kernels, else fp32; GPUs use bf16 AMP.
"""

from __future__ import annotations

import torch


def on_gpu(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` (auto | cpu | gpu) trains on a GPU here."""
    return accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def default_precision(on_gpu: bool) -> str:
    """bf16 autocast on GPUs and on CPUs with native bf16, else fp32: on an AVX2 CPU, bf16 convolutions fall back
    to PyTorch's reference kernels (slow_conv2d), many times slower than fp32."""
    return "bf16-mixed" if on_gpu or cpu_has_native_bf16() else "32-true"
