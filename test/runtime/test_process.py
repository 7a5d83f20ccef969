"""process.py as Grand Challenge runs it, and every odd input we know of.

Each unusable input must give a one-line error naming the file, the documented exit code, and no output.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    GC_SAMPLE,
    GC_SAMPLE_2PAGES,
    ROOT,
    make_tiny_ensemble,
    pil_pages,
    real_pages,
    save_stack,
    tiny_model_probs,
    write_inputs,
    write_tiff,
)
from golden import confidence_tolerance

import process
from runtime import contract, grand_challenge
from runtime.errors import EXIT_INPUT, OutputError
from runtime.grand_challenge import OUTPUT_FILE, validate_results
from runtime.stack import read_stack
from runtime.version import __version__
from runtime.vote import vote


def run_main(input_dir: Path, output_dir: Path, weights: Path, capsys) -> tuple[int, str, list | None]:
    code = process.main(["--input", str(input_dir), "--output", str(output_dir), "--weights", str(weights)])
    err = capsys.readouterr().err
    out_file = output_dir / OUTPUT_FILE
    return code, err, json.loads(out_file.read_text()) if out_file.exists() else None


def assert_refused(code: int, err: str, result, expected_code: int, *words: str) -> None:
    assert code == expected_code, err
    assert result is None
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]


def subprocess_env(**extra: str) -> dict:
    return {**os.environ, "AMF_WEIGHTS": "", "AMF_DEVICE": "cpu", **extra}


# --- the happy paths --------------------------------------------------------------------------------------------

def test_committed_test_input_gives_16_valid_entries(gc_input, tiny_weights, tmp_path, capsys):
    code, err, result = run_main(gc_input, tmp_path / "out", tiny_weights, capsys)
    assert code == 0, err
    validate_results(result, 16)
    pages = read_stack(next((gc_input / "images").rglob("*.tif")))
    np.testing.assert_allclose([r["confidence"] for r in result], tiny_model_probs(pages).mean(1), atol=1e-5)


def assert_answers_pillows_pages(result: list, stack: Path) -> None:
    """The tiny model's answers on the pages as Pillow decodes them (an independent reader)."""
    atypical, confidence = vote(tiny_model_probs(pil_pages(stack)), [0.5] * 4)
    assert [r["class"] for r in result] == ["atypical" if a else "normal" for a in atypical]
    np.testing.assert_allclose([r["confidence"] for r in result], confidence, atol=1e-6)


def test_gc_encoded_fixture_gives_2_valid_entries(tmp_path, tiny_weights, capsys):
    shutil.copy(GC_SAMPLE_2PAGES, write_inputs(tmp_path / "in", GC_SAMPLE_2PAGES.name))
    code, err, result = run_main(tmp_path / "in", tmp_path / "out", tiny_weights, capsys)
    assert code == 0, err
    validate_results(result, 2)
    assert_answers_pillows_pages(result, GC_SAMPLE_2PAGES)


@pytest.mark.skipif(not GC_SAMPLE.is_file(), reason="../shared/data/gc-sample not beside the repo")
def test_real_gc_sample_stack_gives_16_valid_entries(tmp_path, tiny_weights, capsys):
    shutil.copy(GC_SAMPLE, write_inputs(tmp_path / "in", "stack_5.tiff"))
    code, err, result = run_main(tmp_path / "in", tmp_path / "out", tiny_weights, capsys)
    assert code == 0, err
    validate_results(result, 16)
    assert_answers_pillows_pages(result, GC_SAMPLE)


CONFIDENCE_TOLERANCE = confidence_tolerance()  # 1e-4 on a CPU with VNNI, as the golden file was made


