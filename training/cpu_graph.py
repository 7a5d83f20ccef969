"""The CPU graph: the exported int8 graph with onnxruntime's CPU fusions applied once, at export.

Building a session from the QDQ graph spends half its time fusing ~2,000 QuantizeLinear/DequantizeLinear nodes
into int8 kernels (QLinearConv, QGemm) and moving them to the NHWC layout; the container would pay that on every
cold start. onnxruntime saves the graph it built, and the container's CPU session loads that instead; the CUDA
provider keeps the standard QDQ graph. All of onnxruntime's optimisations are applied but the NCHWc transformer,
the one whose output depends on the machine (its block size follows the vector width; it rewrites float
convolutions, of which this graph has none), so the fused graph runs on any x86-64 or Arm CPU.

The fused graph holds the very same int8 tensors, so it ships without them: each tensor of at least
``EXTERNAL_MIN_BYTES`` is ONNX external data (location, offset, length) that points at the identical bytes inside
the standard graph's file. The offsets are found by content, so whichever match is taken holds the same
values (export then checks that both graphs answer alike).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnx import numpy_helper

EXTERNAL_MIN_BYTES = 1024
MAX_OWN_FRACTION = 0.05  # of the standard graph's size: above it, the fused graph would ship weights twice


def write_cpu_graph(model_path: Path, cpu_path: Path) -> bool:
    """Write the CPU graph of ``model_path`` (a saved graph) to ``cpu_path`` in the same folder; False (nothing
    written) when the large tensors it would hold itself, those not found in the standard graph (onnxruntime
    transposes or folds some, as in weight-only graphs), exceed MAX_OWN_FRACTION of the standard graph's size."""
    import onnxruntime as ort

    model_path, cpu_path = Path(model_path), Path(cpu_path)
    if model_path.parent.resolve() != cpu_path.parent.resolve():
        raise ValueError("the CPU graph reads its tensors from the standard graph: both must share a folder")
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("optimization.disable_specified_optimizers", "NchwcTransformer")
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "fused.onnx")
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        fused = onnx.load(options.optimized_model_filepath)
    source = model_path.read_bytes()
    own = 0
    for i, tensor in enumerate(fused.graph.initializer):
        data = numpy_helper.to_array(tensor).tobytes()
        if len(data) < EXTERNAL_MIN_BYTES:
            continue
        offset = source.find(data)
        if offset < 0:
            own += len(data)
            continue
        pointer = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                   data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", model_path.name), ("offset", offset), ("length", len(data))):
            pointer.external_data.add(key=key, value=str(value))
        fused.graph.initializer[i].CopyFrom(pointer)
    if own > MAX_OWN_FRACTION * len(source):
        return False
    onnx.save(fused, str(cpu_path))
    return True
