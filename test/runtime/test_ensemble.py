"""The ONNX ensemble runtime (runtime/ensemble.py, device.py, tta.py, vote.py) on the tiny model of conftest.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT, make_tiny_ensemble, real_pages, tiny_model_probs

from runtime import device, tta
from runtime.ensemble import Ensemble
from runtime.errors import ModelError
from runtime.grand_challenge import results_json, validate_results
from runtime.vote import vote

CPU = ["CPUExecutionProvider"]


def d4_views(pages: np.ndarray) -> list[np.ndarray]:
    return [np.rot90(v, k, axes=(1, 2)) for v in (pages, pages[:, :, ::-1]) for k in range(4)]


def test_probabilities_and_classes_follow_the_model_and_the_vote(tmp_path):
    pages = real_pages(20)
    ens = Ensemble(make_tiny_ensemble(tmp_path / "w"), providers=CPU)
    probs = ens.probabilities(pages)
    assert probs.dtype == np.float32 and probs.shape == (20, 4)
    np.testing.assert_allclose(probs, tiny_model_probs(pages), atol=1e-5)
    prediction = ens.predict(pages)
    results = results_json(prediction.atypical, prediction.confidence)
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
    ens._run = lambda batch: sizes.append(len(batch)) or run(batch)
    np.testing.assert_array_equal(ens.probabilities(pages), np.concatenate([ens.probabilities(pages[:16])] * 9))
    assert sizes[:3] == [64, 64, 16] and max(sizes) <= 64


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
    ("onnx", ["cannot load the ONNX ensemble"]),
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
        Ensemble(weights, providers=CPU).probabilities(real_pages(16))
    for word in words:
        assert word in str(info.value)


def test_wrong_page_shape_is_refused(tmp_path):
    with pytest.raises(ModelError, match="takes uint8"):
        Ensemble(make_tiny_ensemble(tmp_path / "w"), providers=CPU).probabilities(np.zeros((2, 64, 64, 3), np.uint8))


@pytest.mark.parametrize("setting, gpu, n_pages, min_pages, expected", [
    ("cpu", True, 16, None, False),
    ("cuda", False, 16, None, True),
    ("auto", False, 16, None, False),
    ("auto", True, 1, None, True),
    ("auto", True, 4, "8", False),
    ("auto", True, 8, "8", True),
    ("auto", True, None, "8", True),
])
def test_device_choice(setting, gpu, n_pages, min_pages, expected, monkeypatch):
    monkeypatch.setenv("AMF_DEVICE", setting)
    if min_pages is None:
        monkeypatch.delenv("AMF_GPU_MIN_PAGES", raising=False)
    else:
        monkeypatch.setenv("AMF_GPU_MIN_PAGES", min_pages)
    monkeypatch.setattr(device, "gpu_visible", lambda: gpu)
    assert device.wants_cuda(n_pages) is expected


def test_driver_check_names_the_driver_and_the_floor():
    assert device.driver_problem(12040, 12) is None and device.driver_problem(13000, 12) is None
    assert device.driver_problem(11080, 12) == ("the NVIDIA driver supports CUDA 11.8, this onnxruntime-gpu needs "
                                                "CUDA 12 (driver >= 525.60.13)")
    assert "needs CUDA 13 (driver >= 580" in device.driver_problem(12090, 13)


def test_cuda_problems_found_before_onnxruntime_tries(monkeypatch):
    cpu_build = SimpleNamespace(get_available_providers=lambda: [device.CPU], __version__="1.26.0")
    assert device.cuda_problem(cpu_build) == "this onnxruntime 1.26.0 is the CPU build (no CUDA provider)"
    gpu_build = SimpleNamespace(get_available_providers=lambda: [device.CUDA, device.CPU], __version__="1.26.0")
    assert device.cuda_problem(gpu_build, libcuda="libcuda-missing.so.1") == (
        "no NVIDIA driver in this container (libcuda-missing.so.1 not found)")


def test_cpu_session_when_cuda_is_not_wanted(tmp_path, monkeypatch):
    monkeypatch.setenv("AMF_DEVICE", "cpu")
    ens = Ensemble(make_tiny_ensemble(tmp_path / "w"))
    assert ens.provider == "CPUExecutionProvider" and ens.device_note is None


class StandInOrt:
    """A stand-in onnxruntime module: its InferenceSession answers as a CUDA build on a machine would."""

    def __init__(self, fails_with: Exception | None = None, comes_up_on: str = device.CUDA) -> None:
        self.fails_with, self.comes_up_on, self.calls, self.preloaded = fails_with, comes_up_on, [], False

    def preload_dlls(self) -> None:
        self.preloaded = True

    def InferenceSession(self, path, options, providers, enable_fallback=1):  # noqa: N802 - onnxruntime's name
        self.calls.append(providers)
        if providers[0] != device.CPU and self.fails_with is not None:
            raise self.fails_with
        first = providers[0] if isinstance(providers[0], str) else providers[0][0]
        on = self.comes_up_on if first == device.CUDA else device.CPU
        return SimpleNamespace(get_providers=lambda: [on, device.CPU])


def test_cuda_session_starts_with_its_options(monkeypatch):
    monkeypatch.setattr(device, "cuda_problem", lambda ort: None)
    ort = StandInOrt()
    session, note = device.create_session(ort, "m.onnx", None, want_cuda=True)
    assert note is None and session.get_providers()[0] == device.CUDA and ort.preloaded
    assert ort.calls == [[(device.CUDA, device.CUDA_OPTIONS), device.CPU]]
    assert device.CUDA_OPTIONS["use_tf32"] == "0"  # answers comparable with the CPU's


@pytest.mark.parametrize("ort, words", [
    (StandInOrt(fails_with=RuntimeError("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 100: no CUDA-capable device "
                                        "is detected ; GPU=0 ; hostname=x ; file=cuda_call.cc")),
     "the CUDA provider failed to start: CUDA failure 100: no CUDA-capable device is detected"),
    (StandInOrt(fails_with=ValueError("unexpected provider option")),
     "the CUDA provider failed to start: unexpected provider option"),
    (StandInOrt(comes_up_on=device.CPU), "the CUDA provider's libraries did not load"),  # silently on the CPU
])
def test_cuda_that_fails_or_silently_falls_back_becomes_a_note_and_a_cpu_session(ort, words, monkeypatch):
    monkeypatch.setattr(device, "cuda_problem", lambda ort: None)
    session, note = device.create_session(ort, "m.onnx", None, want_cuda=True)
    assert note == words and session.get_providers()[0] == device.CPU
    assert ort.calls[-1] == [device.CPU]


def test_cuda_problem_found_first_costs_no_cuda_session(monkeypatch):
    monkeypatch.setattr(device, "cuda_problem", lambda ort: "no NVIDIA driver in this container")
    ort = StandInOrt()
    session, note = device.create_session(ort, "m.onnx", None, want_cuda=True)
    assert note == "no NVIDIA driver in this container" and ort.calls == [[device.CPU]] and not ort.preloaded


def test_shipped_graph_answers_a_page_the_same_alone_and_in_a_batch():
    """Activation scales fixed at export: a page's answer must not depend on its neighbours (dynamic, per-batch
    quantisation would make it so)."""
    import onnx

    weights = ROOT / "weights"
    graph = onnx.load(str(weights / "ensemble.onnx"), load_external_data=False)
    ops = {n.op_type for n in graph.graph.node}
    assert "QuantizeLinear" in ops and not ops & {"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulInteger"}
    ens = Ensemble(weights, providers=CPU)
    pages = real_pages(16)
    pages[1:] = 255 - pages[1:]  # neighbours far from page 0 in intensity
    batch = ens.probabilities(pages)
    for i in (0, 7):
        np.testing.assert_allclose(ens.probabilities(pages[i:i + 1])[0], batch[i], atol=1e-4)


def test_cuda_that_cannot_start_falls_back_to_the_cpu_with_the_reason(tmp_path, monkeypatch):
    if device.gpu_visible():
        pytest.skip("a GPU is present: CUDA would start")
    monkeypatch.setenv("AMF_DEVICE", "cuda")
    ens = Ensemble(make_tiny_ensemble(tmp_path / "w"))
    assert ens.provider == "CPUExecutionProvider"
    assert "CPU build" in ens.device_note or "no NVIDIA driver" in ens.device_note
    assert ens.predict(real_pages(2)).fold_probs.shape == (2, 4)


def test_vote_majority_tie_and_confidence():
    probs = np.array([[0.9, 0.8, 0.2, 0.1], [0.6, 0.9, 0.1, 0.1], [0.6, 0.9, 0.4, 0.3], [0.6, 0.6, 0.6, 0.0]])
    atypical, confidence = vote(probs, [0.5] * 4)
    assert atypical.tolist() == [True, False, True, True]  # tie -> mean >= 0.5; 3 of 4 -> atypical
    np.testing.assert_allclose(confidence, probs.mean(1))
    assert vote(probs[:, :3], [0.5] * 3)[0].tolist() == [True, True, True, True]


def test_tta_views_are_the_eight_orientations_and_average_back():
    pages = np.arange(2 * 3 * 3 * 1, dtype=np.uint8).reshape(2, 3, 3, 1)
    views = tta.views(pages, "d4")
    assert views.shape == (16, 3, 3, 1) and views.flags.c_contiguous
    np.testing.assert_array_equal(views[:2], pages)  # view 0 is the page itself
    assert len({v.tobytes() for v in views[0::2]}) == 8  # the 8 orientations of page 0 all differ
    assert {v.tobytes() for v in views[0::2]} == {v[0].tobytes() for v in d4_views(pages[:1])}
    values = np.repeat(np.arange(8.0), 2)[:, None]  # view v of each page -> v
    np.testing.assert_array_equal(tta.mean_over_views(values, 2), [[3.5], [3.5]])
    np.testing.assert_array_equal(tta.views(pages, "none"), pages)
    with pytest.raises(ValueError, match=r"none \| d4"):
        tta.views(pages, "d8")
