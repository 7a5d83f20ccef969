"""runtime/runners.py: each way of running the graphs gives the same probabilities; forked workers' failures
never reach the next call. Forked runners run in a fresh process (this one builds onnxruntime sessions: it may not
fork workers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, StandInOrt, make_tiny_ensemble, real_pages

from runtime import device
from runtime.ensemble import Ensemble
from runtime.runners import CudaGraph, Forked, InProcess


def run_fresh(script: str, *args: str) -> str:
    """``script`` in a new interpreter (AMF_THREADS=2: two worker processes); its stdout. Fails the test when it
    does not end within a minute (its process group, workers included, is killed)."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "AMF_THREADS": "2", "AMF_DEVICE": "cpu"},
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"hung: {out}{err}")
    assert proc.returncode == 0, out + err
    return out


FORKED_ANSWERS = """
import json, sys
import numpy as np
from runtime.ensemble import Ensemble

ensemble = Ensemble(sys.argv[1], fork=True)
print(json.dumps({"layout": ensemble.layout, "probs": ensemble.probabilities(np.load(sys.argv[2])).tolist()}))
"""


def test_every_runner_gives_the_same_probabilities(tmp_path, monkeypatch):
    """The shipped ensemble on the same pages: its CPU graphs in this process and in two forked workers, and its
    standard graph in the CUDA runner (a stand-in onnxruntime whose session says CUDA and computes on the CPU)."""
    weights = ROOT / "weights"
    pages = real_pages(6)
    np.save(tmp_path / "pages.npy", pages)
    in_process = Ensemble(weights)
    assert isinstance(in_process.runner, InProcess)
    expected = in_process.probabilities(pages)
    forked = json.loads(run_fresh(FORKED_ANSWERS, str(weights), str(tmp_path / "pages.npy")))
    assert forked["layout"] == "4 graphs in 2 worker processes"
    np.testing.assert_array_equal(np.array(forked["probs"], np.float32), expected)

    monkeypatch.setenv("AMF_DEVICE", "cuda")
    monkeypatch.setattr(device, "cuda_problem", lambda ort: None)
    stand_in = StandInOrt()
    monkeypatch.setattr(device, "load_onnxruntime", lambda: stand_in)
    on_cuda = Ensemble(weights)
    assert isinstance(on_cuda.runner, CudaGraph) and stand_in.calls[0][0][0] == device.CUDA
    assert (on_cuda.provider, on_cuda.layout, on_cuda.device_note) == (device.CUDA, "one graph", None)
    np.testing.assert_array_equal(on_cuda.probabilities(pages), expected)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_onnxruntime_imported_without_a_session_runs_no_thread():
    """A forked runner imports onnxruntime before it forks its workers: that is safe only while the import starts
    no thread (a forked child gets the forking thread alone). numpy's OpenBLAS threads are set to one here, as
    process.py sets them."""
    script = ("import os; count = lambda: len(os.listdir('/proc/self/task')); import numpy; before = count(); "
              "from runtime.session import load_onnxruntime; load_onnxruntime(); print(before, count())")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}).stdout
    assert out.split() == ["1", "1"]


FORK_SAFETY = """
import sys
from runtime.forked import fork_is_safe
from runtime.session import build_session, load_onnxruntime

states = [fork_is_safe()]
if sys.argv[1] == "imported-elsewhere":
    import onnxruntime
load_onnxruntime()
states.append(fork_is_safe())
build_session(sys.argv[2], ["CPUExecutionProvider"], 1, "image", "prob", prefused=True)
states.append(fork_is_safe())
print(*states)
"""


@pytest.mark.parametrize("how, states", [("here", "True True False"), ("imported-elsewhere", "True False False")])
def test_a_process_may_fork_workers_until_onnxruntime_builds_a_session(how, states):
    """Forking is safe in a fresh process and still once load_onnxruntime has imported onnxruntime (a forked
    runner does so before it forks its workers); not once a session is built, nor when onnxruntime was imported
    by other code, whose sessions this module cannot see."""
    assert run_fresh(FORK_SAFETY, how, str(ROOT / "weights" / "ensemble.cpu.0.onnx")).split() == states.split()


def test_a_forked_runner_is_refused_in_a_process_that_built_a_session():
    from runtime.session import build_session

    build_session(ROOT / "weights" / "ensemble.cpu.0.onnx", ["CPUExecutionProvider"], 1, "image", "prob", True)
    with pytest.raises(RuntimeError, match="forked only by a process that has not loaded PyTorch and has built no"):
        Forked([ROOT / "weights" / "ensemble.cpu.0.onnx"] * 2, "image", "prob", 2, 2)


