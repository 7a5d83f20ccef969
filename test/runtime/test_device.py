"""runtime/device.py: CPU/CUDA choice, driver and build checks, and CUDA sessions that fall back."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import ROOT, StandInOrt, make_tiny_ensemble, real_pages

from runtime import device, session
from runtime.ensemble import Ensemble


def device_env(monkeypatch, setting: str, gpu: bool, min_pages: str | None) -> None:
    """AMF_DEVICE, AMF_GPU_MIN_PAGES (None: unset) and whether a GPU is visible."""
    monkeypatch.setenv("AMF_DEVICE", setting)
    if min_pages is None:
        monkeypatch.delenv("AMF_GPU_MIN_PAGES", raising=False)
    else:
        monkeypatch.setenv("AMF_GPU_MIN_PAGES", min_pages)
    monkeypatch.setattr(device, "gpu_visible", lambda: gpu)


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
    device_env(monkeypatch, setting, gpu, min_pages)
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


def test_cuda_session_starts_with_its_options(monkeypatch):
    monkeypatch.setattr(device, "cuda_problem", lambda ort: None)
    ort = StandInOrt()
    session, note = device.cuda_session("m.onnx", "image", "prob", 2, ort=ort)
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
def test_cuda_that_fails_or_silently_falls_back_becomes_a_note_and_no_session(ort, words, monkeypatch):
    monkeypatch.setattr(device, "cuda_problem", lambda ort: None)
    session, note = device.cuda_session("m.onnx", "image", "prob", 2, ort=ort)
    assert note == words and session is None
    assert ort.calls == [[(device.CUDA, device.CUDA_OPTIONS), device.CPU]]  # the CPU session is the ensemble's


def test_cuda_problem_found_first_costs_no_cuda_session(monkeypatch):
    monkeypatch.setattr(device, "cuda_problem", lambda ort: "no NVIDIA driver in this container")
    ort = StandInOrt()
    session, note = device.cuda_session("m.onnx", "image", "prob", 2, ort=ort)
    assert note == "no NVIDIA driver in this container" and session is None and ort.calls == [] and not ort.preloaded


def test_cuda_that_cannot_start_falls_back_to_the_cpu_with_the_reason(tmp_path, monkeypatch):
    if device.gpu_visible():
        pytest.skip("a GPU is present: CUDA would start")
    monkeypatch.setenv("AMF_DEVICE", "cuda")
    ens = Ensemble(make_tiny_ensemble(tmp_path / "w"))
    assert ens.provider == "CPUExecutionProvider"
    assert "CPU build" in ens.device_note or "no NVIDIA driver" in ens.device_note
    assert ens.predict(real_pages(2)).member_probs.shape == (2, 4)


@pytest.mark.parametrize("setting, gpu, min_pages, expected", [
    ("auto", True, "8", True), ("auto", True, None, False), ("auto", False, "8", False), ("cpu", True, "8", False),
    ("cuda", True, "8", False),
])
def test_page_count_matters_only_for_a_visible_gpu_with_a_minimum(setting, gpu, min_pages, expected, monkeypatch):
    device_env(monkeypatch, setting, gpu, min_pages)
    assert device.choice_needs_page_count() is expected


def test_cuda_that_cannot_start_leaves_the_cpu_graphs_to_the_cpu(monkeypatch):
    """After a failed CUDA start the ensemble runs its per-member CPU graphs (in this process: the caller did not
    allow forking), not the standard graph, and keeps the reason."""
    monkeypatch.setattr("runtime.runners.wants_cuda", lambda n_pages=None: True)
    monkeypatch.setattr("runtime.runners.cuda_session", lambda *args: (None, "no NVIDIA driver"))
    ens = Ensemble(ROOT / "weights")
    assert (ens.provider, ens.layout, ens.device_note) == (device.CPU, "4 graphs in this process", "no NVIDIA driver")
    # process.py allows forking, but the failed start loaded onnxruntime: the graphs stay in this process
    forking = Ensemble(ROOT / "weights", fork=True)
    assert (forking.layout, forking.device_note) == ("4 graphs in this process", "no NVIDIA driver")
    forking.close()
    assert ens.predict(real_pages(2)).member_probs.shape == (2, 4)


def test_sessions_keep_no_cpu_memory_arena():
    """Without an arena a session returns a batch's activations after the run: amf predict's workers stay
    bounded by one batch of one graph (the figures: bench/peak_memory.py, docs/performance.md)."""
    options = session.session_options(session.load_onnxruntime(), 1)
    assert options.enable_cpu_mem_arena is False and options.intra_op_num_threads == 1
