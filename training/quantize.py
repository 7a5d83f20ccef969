"""int8 quantisation of the exported ensemble graph (standard ONNX that the CPU and CUDA providers both load).

Two modes, one entry point (:func:`quantize`) for a float graph, whichever way it was made:
- ``static`` (shipped): weights int8 per output channel, activations uint8 with scales fixed by calibration on
  training patches (QDQ format). onnxruntime's CPU provider fuses the Q/DQ pairs into int8 kernels (VNNI/AMX);
  the CUDA provider runs the same graph with the Q/DQ nodes as written. The scales are constants, so a page's
  answer never depends on the other pages of its batch.
- ``weights``: weights int8 (DequantizeLinear), activations float: the earlier export, kept for comparisons.

A float graph comes from PyTorch (training/export.py) or from an exported int8 graph whose weights are expanded
back to float (:func:`expand_weights`), so that a shipped ensemble can be re-quantised without its checkpoints.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from sklearn.metrics import balanced_accuracy_score

from runtime.contract import INPUT_NAME
from runtime.contract import PROB_OUTPUT as PROB
from runtime.device import CPU, cpu_threads
from runtime.progress import progress_range
from runtime.session import CPU_IMAGES_PER_RUN, build_session, run_sessions
from training.choices import QUANTIZE_MODES as MODES
from training.data import PatchSet
from training.folds import Fold

WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1}  # op -> index of its weight input
STATIC_OPS = ["Conv", "Gemm", "MatMul"]  # ops whose inputs and outputs get int8 scales in static mode
CALIBRATION_BATCH = 32
FOLD_TOLERANCE, MEAN_TOLERANCE = 0.005, 0.003  # the accuracy guard: |int8 - float| validation BA


def quantize(model: onnx.ModelProto, mode: str = "static", calibration: np.ndarray | None = None,
             method: str = "minmax") -> onnx.ModelProto:
    """A float graph -> its int8 version. ``calibration``: uint8 [N, H, W, 3] training patches (static mode)."""
    if mode == "weights":
        return quantize_weights(model)
    if mode != "static":
        raise ValueError(f"unknown quantisation mode {mode!r} ({' | '.join(MODES)})")
    if calibration is None or not len(calibration):
        raise ValueError("static quantisation needs calibration patches")
    return quantize_static(model, calibration, method)


def quantize_static(model: onnx.ModelProto, calibration: np.ndarray, method: str = "minmax") -> onnx.ModelProto:
    """Weights int8 per output channel, activations uint8 per tensor, scales from ``calibration`` (QDQ)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"unknown calibration method {method!r} ({' | '.join(methods)})")
    input_name = model.graph.input[0].name

    class Patches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = (calibration[i:i + CALIBRATION_BATCH]
                            for i in progress_range(len(calibration), CALIBRATION_BATCH, "int8 calibration"))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    model = batchnorm_to_affine(model)
    with tempfile.TemporaryDirectory() as tmp:
        float_path, prepared, out = (str(Path(tmp) / n) for n in ("float.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(model, float_path)
        # shape inference and onnxruntime's basic optimisations (constant folding, Conv+BN) before calibration
        quant_pre_process(float_path, prepared, skip_symbolic_shape=True)
        ort_quantize_static(prepared, out, Patches(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=STATIC_OPS, calibrate_method=methods[method],
                            calibration_providers=["CPUExecutionProvider"],
                            extra_options={"CalibMaxIntermediateOutputs": _flush_every(len(calibration))})
        quantized = onnx.load(out)
    onnx.checker.check_model(quantized)
    return quantized


def _flush_every(n: int) -> int:
    """Min-max calibration folds its ranges every k batches instead of holding every activation (about 85 MB
    per patch for four ResNet-50s). onnxruntime 1.26 fails when k divides the number of batches: the last
    fold leaves nothing to compute, so k is the first number >= 4 that does not."""
    batches = -(-n // CALIBRATION_BATCH)
    return next(k for k in range(4, max(batches, 4) + 2) if batches % k)


def batchnorm_to_affine(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each inference BatchNormalization (the pre-activation norms, which cannot fold into a convolution)
    becomes x * scale + shift with [1, C, 1, 1] constants: element-wise ops that onnxruntime's layout pass
    carries into the int8 convolutions' NHWC layout, where a BatchNormalization node needs transposes."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "BatchNormalization" or len(node.output) != 1 or not all(i in inits for i in node.input[1:]):
            nodes.append(node)
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in node.input[1:5])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        names = (f"{node.output[0]}_scale", f"{node.output[0]}_shift", f"{node.output[0]}_scaled")
        graph.initializer.extend([numpy_helper.from_array(scale.astype(np.float32).reshape(1, -1, 1, 1), names[0]),
                                  numpy_helper.from_array((beta - mean * scale).astype(np.float32).reshape(1, -1, 1, 1),
                                                          names[1])])
        nodes += [helper.make_node("Mul", [node.input[0], names[0]], [names[2]]),
                  helper.make_node("Add", [names[2], names[1]], [node.output[0]])]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:  # the replaced norms' parameters
        graph.initializer.remove(tensor)
    return model


def quantize_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weight-only int8: each float weight of Conv/Gemm/MatMul becomes int8 + per-output-channel scale."""
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    new_nodes = []
    for tensor in list(graph.initializer):
        name, users = tensor.name, consumers.get(tensor.name, [])
        if not users or any(list(u.input).index(name) != WEIGHT_INPUT.get(u.op_type) for u in users):
            continue  # only tensors used solely as the weight input of Conv/Gemm/MatMul
        w = numpy_helper.to_array(tensor)
        if w.dtype != np.float32 or w.ndim < 2:
            continue
        axis = _output_axis(users[0], w.ndim)
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale = np.abs(w).max(axis=reduce) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.round(w / _along(scale, axis, w.ndim)), -127, 127).astype(np.int8)
        graph.initializer.remove(tensor)
        graph.initializer.extend([numpy_helper.from_array(q, f"{name}_q"),
                                  numpy_helper.from_array(scale, f"{name}_scale"),
                                  numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero")])
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zero"],
                                          [name], name=f"{name}_dequantize", axis=axis))
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def expand_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Back to float: each DequantizeLinear of constant tensors (int8 weights) becomes a float tensor, and each
    activation QuantizeLinear -> DequantizeLinear pair (static mode) is bypassed."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    kept, expanded, used = [], [], set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not all(i in inits for i in node.input):
            kept.append(node)
            continue
        q, scale = (numpy_helper.to_array(inits[i]) for i in node.input[:2])
        zero = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 else np.zeros_like(scale)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % max(q.ndim, 1)  # 1-D biases: 0
        if scale.ndim:  # per channel
            scale, zero = _along(scale, axis, q.ndim), _along(zero, axis, q.ndim)
        w = (q.astype(np.float32) - zero.astype(np.float32)) * scale
        expanded.append(numpy_helper.from_array(w.astype(np.float32), node.output[0]))
        used.add(node.input[0])
    quantized_by = {n.output[0]: n.input[0] for n in kept if n.op_type == "QuantizeLinear"}
    float_of = {n.output[0]: quantized_by[n.input[0]] for n in kept
                if n.op_type == "DequantizeLinear" and n.input[0] in quantized_by}
    kept = [n for n in kept if n.output[0] not in float_of and n.output[0] not in quantized_by]

    def source(name: str) -> str:  # through chains of pairs
        while name in float_of:
            name = float_of[name]
        return name

    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = source(name)
    for output in graph.output:
        if output.name in float_of:  # a graph output may not be renamed: keep one Identity
            kept.append(helper.make_node("Identity", [source(output.name)], [output.name]))
    users = {name for node in kept for name in node.input}
    remaining = [t for t in graph.initializer if t.name in users and t.name not in used]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(remaining + expanded)
    onnx.checker.check_model(model)
    return model


def calibration_sample(images: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """A fixed, seeded sample of ``n`` patches (all when fewer), in their original order."""
    rng = np.random.default_rng(seed)
    return images[np.sort(rng.choice(len(images), min(n, len(images)), replace=False))]


def _along(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def _output_axis(node: onnx.NodeProto, ndim: int) -> int:
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return ndim - 1
    return 0  # Conv: [out, in, kh, kw]


def fold_probabilities(model: onnx.ModelProto | str | Path, images: np.ndarray, batch: int = 64,
                       label: str = "graph") -> np.ndarray:
    """The graph's P(atypical) [N, members] on the CPU provider, in a session built as the container builds its
    own (runtime/session.py); progress on stdout as ``label: done/total patches``."""
    in_memory = isinstance(model, onnx.ModelProto)
    session = build_session(model.SerializeToString() if in_memory else model, [CPU], cpu_threads(), INPUT_NAME, PROB,
                            label=label if in_memory else None)
    return np.concatenate([run_sessions([session], images[i:i + batch], INPUT_NAME, PROB, CPU_IMAGES_PER_RUN)
                           for i in progress_range(len(images), batch, label)])


def validation_ba(probs: np.ndarray, data: PatchSet, members: list[dict]) -> list[float | None]:
    """Per member (output column; its spec entry), balanced accuracy at its threshold on its fold's validation part
    of ``data`` (None when its fold names no validation part found in ``data``)."""
    scores: list[float | None] = []
    for column, member in enumerate(members):
        _, val, _ = Fold.from_dict(member.get("fold") or {}).indices(data.domains, data.slides)
        labels = data.labels[val].astype(bool)
        if not len(val) or labels.all() or not labels.any():
            scores.append(None)
            continue
        called = probs[val, column] >= member.get("threshold", 0.5)
        scores.append(float(balanced_accuracy_score(labels, called)))
    return scores


def accuracy_guard(reference: list[float | None], quantized: list[float | None]) -> dict:
    """int8 vs float validation BA per fold: holds when each fold is within FOLD_TOLERANCE and the mean
    within MEAN_TOLERANCE (folds without a validation part are left out)."""
    pairs = [(r, q) for r, q in zip(reference, quantized) if r is not None and q is not None]
    deltas = [q - r for r, q in pairs]
    mean = float(np.mean(deltas)) if deltas else 0.0
    return {"float_ba": reference, "int8_ba": quantized, "delta": deltas, "mean_delta": mean,
            "holds": bool(deltas) and all(abs(d) <= FOLD_TOLERANCE for d in deltas) and abs(mean) <= MEAN_TOLERANCE,
            "tolerance": {"fold": FOLD_TOLERANCE, "mean": MEAN_TOLERANCE}}