TWO_WORKERS = """
import os, signal, sys, threading
import numpy as np
from runtime.ensemble import Ensemble
from runtime.errors import ModelError

weights = sys.argv[1]
pages = np.stack([np.full((128, 128, 3), v, np.uint8) for v in (60, 128, 200)])
ensemble = Ensemble(weights, fork=True)
assert ensemble.layout == "2 graphs in 2 worker processes", ensemble.layout

def model_error(batch):
    try:
        ensemble.probabilities(batch)
    except ModelError as exc:
        return str(exc)
    raise AssertionError("no ModelError")
"""  # how each worker-failure script starts: the two-member ensemble in two workers, three pages, and the
# message of the ModelError a call must raise

WORKER_FAILS_ONCE = TWO_WORKERS + """
bad = pages.copy()
bad[0] = 255  # the first member's graph fails on this batch; the others answer it
assert "failed on a batch" in (message := model_error(bad)), message
again = ensemble.probabilities(pages)
fresh = Ensemble(weights, fork=True).probabilities(pages)
np.testing.assert_array_equal(again, fresh)
print("done", flush=True)
"""


def test_a_worker_that_fails_once_leaves_no_reply_behind(tmp_path):
    """The first member's worker fails on a batch the second answers: the call raises, and the next call gives
    what a fresh ensemble gives (the second worker's unread reply would otherwise answer it)."""
    weights = make_tiny_ensemble(tmp_path / "w", offsets=(0.0, 0.3), cpu_graphs=True, fails_at=250)
    assert run_fresh(WORKER_FAILS_ONCE, str(weights)) == "done\n"


WORKER_KILLED = TWO_WORKERS + """
first = ensemble.runner.pids[0]
os.kill(first, signal.SIGSTOP)  # the call reaches it, and it cannot answer ...
threading.Timer(0.5, os.kill, (first, signal.SIGKILL)).start()  # ... until it is killed, mid-call
assert "worker process for 1 member graph(s) ended" in (message := model_error(pages)), message
again = ensemble.probabilities(pages)  # the worker is started again
assert first not in ensemble.runner.pids
np.testing.assert_array_equal(again, Ensemble(weights, fork=True).probabilities(pages))
ensemble.close()
print("done", flush=True)
"""


def test_a_worker_killed_mid_call_is_one_model_error_and_the_next_call_answers(tmp_path):
    weights = make_tiny_ensemble(tmp_path / "w", offsets=(0.0, 0.3), cpu_graphs=True)
    assert run_fresh(WORKER_KILLED, str(weights)) == "done\n"


@pytest.mark.parametrize("tta, pages_per_run, runs", [("none", None, [64, 64, 16]), ("none", 7, [7] * 20 + [4]),
                                                        ("d4", None, [128] * 9), ("d4", 50, [400, 400, 352])])
def test_pages_per_run_bounds_each_inference_run(tta, pages_per_run, runs, tmp_path):
    """Default: 64 pages a run (16 with D4's 8 views); ``pages_per_run`` (``amf predict --batch-size``) sets it,
    with the same answers."""
    pages = np.concatenate([real_pages(16)] * 9)  # 144 pages
    weights = make_tiny_ensemble(tmp_path / "w", tta=tta)
    ensemble = Ensemble(weights, pages_per_run=pages_per_run)
    sizes = []
    run = ensemble.runner.run
    ensemble.runner.run = lambda batch: sizes.append(len(batch)) or run(batch)
    np.testing.assert_allclose(ensemble.probabilities(pages), Ensemble(weights).probabilities(pages), atol=1e-6)
    assert sizes == runs


class CountingSession:
    """A session that records how many images each of its runs got."""

    def __init__(self, session) -> None:
        self.session, self.sizes = session, []

    def run(self, outputs, feeds):
        self.sizes.append(len(next(iter(feeds.values()))))
        return self.session.run(outputs, feeds)


def test_cpu_sessions_run_a_few_images_at_a_time_with_the_answers_of_one_run():
    """CPU_IMAGES_PER_RUN bounds each session run (CPU runners and workers); the answers are those of one run over
    the whole batch, to the bit, for a batch that is not a multiple of it too."""
    from runtime.session import CPU_IMAGES_PER_RUN, build_session, run_sessions

    files = [ROOT / "weights" / f"ensemble.cpu.{i}.onnx" for i in (0, 1)]
    sessions = [CountingSession(build_session(f, ["CPUExecutionProvider"], 1, "image", "prob", prefused=True))
                for f in files]
    pages = real_pages(10)
    whole = run_sessions(sessions, pages, "image", "prob")
    assert [s.sizes for s in sessions] == [[10], [10]]
    for s in sessions:
        s.sizes.clear()
    chunked = run_sessions(sessions, pages, "image", "prob", CPU_IMAGES_PER_RUN)
    runs = [min(CPU_IMAGES_PER_RUN, 10 - i) for i in range(0, 10, CPU_IMAGES_PER_RUN)]
    assert len(runs) > 1 and [s.sizes for s in sessions] == [runs, runs]
    assert chunked.shape == (10, 2)
    np.testing.assert_array_equal(chunked, whole)
