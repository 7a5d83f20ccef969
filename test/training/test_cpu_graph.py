"""The CPU graphs (training/cpu_graph.py): onnxruntime's fused graph, one per fold, reading its tensors from the
standard graph's bytes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import real_pages, tiny_conv_graph
from onnx import TensorProto, helper, numpy_helper

from training.cpu_graph import EXTERNAL_MIN_BYTES, TILED, _tile_image_constants, write_cpu_graphs
from training.quantize import calibration_sample, fold_probabilities, quantize


@pytest.fixture(scope="module")
def standard(tmp_path_factory) -> onnx.ModelProto:
    pages = real_pages(8)
    path = tmp_path_factory.mktemp("graphs") / "ensemble.onnx"
    onnx.save(quantize(tiny_conv_graph(channels=64), "static", calibration_sample(pages, 8)), str(path))
    return path


def test_cpu_graphs_are_fused_per_fold_read_their_tensors_from_the_standard_graph_and_answer_alike(standard):
    paths = write_cpu_graphs(standard)
    assert [p.name for p in paths] == ["ensemble.cpu.0.onnx", "ensemble.cpu.1.onnx"]
    source = standard.read_bytes()
    for path in paths:
        fused = onnx.load(str(path), load_external_data=False)
        ops = {n.op_type for n in fused.graph.node}
        assert "QLinearConv" in ops and "Conv" not in ops
        assert [o.type.tensor_type.shape.dim[1].dim_value for o in fused.graph.output] == [1, 1]
        external = {t.name: {e.key: e.value for e in t.external_data} for t in fused.graph.initializer
                    if t.data_location == onnx.TensorProto.EXTERNAL}
        assert external and all(e["location"] == "ensemble.onnx" for e in external.values())
        assert all(int(e["length"]) >= EXTERNAL_MIN_BYTES for e in external.values())
        loaded = {t.name: t for t in onnx.load(str(path)).graph.initializer}  # resolves the pointers
        for name, e in external.items():
            start = int(e["offset"])
            assert source[start:start + int(e["length"])] == loaded[name].raw_data
    pages = real_pages(16)
    together = np.concatenate([fold_probabilities(p, pages) for p in paths], axis=1)
    np.testing.assert_array_equal(together, fold_probabilities(standard, pages))


def columns_graph(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> onnx.ModelProto:
    """x [N, K] -> logit = Concat(x @ (a + b), x @ c), prob: the ensemble's layout on float matrices."""
    inits = [numpy_helper.from_array(m.astype(np.float32), n) for m, n in ((a, "a"), (b, "b"), (c, "c"))]
    nodes = [helper.make_node("Add", ["a", "b"], ["w"]), helper.make_node("MatMul", ["x", "w"], ["col0"]),
             helper.make_node("MatMul", ["x", "c"], ["col1"]),
             helper.make_node("Concat", ["col0", "col1"], ["logit"], axis=1),
             helper.make_node("Sigmoid", ["logit"], ["prob"])]
    graph = helper.make_graph(nodes, "columns", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", len(a)])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 2]),
                               helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_no_cpu_graphs_when_they_would_hold_weights_of_their_own(tmp_path):
    """Tensors onnxruntime makes while it optimises (here: a + b folded into one constant; in weight-only ViT
    graphs, transposed weights) are not in the standard graph's bytes: the fused graphs would ship them again."""
    rng = np.random.default_rng(0)
    path = tmp_path / "ensemble.onnx"
    onnx.save(columns_graph(*(rng.normal(size=(4096, 1)) for _ in range(3))), str(path))
    assert write_cpu_graphs(path) == [] and not list(tmp_path.glob("ensemble.cpu.*"))
    small = tmp_path / "small" / "ensemble.onnx"  # the same layout, every tensor under the size that is pointed at
    small.parent.mkdir()
    onnx.save(columns_graph(*(rng.normal(size=(64, 1)) for _ in range(3))), str(small))
    assert len(write_cpu_graphs(small)) == 2


def test_no_cpu_graphs_without_a_column_per_fold(tmp_path):
    model = tiny_conv_graph()
    producer = next(n for n in model.graph.node if n.op_type == "Concat")
    producer.op_type = "Sum"  # logit no longer a Concat of the folds' columns
    del producer.attribute[:]
    path = tmp_path / "ensemble.onnx"
    onnx.save(model, str(path))
    assert write_cpu_graphs(path) == []


def normalising_graph(height: int | str) -> onnx.ModelProto:
    """uint8 image [N, height, 8, 3] -> (x / 255 - mean) / std - mean, per channel (mean taken twice) -> * a
    per-channel gain (off the image's path: it follows a Relu)."""
    channel = [1, 1, 1, 3]
    inits = [numpy_helper.from_array(np.array(v, np.float32).reshape(shape), name) for v, shape, name in (
        (255, [], "full"), ([0.485, 0.456, 0.406], channel, "mean"), ([0.229, 0.224, 0.225], channel, "std"),
        ([1.5, 0.5, 2.0], channel, "gain"))]
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["f", "full"], ["x01"]), helper.make_node("Sub", ["x01", "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "std"], ["d"]), helper.make_node("Sub", ["d", "mean"], ["z"]),
             helper.make_node("Relu", ["z"], ["r"]), helper.make_node("Mul", ["r", "gain"], ["out"])]
    graph = helper.make_graph(nodes, "normalising",
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", height, 8, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", height, 8, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_the_image_per_channel_constants_are_stored_at_the_image_shape_with_the_same_answers():
    import onnxruntime as ort

    tiled = _tile_image_constants(normalising_graph(16))
    shapes = {t.name: list(t.dims) for t in tiled.graph.initializer}
    assert len(shapes) == len(tiled.graph.initializer)  # a constant two nodes take is tiled once
    assert shapes == {"full": [], "mean" + TILED: [1, 16, 8, 3], "std" + TILED: [1, 16, 8, 3], "gain": [1, 1, 1, 3]}
    image = np.random.default_rng(0).integers(0, 256, (2, 16, 8, 3), dtype=np.uint8)
    answers = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"image": image})[0] for m in (normalising_graph(16), tiled)]
    np.testing.assert_array_equal(*answers)
    assert _tile_image_constants(normalising_graph("H")) == normalising_graph("H")  # no fixed shape to tile to
