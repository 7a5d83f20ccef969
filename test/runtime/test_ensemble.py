"""The ONNX ensemble runtime (runtime/ensemble.py, vote.py) on the tiny model of conftest.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, d4_views, make_tiny_ensemble, real_pages, tiny_model_probs

from runtime.ensemble import Ensemble
from runtime.errors import ModelError
from runtime.grand_challenge import results_json, validate_results
from runtime.vote import vote

CPU = ["CPUExecutionProvider"]


def test_probabilities_and_classes_follow_the_model_and_the_vote(tmp_path):
    pages = real_pages(20)
    ens = Ensemble(make_tiny_ensemble(tmp_path / "w"))
    probs = ens.probabilities(pages)
    assert probs.dtype == np.float32 and probs.shape == (20, 4)
    np.testing.assert_allclose(probs, tiny_model_probs(pages), atol=1e-5)
    prediction = ens.predict(pages)
    results = results_json(prediction.atypical, prediction.confidence)
    validate_results(results, 20)
    # by hand: majority of the 4 folds at 0.5, a 2-2 tie to the mean probability; confidence the mean
    above, mean = (probs >= 0.5).sum(1), probs.mean(1)
    expected = np.where(above == 2, mean >= 0.5, above > 2)
    assert [r["class"] == "atypical" for r in results] == expected.tolist()
    np.testing.assert_allclose([r["confidence"] for r in results], mean, rtol=1e-6)


def test_d4_tta_averages_each_fold_over_the_eight_views(tmp_path):
    pages = real_pages(20)  # more than one TTA run (16 pages per run)
    weights = make_tiny_ensemble(tmp_path / "w", tta="d4", corner=40)  # not rotation invariant
    got = Ensemble(weights).probabilities(pages)
    expected = np.mean([tiny_model_probs(v, corner=40) for v in d4_views(pages)], axis=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    plain = tiny_model_probs(pages, corner=40)
    assert np.abs(got - plain).max() > 1e-3  # TTA did change something


def test_confidence_is_always_a_json_float():
    text = json.dumps(results_json(np.array([True, False]), np.array([1.0, 0.0])))
    assert text == '[{"class": "atypical", "confidence": 1.0}, {"class": "normal", "confidence": 0.0}]'
    validate_results(json.loads(text), 2)


@pytest.mark.parametrize("problem, words", [
    ("nan", ["non-finite"]),
    ("folds", ["shape", "[16, 3]"]),
    ("names", ["expected input 'pixels'"]),
    ("tta", ["unknown tta"]),
    ("spec", ["unusable ensemble spec"]),
    ("onnx", ["cannot load the ONNX graph"]),
])
def test_model_problems_are_model_errors(problem, words, tmp_path):
    weights = make_tiny_ensemble(tmp_path / "w",
                                 offsets=(0.0, np.nan, 0.0, 0.0) if problem == "nan" else (0.0, 0.2, -0.2, 0.4))
    spec = json.loads((weights / "ensemble.json").read_text())
    if problem == "folds":
        spec["folds"] = spec["folds"][:3]
    elif problem == "names":
        spec["input_name"] = "pixels"
    elif problem == "tta":
        spec["tta"] = "d8"
    elif problem == "spec":
        del spec["model_file"]
    elif problem == "onnx":
        (weights / "ensemble.onnx").write_bytes(b"not a model")
    (weights / "ensemble.json").write_text(json.dumps(spec))
    with pytest.raises(ModelError) as info:
        Ensemble(weights).probabilities(real_pages(16))
    for word in words:
        assert word in str(info.value)


def test_wrong_page_shape_is_refused(tmp_path):
    with pytest.raises(ModelError, match="takes uint8"):
        Ensemble(make_tiny_ensemble(tmp_path / "w")).probabilities(np.zeros((2, 64, 64, 3), np.uint8))


def test_shipped_graph_answers_a_page_the_same_alone_and_in_a_batch():
    """Activation scales fixed at export: a page's answer must not depend on its neighbours (dynamic, per-batch
    quantisation would make it so)."""
    import onnx

    weights = ROOT / "weights"
    graph = onnx.load(str(weights / "ensemble.onnx"), load_external_data=False)
    ops = {n.op_type for n in graph.graph.node}
    assert "QuantizeLinear" in ops and not ops & {"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulInteger"}
    ens = Ensemble(weights)
    pages = real_pages(16)
    pages[1:] = 255 - pages[1:]  # neighbours far from page 0 in intensity
    batch = ens.probabilities(pages)
    for i in (0, 7):
        np.testing.assert_allclose(ens.probabilities(pages[i:i + 1])[0], batch[i], atol=1e-4)


def test_shipped_cpu_graphs_are_the_standard_graph_fused_and_cut_per_fold_without_their_own_weights():
    """CPU sessions load ensemble.cpu.<member>.onnx, whose tensors are read from ensemble.onnx's bytes: together
    they must answer as the standard graph (the one the CUDA provider loads) does, to the last bit on the CPU."""
    import onnx
    import onnxruntime as ort

    weights = ROOT / "weights"
    ens = Ensemble(weights)
    assert ens.layout == "4 graphs in this process"  # no fork asked for
    for path in ens.spec.cpu_model_files:
        fused = onnx.load(str(path), load_external_data=False)
        ops = {n.op_type for n in fused.graph.node}
        assert "QLinearConv" in ops and "Conv" not in ops
        assert [o.type.tensor_type.shape.dim[1].dim_value for o in fused.graph.output] == [1, 1]
        external = [t for t in fused.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"ensemble.onnx"}
        assert path.stat().st_size < (weights / "ensemble.onnx").stat().st_size / 100
        shapes = {t.name: list(t.dims) for t in fused.graph.initializer}
        scaling = [n.input[1] for n in fused.graph.node if n.op_type in ("Sub", "Div")]  # the input's, per channel
        assert sorted(shapes[name] for name in scaling) == [[], [1, 128, 128, 3], [1, 128, 128, 3]]
    pages = real_pages(16)
    standard = ort.InferenceSession(str(weights / "ensemble.onnx"))
    np.testing.assert_array_equal(ens.probabilities(pages), standard.run(["prob"], {"image": pages})[0])


def test_vote_majority_tie_and_confidence():
    probs = np.array([[0.9, 0.8, 0.2, 0.1], [0.6, 0.9, 0.1, 0.1], [0.6, 0.9, 0.4, 0.3], [0.6, 0.6, 0.6, 0.0]])
    atypical, confidence = vote(probs, [0.5] * 4)
    assert atypical.tolist() == [True, False, True, True]  # tie -> mean >= 0.5; 3 of 4 -> atypical
    np.testing.assert_allclose(confidence, probs.mean(1))
    assert vote(probs[:, :3], [0.5] * 3)[0].tolist() == [True, True, True, True]


ENSEMBLES_IN_ONE_PROCESS = """
import itertools, json, os, sys
import numpy as np
from runtime.ensemble import Ensemble

