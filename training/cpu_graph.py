"""The CPU graphs: the exported int8 graph with onnxruntime's CPU fusions applied once, at export, cut into one
graph per fold.

Building a session from the QDQ graph spends half its time fusing ~2,000 QuantizeLinear/DequantizeLinear nodes
into int8 kernels (QLinearConv, QGemm) and moving them to the NHWC layout; the container would pay that on every
cold start. onnxruntime saves the graph it built, and the container's CPU sessions load that instead; the CUDA
provider keeps the standard QDQ graph. All of onnxruntime's optimisations are applied but the NCHWc
transformer, the one whose output depends on the machine (its block size follows the vector width; it rewrites
float convolutions, of which this graph has none), so the fused graphs run on any x86-64 or Arm CPU. One graph
per fold (its network, from the shared input to its column of ``logit`` and ``prob``, [N, 1]) lets the runtime
build and run the folds in parallel processes (runtime/ensemble.py).

The per-channel constants that scale and normalise the input image ([1, 1, 1, 3]) are stored at the image's own
shape ([1, H, W, 3]): onnxruntime broadcasts a last axis of three elements a three-element span at a time, many
times slower than an operand of the full shape (docs/performance.md). Each element meets the same constant in the
same float operation, so the answers stay identical to the bit.

The fused graphs hold the very same int8 tensors, so they ship without them: each tensor of at least
``EXTERNAL_MIN_BYTES`` is ONNX external data (location, offset, length) that points at the identical bytes inside
the standard graph's file. The offsets are found by content, so whichever match is taken holds the same values
(export then checks that the graphs answer alike).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from runtime.contract import CPU_MODEL_FILES, LOGIT_OUTPUT, PROB_OUTPUT
from runtime.device import CPU
from runtime.session import load_onnxruntime, session_options

EXTERNAL_MIN_BYTES = 1024
MAX_OWN_FRACTION = 0.05  # of the standard graph's size: above it, the fused graphs would ship weights twice
ELEMENTWISE = ("Cast", "Add", "Sub", "Mul", "Div")  # the image's shape passes through these unchanged
TILED = ".tiled"  # ends the name of a constant stored at the image's shape


def write_cpu_graphs(model_path: Path) -> list[Path]:
    """Write one CPU graph per fold of ``model_path`` (a saved ensemble graph) beside it, CPU_MODEL_FILES; none
    (an empty list) when ``logit`` is not a Concat of the folds' columns or when the large tensors the fused graph
    would hold itself, those not found in the standard graph (onnxruntime transposes or folds some, as in
    weight-only graphs), exceed MAX_OWN_FRACTION of the standard graph's size."""
    model_path = Path(model_path)
    fused = _fused(model_path)
    columns = next((n for n in fused.graph.node if LOGIT_OUTPUT in n.output and n.op_type == "Concat"), None)
    source = model_path.read_bytes()
    if columns is None or not _point_at(fused, source, model_path.name):
        return []
    _tile_image_constants(fused)  # after _point_at: these are the graphs' own, not the standard graph's bytes
    paths = []
    for i in range(len(columns.input)):
        path = model_path.parent / CPU_MODEL_FILES.format(i)
        onnx.save(_fold_graph(fused, columns, i), str(path))
        paths.append(path)
    return paths


def _fused(model_path: Path) -> onnx.ModelProto:
    """The graph onnxruntime builds from ``model_path`` for the CPU provider, with the runtime's session options
    (runtime/session.py), saved and read back."""
    ort = load_onnxruntime()
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(ort, threads=1)
        options.add_session_config_entry("optimization.disable_specified_optimizers", "NchwcTransformer")
        options.optimized_model_filepath = str(Path(tmp) / "fused.onnx")
        ort.InferenceSession(str(model_path), options, providers=[CPU])
        return onnx.load(options.optimized_model_filepath)


def _point_at(model: onnx.ModelProto, source: bytes, location: str) -> bool:
    """Large tensors of ``model`` become pointers into ``source`` (the file ``location``); False when those not
    found there weigh more than MAX_OWN_FRACTION of it."""
    own = 0
    for i, tensor in enumerate(model.graph.initializer):
        data = numpy_helper.to_array(tensor).tobytes()
        if len(data) < EXTERNAL_MIN_BYTES:
            continue
        offset = source.find(data)
        if offset < 0:
            own += len(data)
            continue
        pointer = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                   data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", location), ("offset", offset), ("length", len(data))):
            pointer.external_data.add(key=key, value=str(value))
        model.graph.initializer[i].CopyFrom(pointer)
    return own <= MAX_OWN_FRACTION * len(source)


def _fold_graph(fused: onnx.ModelProto, columns: onnx.NodeProto, column: int) -> onnx.ModelProto:
    """The nodes ``columns.input[column]`` depends on, then that column as ``logit`` and ``prob`` [N, 1]."""
    producer = {name: node for node in fused.graph.node for name in node.output}
    needed, stack = set(), [columns.input[column]]
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(node.input)
    nodes = [n for n in fused.graph.node if id(n) in needed] + [
        helper.make_node("Concat", [columns.input[column]], [LOGIT_OUTPUT], axis=1),
        helper.make_node("Sigmoid", [LOGIT_OUTPUT], [PROB_OUTPUT])]
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(nodes, f"{fused.graph.name}-fold{column}", list(fused.graph.input),
                              [_one_column(o) for o in fused.graph.output if o.name in (LOGIT_OUTPUT, PROB_OUTPUT)],
                              [t for t in fused.graph.initializer if t.name in used])
    return helper.make_model(graph, opset_imports=fused.opset_import, ir_version=fused.ir_version)


def _one_column(output: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    single = onnx.ValueInfoProto()
    single.CopyFrom(output)
    single.type.tensor_type.shape.dim[1].ClearField("dim_param")
    single.type.tensor_type.shape.dim[1].dim_value = 1
    return single


def _tile_image_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each constant operand that broadcasts along the image's last axis alone, in the elementwise
    nodes that take the image, stored at the image's shape (the module's docstring says why); unchanged when the
    image's height and width are not fixed."""
    image = model.graph.input[0]
    dims = [d.dim_value for d in image.type.tensor_type.shape.dim[1:]]
    if not all(dims):
        return model
    constants = {t.name: t for t in model.graph.initializer}
    on_image = {image.name}
    for node in model.graph.node:
        if node.op_type not in ELEMENTWISE or node.input[0] not in on_image:
            continue
        on_image.add(node.output[0])
        constant = constants.get(node.input[-1]) if len(node.input) == 2 else None
        if constant is None or list(constant.dims) != [1] * len(dims) + [dims[-1]]:
            continue
        tiled = constant.name + TILED
        if tiled not in constants:  # once, however many nodes take it
            constants[tiled] = numpy_helper.from_array(np.ascontiguousarray(np.broadcast_to(
                numpy_helper.to_array(constant), [1, *dims])), tiled)
            model.graph.initializer.append(constants[tiled])
        node.input[-1] = tiled
    used = {name for node in model.graph.node for name in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model
