"""int8 quantisation of the exported graph (training/quantize.py) on a tiny conv net with the ensemble's interface."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import real_pages, tiny_conv_graph
from onnx import TensorProto, numpy_helper

from training.data import PatchSet
from training.quantize import (
    accuracy_guard,
    calibration_sample,
    expand_weights,
    fold_probabilities,
    quantize,
    validation_ba,
)


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(model.SerializeToString())


def test_weight_only_int8_expands_back_to_the_float_weights():
    model = tiny_conv_graph()
    int8 = quantize(copy(model), "weights")
    assert {t.name: t.data_type for t in int8.graph.initializer}["conv_w_q"] == TensorProto.INT8
    back = {t.name: numpy_helper.to_array(t) for t in expand_weights(copy(int8)).graph.initializer}
    assert "conv_w_q" not in back and "conv_w_scale" not in back
    for name in ("conv_w", "fc0_w"):
        w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))
        step = np.abs(w).max() / 127
        assert np.abs(back[name] - w).max() <= step / 2 + 1e-7 and not np.array_equal(back[name], w)
    pages = real_pages(8)
    np.testing.assert_allclose(fold_probabilities(expand_weights(copy(int8)), pages),
                               fold_probabilities(int8, pages), atol=1e-5)


def test_static_int8_has_fixed_scales_and_answers_each_page_alone_as_in_its_batch():
    model = tiny_conv_graph()
    pages = real_pages(16)
    int8 = quantize(copy(model), "static", calibration_sample(pages, 8))
    ops = [n.op_type for n in int8.graph.node]
    assert "QuantizeLinear" in ops and not {"DynamicQuantizeLinear", "MatMulInteger"} & set(ops)
    batch = fold_probabilities(int8, pages)
    alone = np.concatenate([fold_probabilities(int8, pages[i:i + 1]) for i in range(len(pages))])
    np.testing.assert_allclose(alone, batch, atol=1e-6)
    reference = fold_probabilities(model, pages)
    assert np.abs(batch - reference).max() < 0.05 and not np.allclose(batch, reference, atol=1e-7)
    # back to float: no Q/DQ left, the float model's answers up to int8 weight rounding
    back = expand_weights(copy(int8))
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in back.graph.node}
    np.testing.assert_allclose(fold_probabilities(back, pages), reference, atol=0.01)


def test_static_quantisation_needs_calibration_and_a_known_method():
    with pytest.raises(ValueError, match="calibration patches"):
        quantize(tiny_conv_graph(), "static", None)
    with pytest.raises(ValueError, match="minmax | percentile | entropy"):
        quantize(tiny_conv_graph(), "static", real_pages(2), method="kl")
    with pytest.raises(ValueError, match="static | weights"):
        quantize(tiny_conv_graph(), "dynamic")


def test_calibration_sample_is_fixed_by_the_seed():
    images = np.arange(100)[:, None]
    a, b, c = calibration_sample(images, 10, 0), calibration_sample(images, 10, 0), calibration_sample(images, 10, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and np.all(np.diff(a[:, 0]) > 0)
    assert len(calibration_sample(images, 1000)) == 100


def test_validation_ba_scores_each_fold_on_its_own_domain_and_threshold():
    labels = np.array([1, 0, 1, 0, 1, 0])
    domains = np.array(["a", "a", "a", "b", "b", "b"])
    data = PatchSet(images=np.zeros((6, 1, 1, 3), np.uint8), labels=labels, domains=domains, paths=[""] * 6)
    probs = np.array([[0.9, 0.0], [0.1, 0.0], [0.4, 0.0], [0.0, 0.3], [0.0, 0.7], [0.0, 0.2]])
    folds = [{"threshold": 0.5, "fold": {"val_domain": "a", "train_domains": ["b"]}},
             {"threshold": 0.25, "fold": {"val_domain": "b", "train_domains": ["a"]}},
             {"threshold": 0.5, "fold": {"val_domain": "c", "train_domains": ["a"]}}]
    probs = np.concatenate([probs, probs[:, :1]], axis=1)
    # fold a: atypical 0.9 hit, 0.4 missed; normal 0.1 right -> (0.5 + 1) / 2; fold b at 0.25: 0.3 is a false call
    assert validation_ba(probs, data, folds) == [0.75, 0.75, None]


def test_accuracy_guard_bounds_each_fold_and_the_mean():
    assert accuracy_guard([0.80, 0.70], [0.804, 0.698])["holds"]
    assert not accuracy_guard([0.80, 0.70], [0.794, 0.70])["holds"]  # one fold 0.006 down
    assert not accuracy_guard([0.80, 0.70], [0.796, 0.697])["holds"]  # each fold within, the mean 0.0035 down
    assert accuracy_guard([0.80, 0.70, 0.9], [0.796, 0.697, 0.9])["holds"]
    assert not accuracy_guard([0.8, 0.7, 0.9, 0.6], [0.796, 0.696, 0.896, 0.696])["holds"]  # a fold 0.096 up
    result = accuracy_guard([0.8, None], [0.79, 0.5])
    assert result["delta"] == [pytest.approx(-0.01)] and not result["holds"]
