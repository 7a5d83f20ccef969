"""The ONNX ensemble runtime (model/ensemble.py) on the tiny torch-free model of conftest.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import make_tiny_ensemble, real_pages, tiny_model_probs
from model import ensemble as ensemble_module
from model.ensemble import CUDA_OPTIONS, Ensemble, ModelError, default_providers, results_json
from model.grand_challenge import validate_results
from model.vote import vote

CPU = ["CPUExecutionProvider"]


def d4_views(pages: np.ndarray) -> list[np.ndarray]:
    return [np.rot90(v, k, axes=(1, 2)) for v in (pages, pages[:, :, ::-1]) for k in range(4)]


def test_probabilities_and_classes_follow_the_model_and_the_vote(tmp_path):
    pages = real_pages(20)
    ens = Ensemble(make_tiny_ensemble(tmp_path / "w"), providers=CPU)
    probs = ens.probabilities(pages)
    assert probs.dtype == np.float32 and probs.shape == (20, 4)
    np.testing.assert_allclose(probs, tiny_model_probs(pages), atol=1e-5)
    results = ens.classify(pages)
    validate_results(results, 20)
    atypical, confidence = vote(probs, [0.5] * 4)
    assert [r["class"] == "atypical" for r in results] == atypical.tolist()
    np.testing.assert_allclose([r["confidence"] for r in results], confidence)


def test_d4_tta_averages_each_fold_over_the_eight_views(tmp_path):
    pages = real_pages(20)  # more than one TTA run (16 pages per run)
    weights = make_tiny_ensemble(tmp_path / "w", tta="d4", corner=40)  # not rotation invariant
    got = Ensemble(weights, providers=CPU).probabilities(pages)
    expected = np.mean([tiny_model_probs(v, corner=40) for v in d4_views(pages)], axis=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    plain = tiny_model_probs(pages, corner=40)
    assert np.abs(got - plain).max() > 1e-3  # TTA did change something


def test_long_stacks_run_in_batches_with_the_same_answers(tmp_path):
    pages = np.concatenate([real_pages(16)] * 9)  # 144 pages: 3 runs of at most 64
    ens = Ensemble(make_tiny_ensemble(tmp_path / "w"), providers=CPU)
    sizes = []
    run = ens._run
    ens._run = lambda batch, n: sizes.append(len(batch)) or run(batch, n)
    np.testing.assert_array_equal(ens.probabilities(pages), np.concatenate([ens.probabilities(pages[:16])] * 9))
    assert sizes[:3] == [64, 64, 16] and max(sizes) <= 64


def test_confidence_is_always_a_json_float():
    prediction = ensemble_module.Prediction(np.array([True, False]), np.array([1.0, 0.0]), np.zeros((2, 1), np.float32))
    text = json.dumps(results_json(prediction))
    assert text == '[{"class": "atypical", "confidence": 1.0}, {"class": "normal", "confidence": 0.0}]'
    validate_results(json.loads(text), 2)


@pytest.mark.parametrize("problem, words", [
    ("nan", ["non-finite"]),
    ("folds", ["shape", "[16, 3]"]),
    ("names", ["expected input 'pixels'"]),
    ("tta", ["unknown tta"]),
    ("manifest", ["unusable ensemble manifest"]),
    ("onnx", ["cannot load the ONNX ensemble"]),
])
def test_model_problems_are_model_errors(problem, words, tmp_path):
    weights = make_tiny_ensemble(tmp_path / "w", offsets=(0.0, np.nan, 0.0, 0.0) if problem == "nan" else (0.0, 0.2, -0.2, 0.4))
    spec = json.loads((weights / "ensemble.json").read_text())
    if problem == "folds":
        spec["folds"] = spec["folds"][:3]
    elif problem == "names":
        spec["input_name"] = "pixels"
    elif problem == "tta":
        spec["tta"] = "d8"
    elif problem == "manifest":
        del spec["model_file"]
    elif problem == "onnx":
        (weights / "ensemble.onnx").write_bytes(b"not a model")
    (weights / "ensemble.json").write_text(json.dumps(spec))
    with pytest.raises(ModelError) as info:
        Ensemble(weights, providers=CPU).probabilities(real_pages(16))
    for word in words:
        assert word in str(info.value)


def test_wrong_page_shape_is_refused(tmp_path):
    with pytest.raises(ModelError, match="takes uint8"):
        Ensemble(make_tiny_ensemble(tmp_path / "w"), providers=CPU).probabilities(np.zeros((2, 64, 64, 3), np.uint8))


@pytest.mark.parametrize("device, available, expected", [
    ("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"], CPU),
    ("cuda", ["CPUExecutionProvider"], CPU),
    ("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], [("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"]),
])
def test_provider_choice(device, available, expected, monkeypatch):
    monkeypatch.setenv("AMF_DEVICE", device)
    preloaded = []
    ort = SimpleNamespace(get_available_providers=lambda: available, preload_dlls=lambda: preloaded.append(1))
    assert default_providers(ort) == expected
    assert preloaded == ([1] if expected != CPU else [])
    assert CUDA_OPTIONS == {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}


def test_default_session_is_cpu_here_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("AMF_DEVICE", "cpu")
    ens = Ensemble(make_tiny_ensemble(tmp_path / "w"))
    assert ens.provider == "CPUExecutionProvider" and not ens.fell_back


def test_a_cuda_provider_that_cannot_start_falls_back_to_cpu_and_says_so(tmp_path, monkeypatch):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers() or Path("/dev/nvidia0").exists():
        pytest.skip("needs onnxruntime-gpu on a machine without a GPU")
    monkeypatch.setenv("AMF_DEVICE", "cuda")
    ens = Ensemble(make_tiny_ensemble(tmp_path / "w"))
    assert ens.provider == "CPUExecutionProvider" and ens.fell_back
    validate_results(ens.classify(real_pages(2)), 2)
