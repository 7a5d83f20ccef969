"""The CPU graph (training/cpu_graph.py): onnxruntime's fused graph whose tensors are read from the standard one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import real_pages, tiny_conv_graph
from onnx import TensorProto, helper, numpy_helper

from training.cpu_graph import EXTERNAL_MIN_BYTES, write_cpu_graph
from training.quantize import calibration_sample, fold_probabilities, quantize


@pytest.fixture(scope="module")
def standard(tmp_path_factory) -> onnx.ModelProto:
    pages = real_pages(8)
    path = tmp_path_factory.mktemp("graphs") / "ensemble.onnx"
    onnx.save(quantize(tiny_conv_graph(channels=64), "static", calibration_sample(pages, 8)), str(path))
    return path


def test_cpu_graph_is_fused_reads_its_tensors_from_the_standard_graph_and_answers_alike(standard):
    cpu = standard.parent / "ensemble.cpu.onnx"
    write_cpu_graph(standard, cpu)
    fused = onnx.load(str(cpu), load_external_data=False)
    ops = {n.op_type for n in fused.graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops
    external = {t.name: {e.key: e.value for e in t.external_data} for t in fused.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL}
    assert external and all(e["location"] == "ensemble.onnx" for e in external.values())
    assert all(int(e["length"]) >= EXTERNAL_MIN_BYTES for e in external.values())
    source = standard.read_bytes()
    loaded = {t.name: t for t in onnx.load(str(cpu)).graph.initializer}  # resolves the pointers
    for name, e in external.items():
        start = int(e["offset"])
        assert source[start:start + int(e["length"])] == loaded[name].raw_data
    pages = real_pages(16)
    np.testing.assert_array_equal(fold_probabilities(cpu, pages), fold_probabilities(standard, pages))


def test_cpu_graph_must_sit_beside_the_standard_graph(standard, tmp_path):
    with pytest.raises(ValueError, match="share a folder"):
        write_cpu_graph(standard, tmp_path / "ensemble.cpu.onnx")


def test_no_cpu_graph_when_it_would_hold_weights_of_its_own(tmp_path):
    """Tensors onnxruntime makes while it optimises (here: A + B folded into one constant; in weight-only ViT graphs,
    transposed weights) are not in the standard graph's bytes: the fused graph would ship them a second time."""
    rng = np.random.default_rng(0)
    a, b = (numpy_helper.from_array(rng.normal(size=(64, 64)).astype(np.float32), n) for n in "ab")
    nodes = [helper.make_node("Add", ["a", "b"], ["w"]), helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "folds", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], [a, b])
    path = tmp_path / "ensemble.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    assert write_cpu_graph(path, tmp_path / "ensemble.cpu.onnx") is False
    assert not (tmp_path / "ensemble.cpu.onnx").exists()