def test_shipped_weights_reproduce_the_expected_output_on_the_cpu(gc_input, tmp_path, capsys, monkeypatch):
    """expected_output.json was made on the CPU provider: the comparison runs there (a GPU run may differ in the
    last digits of int8 rounding; a CPU without VNNI by CONFIDENCE_TOLERANCE)."""
    weights = ROOT / "weights"
    expected_file = ROOT / "test" / "output" / "expected_output.json"
    monkeypatch.setenv("AMF_DEVICE", "cpu")
    code = process.main(["--input", str(gc_input), "--output", str(tmp_path / "out"), "--weights", str(weights)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert ("ensemble.onnx (sha256 26eeb21d4480, commit 2dc933b1044b): 4 members (4 folds) on CPUExecutionProvider"
            in out)
    result = json.loads((tmp_path / "out" / OUTPUT_FILE).read_text())
    validate_results(result, 16)
    expected = json.loads(expected_file.read_text())
    assert [r["class"] for r in result] == [r["class"] for r in expected]
    np.testing.assert_allclose([r["confidence"] for r in result], [r["confidence"] for r in expected],
                               atol=CONFIDENCE_TOLERANCE)


@pytest.mark.parametrize("threads, layout", [("2", "4 graphs in 2 worker processes"),
                                             ("4", "4 graphs in 4 worker processes"),
                                             ("1", "4 graphs in this process")])
def test_fresh_process_runs_the_fold_graphs_in_worker_processes(threads, layout, gc_input, tmp_path):
    """As the container runs: a new process, onnxruntime not loaded yet, so the fold graphs load and run in one
    forked worker per CPU (AMF_THREADS), up to one per fold; the answers are those of the golden file."""
    proc = subprocess.run([sys.executable, str(ROOT / "process.py"), "--input", str(gc_input), "--output",
                           str(tmp_path / "out"), "--weights", str(ROOT / "weights")], capture_output=True, text=True,
                          timeout=120, env=subprocess_env(AMF_THREADS=threads))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith(f"amf-mtl {__version__}: ")  # the release, first
    assert f"4 members (4 folds) on CPUExecutionProvider ({layout})" in proc.stdout
    result = json.loads((tmp_path / "out" / OUTPUT_FILE).read_text())
    expected = json.loads((ROOT / "test" / "output" / "expected_output.json").read_text())
    assert [r["class"] for r in result] == [r["class"] for r in expected]
    np.testing.assert_allclose([r["confidence"] for r in result], [r["confidence"] for r in expected],
                               atol=CONFIDENCE_TOLERANCE)


def test_a_member_graph_a_worker_cannot_load_is_a_model_error(gc_input, tiny_weights, tmp_path):
    spec = json.loads((tiny_weights / "ensemble.json").read_text())
    spec["cpu_model_files"] = [f"ensemble.cpu.{i}.onnx" for i in range(4)]
    (tiny_weights / "ensemble.json").write_text(json.dumps(spec))
    for name in spec["cpu_model_files"]:
        (tiny_weights / name).write_bytes(b"not an onnx graph")
    proc = subprocess.run([sys.executable, str(ROOT / "process.py"), "--input", str(gc_input), "--output",
                           str(tmp_path / "out"), "--weights", str(tiny_weights)], capture_output=True, text=True,
                          timeout=120, env=subprocess_env(AMF_THREADS="2"))
    assert proc.returncode == 4 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"model error: {tiny_weights / 'ensemble.cpu.0.onnx'}: cannot load the ONNX graph")
    assert not (tmp_path / "out" / OUTPUT_FILE).exists()


def test_same_stack_twice_gives_byte_identical_json(gc_input, tiny_weights, tmp_path, capsys):
    for name in ("a", "b"):
        assert run_main(gc_input, tmp_path / name, tiny_weights, capsys)[0] == 0
    assert (tmp_path / "a" / OUTPUT_FILE).read_bytes() == (tmp_path / "b" / OUTPUT_FILE).read_bytes()


def test_runs_as_grand_challenge_does_read_only_input_no_network(gc_input, tiny_weights, tmp_path):
    """/input read-only and /output bound in a private mount namespace with no network (needs root)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private mount + network namespace")
    out = tmp_path / "out"
    out.mkdir()
    for mount_point in ("/input", "/output"):
        os.makedirs(mount_point, exist_ok=True)

    def in_namespace(output_options: str = "") -> subprocess.CompletedProcess:
        script = (f"mount --bind {gc_input} /input && mount -o remount,bind,ro /input && "
                  f"mount --bind {out} /output {output_options} && "
                  f"if touch /input/probe 2>/dev/null; then echo input-writable; exit 9; fi; "
                  f"if python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 53), 2)' 2>/dev/null; "
                  f"then echo network; exit 9; fi; "
                  f"exec {sys.executable} {ROOT / 'process.py'} --weights {tiny_weights}")
        return subprocess.run(["unshare", "-m", "-n", "sh", "-c", script], capture_output=True, text=True,
                              timeout=120, cwd=ROOT, env=subprocess_env())

    proc = in_namespace()
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        pytest.skip(f"namespaces not permitted here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CPUExecutionProvider" in proc.stdout and "16 pages" in proc.stdout
    validate_results(json.loads((out / OUTPUT_FILE).read_text()), 16)
    (out / OUTPUT_FILE).unlink()
    proc = in_namespace("&& mount -o remount,bind,ro /output")  # read-only /output: exit 3, nothing written
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stderr.startswith("output error: /output") and proc.stderr.count("\n") == 1
    assert not any(out.iterdir())


def can_keep_dac_read_search(status: Path = Path("/proc/self/status")) -> bool:
    """Whether CAP_DAC_READ_SEARCH (capability 2) is in this process's bounding set, so that setpriv can pass it on."""
    bounding = next((line.split()[1] for line in status.read_text().splitlines() if line.startswith("CapBnd:")), "0")
    return bool(int(bounding, 16) >> 2 & 1)


def as_unprivileged_user(command: list[str]) -> list[str]:
    """``command`` as a non-root user: as root, uid/gid 65534 through setpriv, keeping only the right to read
    and search any file (the interpreter may live in root's home), not to write one."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop root")
    if not can_keep_dac_read_search():
        pytest.skip("root without CAP_DAC_READ_SEARCH in its bounding set (as in a container's default set)")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search", *command]


@pytest.mark.parametrize("home_writable", [False, True])
def test_silent_run_writes_nothing_outside_the_output(home_writable, gc_input, tmp_path):
    """Telemetry off: exit 0, empty stderr, HOME and the working folder untouched, whether HOME is writable."""
    home, cwd, out = tmp_path / "home", tmp_path / "cwd", tmp_path / "out"
    for folder in (home, cwd, out):
        folder.mkdir()
    if os.geteuid() == 0:
        os.chown(out, 65534, 65534)
        if home_writable:
            os.chown(home, 65534, 65534)
    home.chmod(0o755 if home_writable else 0o555)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "AMF_DEVICE": "cpu", "AMF_WEIGHTS": ""}
    command = [sys.executable, str(ROOT / "process.py"), "--input", str(gc_input), "--output", str(out)]
    proc = subprocess.run(as_unprivileged_user(command), capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=env)
    home.chmod(0o755)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    assert list(home.iterdir()) == [] and list(cwd.iterdir()) == []
    assert [p.name for p in out.iterdir()] == [OUTPUT_FILE]


def test_cuda_forced_without_a_gpu_runs_on_the_cpu_and_says_why_in_one_line(gc_input, tiny_weights, tmp_path):
    if any(Path("/dev").glob("nvidia[0-9]*")):
        pytest.skip("a GPU is present: CUDA would start")
    command = [sys.executable, str(ROOT / "process.py"), "--input", str(gc_input), "--output", str(tmp_path),
               "--weights", str(tiny_weights)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=subprocess_env(AMF_DEVICE="cuda"))
    assert proc.returncode == 0 and proc.stderr == "", proc.stdout + proc.stderr
    notes = [line for line in proc.stdout.splitlines() if "CUDA" in line]
    assert len(notes) == 1 and notes[0].startswith("CUDA wanted but not used, running on the CPU: "), proc.stdout
    assert "CPU build" in notes[0] or "no NVIDIA driver" in notes[0], notes[0]
    assert "CPUExecutionProvider" in proc.stdout
    validate_results(json.loads((tmp_path / OUTPUT_FILE).read_text()), 16)


def test_subprocess_with_paths_exit_code_and_one_line_error(tmp_path, tiny_weights, gc_input):
    command = [sys.executable, str(ROOT / "process.py"), "--output", str(tmp_path / "out"),
               "--weights", str(tiny_weights)]
    proc = subprocess.run(command + ["--input", str(gc_input)], capture_output=True, text=True, timeout=120,
                          env=subprocess_env())
    assert proc.returncode == 0, proc.stderr
    validate_results(json.loads((tmp_path / "out" / OUTPUT_FILE).read_text()), 16)
    write_inputs(tmp_path / "in")  # socket folder without an image
    (tmp_path / "out" / OUTPUT_FILE).unlink()
    proc = subprocess.run(command + ["--input", str(tmp_path / "in")], capture_output=True, text=True, timeout=120,
                          env=subprocess_env())
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "found 0" in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / OUTPUT_FILE).exists()


def test_weights_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("AMF_WEIGHTS", str(tmp_path / "env"))
    assert contract.default_weights() == tmp_path / "env"
    monkeypatch.delenv("AMF_WEIGHTS")
    monkeypatch.setattr(contract, "GC_MODEL_DIR", tmp_path / "absent")
    assert contract.default_weights() == ROOT / "weights"
    monkeypatch.setattr(contract, "GC_MODEL_DIR", make_tiny_ensemble(tmp_path / "opt-ml-model"))
    assert contract.default_weights() == tmp_path / "opt-ml-model"


# --- odd inputs that are still processed ----------------------------------------------------------------

def _odd_stack(kind: str, folder: Path) -> int:
    """Writes the stack; returns its page count."""
    pages = real_pages(4)
    alpha = np.full(pages.shape[:3] + (1,), 200, np.uint8)
    if kind == "40-pages":
        save_stack(folder / "stack.tif", real_pages(40))
        return 40
    if kind == "one-page":
        save_stack(folder / "stack.tif", pages[:1])
        return 1
    if kind == "palette":
        write_tiff(folder / "stack.tif", [p[..., 0] for p in pages], colormap=np.tile(np.arange(256) * 257, (3, 1)))
        return 4
    writers = {
        "rgba": lambda: save_stack(folder / "stack.tif", np.concatenate([pages, alpha], axis=3)),
        "gray": lambda: save_stack(folder / "stack.tif", pages[..., 0]),
        "uint16": lambda: save_stack(folder / "stack.tif", pages.astype(np.uint16) * 257),
        "small": lambda: save_stack(folder / "stack.tif", pages[:, :100, :90]),
        "large": lambda: save_stack(folder / "stack.tif", np.pad(pages, ((0, 0), (30, 30), (10, 50), (0, 0)))),
        "tiff-suffix": lambda: save_stack(folder / "stack.tiff", pages),
        "mha": lambda: save_stack(folder / "stack.mha", pages),
        "upper-suffix": lambda: save_stack(folder / "stack.tif", pages).rename(folder / "STACK.TIFF"),
    }
    writers[kind]()
    return 4


@pytest.mark.parametrize("kind", ["rgba", "gray", "palette", "uint16", "one-page", "40-pages", "small", "large",
                                  "tiff-suffix", "mha", "upper-suffix"])
def test_odd_but_usable_stacks(kind, tmp_path, tiny_weights, capsys):
    n = _odd_stack(kind, write_inputs(tmp_path / "in"))
    code, err, result = run_main(tmp_path / "in", tmp_path / "out", tiny_weights, capsys)
    assert code == 0, err
    validate_results(result, n)


# --- unusable inputs: exit 2 / 3 / 4, a one-line error naming the file, and no output --------------------

def _truncated(folder: Path) -> None:
    (folder / "stack.tif").write_bytes(GC_SAMPLE_2PAGES.read_bytes()[:60_000])


def _truncated_mha(folder: Path) -> None:
    data = save_stack(folder / "full.mha", real_pages(4)).read_bytes()
    (folder / "full.mha").unlink()
    (folder / "stack.mha").write_bytes(data[: len(data) // 2])


def _zero_pages(folder: Path) -> None:
    (folder / "stack.mha").write_text("ObjectType = Image\nNDims = 3\nDimSize = 128 128 0\n"
                                      "ElementNumberOfChannels = 3\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n")


def _two_images(folder: Path) -> None:
    save_stack(folder / "a.tif", real_pages(1))
    save_stack(folder / "b.mha", real_pages(1))


@pytest.mark.parametrize("make, words", [
    (lambda f: (f / "stack.tif").write_bytes(os.urandom(3000)), ["stack.tif", "not a readable TIFF"]),
    (_truncated, ["stack.tif", "truncated"]),
    (lambda f: (f / "stack.tif").write_bytes(b""), ["stack.tif", "empty file"]),
    (lambda f: (f / "stack.mha").write_bytes(b"ObjectType = Image\n" + os.urandom(500)),
     ["stack.mha", "not a MetaImage"]),
    (_truncated_mha, ["stack.mha", "cannot read the pixel data"]),
    (_zero_pages, ["stack.mha", "no pages"]),
    (lambda f: save_stack(f / "stack.mha", np.zeros((2, 8, 8, 5), np.uint8)), ["stack.mha", "5 channels"]),
    (lambda f: (f / "stack.mha").write_text("ObjectType = Image\nNDims = 2\nDimSize = 128 128\n"
                                            "ElementType = MET_UCHAR\nElementDataFile = /etc/hostname\n"),
     ["stack.mha", "must be LOCAL"]),
    (_two_images, ["expected exactly one", "found 2"]),
    (lambda f: None, ["expected exactly one", "found 0"]),
    (lambda f: (f / "notes.txt").write_text("hi"), ["found 0"]),
])
def test_unusable_stack_is_refused(make, words, tmp_path, tiny_weights, capsys):
    make(write_inputs(tmp_path / "in"))
    assert_refused(*run_main(tmp_path / "in", tmp_path / "out", tiny_weights, capsys), 2, "input error", *words)


@pytest.mark.parametrize("inputs_json, words", [
    (None, ["inputs.json", "missing"]),
    ("{not json", ["inputs.json", "not valid JSON"]),
    ('{"a": 1}', ["inputs.json", "expected a list"]),
    ("[]", ["inputs.json", "found 0"]),
    ('[{"interface": {"slug": "some-other-socket", "relative_path": "images/x"}}]',
     ["inputs.json", "found 0", "some-other-socket"]),
    ('[{"interface": {"slug": "stacked-histopathology-roi-cropouts", "relative_path": "../escape"}}]',
     ["inputs.json", "leads outside"]),
    ('[{"interface": {"slug": "stacked-histopathology-roi-cropouts", "relative_path": "/etc"}}]',
     ["inputs.json", "leads outside"]),
    ('[{"interface": {"slug": "stacked-histopathology-roi-cropouts", "relative_path": "images/missing"}}]',
     ["images/missing", "socket folder missing"]),
])
def test_bad_inputs_json_is_refused(inputs_json, words, tmp_path, tiny_weights, capsys):
    (tmp_path / "in").mkdir()
    save_stack((tmp_path / "escape").mkdir() or tmp_path / "escape" / "stack.tif", real_pages(1))
    if inputs_json is not None:
        (tmp_path / "in" / "inputs.json").write_text(inputs_json)
    assert_refused(*run_main(tmp_path / "in", tmp_path / "out", tiny_weights, capsys), 2, "input error", *words)


def test_symlinks_escaping_the_input_are_refused(tmp_path, tiny_weights, capsys):
    outside = save_stack(tmp_path / "secret.tif", real_pages(1))
    folder = write_inputs(tmp_path / "in")
    (folder / "stack.tif").symlink_to(outside)
    assert_refused(*run_main(tmp_path / "in", tmp_path / "out", tiny_weights, capsys), 2, "stack.tif", "links outside")
    shutil.rmtree(tmp_path / "in")
    (tmp_path / "elsewhere").mkdir()
    write_inputs(tmp_path / "in", relative_path="images")
    (tmp_path / "in" / "images").rmdir()
    (tmp_path / "in" / "images").symlink_to(tmp_path / "elsewhere")
    assert_refused(*run_main(tmp_path / "in", tmp_path / "out", tiny_weights, capsys), 2, "leads outside")


def test_non_finite_model_output_is_a_model_error(gc_input, tmp_path, capsys):
    weights = make_tiny_ensemble(tmp_path / "w", offsets=(0.0, float("nan"), 0.0, 0.0))
    assert_refused(*run_main(gc_input, tmp_path / "out", weights, capsys), 4, "model error", "ensemble.onnx",
                   "non-finite")


def test_missing_weights_is_a_model_error(gc_input, tmp_path, capsys):
    assert_refused(*run_main(gc_input, tmp_path / "out", tmp_path / "nowhere", capsys), 4, "model error",
                   "ensemble.json")


def test_input_error_is_reported_before_a_model_error(gc_input, tmp_path, capsys):
    """The stack is read in a child process while the model loads: when both fail, the input is named, as when
    the read came first."""
    stack = next((gc_input / "images").rglob("stack.tif"))
    stack.write_bytes(b"not a tiff")
    assert_refused(*run_main(gc_input, tmp_path / "out", tmp_path / "nowhere", capsys), 2, "input error", str(stack))


@pytest.mark.parametrize("page_count_first", [False, True])
def test_stack_read_beside_the_model_load_unless_the_device_needs_the_page_count(page_count_first, gc_input,
                                                                                 tiny_weights, tmp_path, capsys,
                                                                                 monkeypatch):
    monkeypatch.setattr(process, "choice_needs_page_count", lambda: page_count_first)
    code = process.main(["--input", str(gc_input), "--output", str(tmp_path / "out"), "--weights", str(tiny_weights)])
    out = capsys.readouterr().out
    assert code == 0 and ("in a child process" in out) is not page_count_first
    result = json.loads((tmp_path / "out" / OUTPUT_FILE).read_text())
    probs = tiny_model_probs(read_stack(next((gc_input / "images").rglob("*.tif"))))
    assert [r["class"] == "atypical" for r in result] == vote(probs, [0.5] * 4)[0].tolist()
    np.testing.assert_allclose([r["confidence"] for r in result], probs.mean(1), atol=1e-5)


def test_missing_output_folder_is_created_and_an_unwritable_one_refused(gc_input, tiny_weights, tmp_path, capsys):
    code, err, result = run_main(gc_input, tmp_path / "new" / "deep", tiny_weights, capsys)
    assert code == 0 and len(result) == 16, err
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err, _ = run_main(gc_input, blocker / "out", tiny_weights, capsys)
    assert_refused(code, err, None, 3, "output error", str(blocker))


NO_SPACE = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullDisk:
    """os.fdopen's file, on a disk that fills after 10 characters."""

    def __init__(self, fd: int, mode: str) -> None:
        self.file = FDOPEN(fd, mode)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def write(self, text: str) -> None:
        self.file.write(text[:10])
        self.file.flush()
        raise NO_SPACE


FDOPEN = os.fdopen


def fail(*args, **kwargs):
    raise NO_SPACE


@pytest.mark.parametrize("step", ["mkstemp", "fdopen", "fsync", "chmod", "replace"])
def test_a_failed_output_write_leaves_the_folder_as_it_was(step, tmp_path, monkeypatch):
    """Whichever step of the atomic write fails: an OutputError naming the file (the folder, when no temporary
    file can be made there), no temporary or partial file left, and an earlier result untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / OUTPUT_FILE).write_text("earlier\n")
    with monkeypatch.context() as patch:
        if step == "mkstemp":
            patch.setattr(grand_challenge.tempfile, "mkstemp", fail)
        else:
            patch.setattr(grand_challenge.os, step, FullDisk if step == "fdopen" else fail)
        with pytest.raises(OutputError) as info:
            grand_challenge.write_results(out, [{"class": "normal", "confidence": 0.25}], 1)
    named = out if step == "mkstemp" else out / OUTPUT_FILE
    assert str(info.value) == f"{named}: cannot write the output (No space left on device)"
    assert [p.name for p in out.iterdir()] == [OUTPUT_FILE]
    assert (out / OUTPUT_FILE).read_text() == "earlier\n"


def test_a_failed_rename_is_exit_3_with_no_output(gc_input, tiny_weights, tmp_path, capsys, monkeypatch):
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(grand_challenge.os, "replace", fail)
    code, err, result = run_main(gc_input, tmp_path / "out", tiny_weights, capsys)
    monkeypatch.undo()
    assert_refused(code, err, result, 3, "output error", str(tmp_path / "out" / OUTPUT_FILE), "No space left")
    assert not any((tmp_path / "out").iterdir())


def test_an_internal_error_is_exit_1_with_a_traceback(gc_input, tiny_weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(grand_challenge, "validate_results", lambda *a: 1 / 0)
    code, err, result = run_main(gc_input, tmp_path / "out", tiny_weights, capsys)
    assert code == 1 and "ZeroDivisionError" in err and "internal error" in err and result is None


def test_evaluator_rules_reject_malformed_results():
    validate_results([{"class": "normal", "confidence": 0.2}], 1)
    for bad in ([{"class": "normal", "confidence": 1}], [{"class": "Normal", "confidence": 0.1}],
                [{"class": "normal"}], [["normal", 0.1]], {"class": "normal"},
                [{"class": "atypical", "confidence": 1.5}],
                [{"class": "normal", "confidence": "0.2"}], [{"class": "normal", "confidence": float("nan")}],
                [{"class": "normal", "confidence": True}]):
        with pytest.raises(ValueError):
            validate_results(bad)
    with pytest.raises(ValueError):
        validate_results([{"class": "normal", "confidence": 0.2}], 2)


def test_a_corrupt_compressed_stack_is_one_line_on_stderr_with_the_decoders_message(gc_input, tiny_weights, tmp_path,
                                                                                    capfd):
    """libtiff's default handler prints decoder errors on file descriptor 2: they join the one error line."""
    stack = next((gc_input / "images").rglob("stack.tif"))
    data = bytearray(stack.read_bytes())
    for i in range(2000, 6000, 97):  # inside the first page's deflate stream
        data[i] ^= 0x5A
    stack.write_bytes(bytes(data))
    code = process.main(["--input", str(gc_input), "--output", str(tmp_path / "out"), "--weights", str(tiny_weights)])
    err = capfd.readouterr().err
    assert code == EXIT_INPUT and not (tmp_path / "out" / OUTPUT_FILE).exists()
    assert len(err.splitlines()) == 1 and err.startswith(f"input error: {stack}: cannot read the pixel data")
    assert "ZIPDecode" in err