weights, n, expected = sys.argv[1], int(sys.argv[2]), np.array(json.loads(sys.argv[3]))
pages = np.stack([np.full((128, 128, 3), v, np.uint8) for v in (60, 128, 200)])

def open_ensembles():
    ensembles = [Ensemble(weights, fork=True) for _ in range(n)]
    assert all("worker processes" in e.layout for e in ensembles), [e.layout for e in ensembles]
    np.testing.assert_allclose(ensembles[-1].probabilities(pages), expected, atol=1e-6)
    return ensembles

for order in itertools.permutations(range(n)):
    ensembles = open_ensembles()
    for i in order:
        pids = ensembles[i].runner.pids
        ensembles[i].close()
        assert all(not os.path.exists(f"/proc/{pid}") for pid in pids), f"workers of {i} still there"
left_open = open_ensembles()  # the interpreter's exit ends these
from runtime.session import onnxruntime_is_idle
assert "torch" not in sys.modules and onnxruntime_is_idle()  # imported for the workers, no session built here
print("done", flush=True)
"""


@pytest.mark.parametrize("n", [2, 3])
def test_several_ensembles_in_one_process_close_in_any_order_and_the_process_exits(n, tmp_path):
    """Ensembles with worker processes (a fresh process: no onnxruntime session), ``n`` at a time: each closes
    in any order with its workers gone, and the interpreter exits with some left open. A worker must not hold
    another ensemble's pipe ends, or that ensemble's workers never see their input end."""
    weights = make_tiny_ensemble(tmp_path / "w", offsets=(0.0, 0.3), cpu_graphs=True)
    pages = np.stack([np.full((128, 128, 3), v, np.uint8) for v in (60, 128, 200)])
    expected = json.dumps(tiny_model_probs(pages, offsets=(0.0, 0.3)).tolist())
    proc = subprocess.Popen([sys.executable, "-c", ENSEMBLES_IN_ONE_PROCESS, str(weights), str(n), expected],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "AMF_THREADS": "2", "AMF_DEVICE": "cpu"}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and every worker it left waiting
        out, err = proc.communicate()
        pytest.fail(f"hung: {out}{err}")
    assert proc.returncode == 0 and out == "done\n", out + err
