"""process.py as Grand Challenge runs it, and every odd input we know of.

Each unusable input must give a one-line error naming the file, the documented exit code, and no output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

import process
from conftest import HERE, make_tiny_ensemble, real_pages, save_tiff, write_inputs
from model.grand_challenge import OUTPUT_FILE, validate_results
from model.stack import read_stack

ROOT = HERE.parent
SAMPLE = ROOT.parent / "shared" / "data" / "gc-sample"


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


# --- the happy paths --------------------------------------------------------------------------------

def test_committed_test_input_gives_16_valid_entries(gc_input, tiny_weights, tmp_path, capsys):
    code, err, result = run_main(gc_input, tmp_path / "out", tiny_weights, capsys)
    assert code == 0, err
    validate_results(result, 16)
    pages = read_stack(next((gc_input / "images").rglob("*.tif")))
    mean = pages.reshape(16, -1).mean(1)
    expected = 1 / (1 + np.exp(-((mean - 128) / 16 + np.array([[0.0], [0.2], [-0.2], [0.4]])))).mean(0)
    np.testing.assert_allclose([r["confidence"] for r in result], expected, atol=0.01)


@pytest.mark.skipif(not (SAMPLE / "stack_5.tiff").is_file(), reason="../shared/data/gc-sample not beside the repo")
def test_real_gc_sample_stack_gives_16_valid_entries(tmp_path, tiny_weights, capsys):
    folder = write_inputs(tmp_path / "in", "stack_5.tiff")
    shutil.copy(SAMPLE / "stack_5.tiff", folder)
    code, err, result = run_main(tmp_path / "in", tmp_path / "out", tiny_weights, capsys)
    assert code == 0, err
    validate_results(result, 16)


def test_shipped_weights_when_present(gc_input, tmp_path, capsys):
    weights = ROOT / "weights"
    if not (weights / "ensemble.json").is_file():
        pytest.skip("no shipped weights in weights/")
    code, err, result = run_main(gc_input, tmp_path / "out", weights, capsys)
    assert code == 0, err
    validate_results(result, 16)
    expected = json.loads((HERE / "output" / "expected_output.json").read_text())
    assert [r["class"] for r in result] == [r["class"] for r in expected]
    np.testing.assert_allclose([r["confidence"] for r in result], [r["confidence"] for r in expected], atol=1e-4)


def test_same_stack_twice_gives_byte_identical_json(gc_input, tiny_weights, tmp_path, capsys):
    for name in ("a", "b"):
        assert run_main(gc_input, tmp_path / name, tiny_weights, capsys)[0] == 0
    assert (tmp_path / "a" / OUTPUT_FILE).read_bytes() == (tmp_path / "b" / OUTPUT_FILE).read_bytes()


def test_d4_tta_averages_the_eight_views(gc_input, tmp_path, capsys):
    weights = make_tiny_ensemble(tmp_path / "w", tta="d4")
    code, err, tta = run_main(gc_input, tmp_path / "tta", weights, capsys)
    assert code == 0, err
    plain = run_main(gc_input, tmp_path / "plain", make_tiny_ensemble(tmp_path / "w2"), capsys)[2]
    # the tiny model is rotation invariant (a mean), so TTA must not change its answers
    np.testing.assert_allclose([r["confidence"] for r in tta], [r["confidence"] for r in plain], rtol=1e-6)


def test_runs_as_grand_challenge_does_read_only_input_no_network(gc_input, tiny_weights, tmp_path):
    """/input read-only and /output bound in a private mount namespace with no network (needs root)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private mount + network namespace")
    out = tmp_path / "out"
    out.mkdir()
    for mount_point in ("/input", "/output"):
        os.makedirs(mount_point, exist_ok=True)
    script = (f"mount --bind {gc_input} /input && mount -o remount,bind,ro /input && "
              f"mount --bind {out} /output && "
              f"if touch /input/probe 2>/dev/null; then echo input-writable; exit 9; fi; "
              f"exec {sys.executable} {ROOT / 'process.py'} --weights {tiny_weights}")
    proc = subprocess.run(["unshare", "-m", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "AMF_WEIGHTS": ""})
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        pytest.skip(f"namespaces not permitted here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CPUExecutionProvider" in proc.stdout
    validate_results(json.loads((out / OUTPUT_FILE).read_text()), 16)
    # and a read-only /output: exit 3, nothing written
    script = script.replace(f"mount --bind {out} /output", f"mount --bind {out} /output && mount -o remount,bind,ro /output")
    (out / OUTPUT_FILE).unlink()
    proc = subprocess.run(["unshare", "-m", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "output error" in proc.stderr and not any(out.iterdir())


def test_subprocess_exit_code_and_one_line_error(tmp_path, tiny_weights):
    write_inputs(tmp_path / "in")  # socket folder without an image
    proc = subprocess.run([sys.executable, str(ROOT / "process.py"), "--input", str(tmp_path / "in"), "--output",
                           str(tmp_path / "out"), "--weights", str(tiny_weights)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "found 0" in proc.stderr
    assert not (tmp_path / "out" / OUTPUT_FILE).exists()


# --- odd inputs that are still processed ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rgba", "gray", "palette", "uint16", "one-page", "40-pages", "small", "large", "tiny",
                                  "mha", "upper-suffix"])
def test_odd_but_usable_stacks(kind, tmp_path, tiny_weights, capsys):
    pages = real_pages(4)
    name = {"mha": "stack.mha", "upper-suffix": "STACK.TIFF"}.get(kind, "stack.tif")
    folder = write_inputs(tmp_path / "in", name)
    expected_n = 4
    if kind == "rgba":
        save_tiff(folder / name, [Image.fromarray(p).convert("RGBA") for p in pages])
    elif kind == "gray":
        save_tiff(folder / name, [Image.fromarray(p).convert("L") for p in pages])
    elif kind == "palette":
        save_tiff(folder / name, [Image.fromarray(p).convert("P") for p in pages])
    elif kind == "uint16":
        save_tiff(folder / name, [Image.fromarray(p[..., 0].astype(np.uint16) * 257) for p in pages])
    elif kind == "one-page":
        save_tiff(folder / name, pages[:1])
        expected_n = 1
    elif kind == "40-pages":
        save_tiff(folder / name, real_pages(40))
        expected_n = 40
    elif kind == "small":
        save_tiff(folder / name, [p[:100, :90] for p in pages])
    elif kind == "large":
        save_tiff(folder / name, [np.pad(p, ((30, 30), (10, 50), (0, 0))) for p in pages])
    elif kind == "tiny":
        save_tiff(folder / name, [p[:1, :1] for p in pages])
    elif kind == "mha":
        sitk.WriteImage(sitk.GetImageFromArray(np.stack(pages), isVector=True), str(folder / name))
    else:
        save_tiff(folder / name, pages)
    code, err, result = run_main(tmp_path / "in", tmp_path / "out", tiny_weights, capsys)
    assert code == 0, err
    validate_results(result, expected_n)


def test_reader_conversions_are_exact(tmp_path):
    pages = real_pages(3)
    cases = {
        "rgba": ([Image.fromarray(p).convert("RGBA") for p in pages], np.stack(pages)),
        "gray": ([Image.fromarray(p[..., 1]) for p in pages], np.repeat(np.stack(pages)[..., 1:2], 3, axis=3)),
        "uint16": ([Image.fromarray(p[..., 2].astype(np.uint16) * 257) for p in pages], np.repeat(np.stack(pages)[..., 2:3], 3, axis=3)),
    }
    for name, (images, expected) in cases.items():
        got = read_stack(save_tiff(tmp_path / f"{name}.tif", images)).astype(int)
        # ITK decodes RGBA TIFFs through libtiff's RGBA path, which may round 8-bit values down by one
        np.testing.assert_allclose(got, expected, atol=1 if name == "rgba" else 0, rtol=0, err_msg=name)
    palette = [Image.fromarray(p).convert("P") for p in pages]
    # TIFF colour maps are 16-bit; Pillow writes v * 256 and reads v >> 8, libtiff (and we) read v / 257
    np.testing.assert_allclose(read_stack(save_tiff(tmp_path / "p.tif", palette)).astype(int),
                               np.stack([np.asarray(p.convert("RGB")) for p in palette]), atol=1, rtol=0)
    big = np.pad(pages[0], ((11, 11), (4, 5), (0, 0)), constant_values=7)  # centre crop takes rows 11.., cols 4..
    np.testing.assert_array_equal(read_stack(save_tiff(tmp_path / "big.tif", [big]))[0], pages[0])
    small = read_stack(save_tiff(tmp_path / "small.tif", [pages[0][:120, :127]]))[0]
    np.testing.assert_array_equal(small[4:124, 0:127], pages[0][:120, :127])
    assert (small[:4] == small[4:5]).all() and (small[:, 127] == small[:, 126]).all()


# --- unusable inputs: exit 2 / 3 / 4, a one-line error naming the file, and no output --------------------

def _garbage(folder: Path) -> None:
    (folder / "stack.tif").write_bytes(os.urandom(3000))


def _truncated(folder: Path) -> None:
    data = save_tiff(folder / "full.tif", real_pages(4)).read_bytes()
    (folder / "full.tif").unlink()
    (folder / "stack.tif").write_bytes(data[: len(data) // 3])


def _empty(folder: Path) -> None:
    (folder / "stack.tif").write_bytes(b"")


def _zero_pages(folder: Path) -> None:
    (folder / "stack.mha").write_text("ObjectType = Image\nNDims = 3\nDimSize = 128 128 0\nElementNumberOfChannels = 3\n"
                                      "ElementType = MET_UCHAR\nElementDataFile = LOCAL\n")


def _two_images(folder: Path) -> None:
    save_tiff(folder / "a.tif", real_pages(1))
    save_tiff(folder / "b.tiff", real_pages(1))


def _five_channels(folder: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 128, 128, 5), np.uint8), isVector=True), str(folder / "stack.mha"))


def _garbage_mha(folder: Path) -> None:
    (folder / "stack.mha").write_bytes(b"ObjectType = Image\nNDims = 3\n" + os.urandom(500))


def _truncated_mha(folder: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.stack(real_pages(4)), isVector=True), str(folder / "full.mha"))
    data = (folder / "full.mha").read_bytes()
    (folder / "full.mha").unlink()
    (folder / "stack.mha").write_bytes(data[: len(data) // 2])


def _mha_pointing_elsewhere(folder: Path) -> None:
    (folder / "stack.mha").write_text("ObjectType = Image\nNDims = 2\nDimSize = 128 128\nElementType = MET_UCHAR\n"
                                      "ElementDataFile = /etc/hostname\n")


@pytest.mark.parametrize("make, words", [
    (_garbage, ["stack.tif", "not a readable TIFF"]),
    (_truncated, ["stack.tif"]),
    (_empty, ["stack.tif", "empty file"]),
    (_zero_pages, ["stack.mha"]),
    (_two_images, ["expected exactly one", "found 2"]),
    (lambda folder: None, ["expected exactly one", "found 0"]),
    (_five_channels, ["stack.mha", "5 channels"]),
    (_garbage_mha, ["stack.mha", "not a MetaImage"]),
    (_truncated_mha, ["stack.mha", "cannot read"]),
    (_mha_pointing_elsewhere, ["stack.mha", "must be LOCAL"]),
])
def test_unusable_stack_is_refused(make, words, tmp_path, tiny_weights, capsys):
    make(write_inputs(tmp_path / "in"))
    assert_refused(*run_main(tmp_path / "in", tmp_path / "out", tiny_weights, capsys), 2, "input error", *words)


@pytest.mark.parametrize("inputs_json, words", [
    (None, ["inputs.json", "missing"]),
    ("{not json", ["inputs.json", "not valid JSON"]),
    ('{"a": 1}', ["inputs.json", "expected a list"]),
    ('[{"interface": {"slug": "some-other-socket", "relative_path": "images/x"}}]', ["inputs.json", "found 0", "some-other-socket"]),
    ('[{"interface": {"slug": "stacked-histopathology-roi-cropouts", "relative_path": "../escape"}}]', ["leads outside"]),
    ('[{"interface": {"slug": "stacked-histopathology-roi-cropouts", "relative_path": "images/missing"}}]', ["socket folder missing"]),
])
def test_bad_inputs_json_is_refused(inputs_json, words, tmp_path, tiny_weights, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "escape").mkdir()
    save_tiff(tmp_path / "escape" / "stack.tif", real_pages(1))
    if inputs_json is not None:
        (tmp_path / "in" / "inputs.json").write_text(inputs_json)
    assert_refused(*run_main(tmp_path / "in", tmp_path / "out", tiny_weights, capsys), 2, "input error", *words)


def test_symlink_escaping_the_input_is_refused(tmp_path, tiny_weights, capsys):
    folder = write_inputs(tmp_path / "in")
    outside = save_tiff(tmp_path / "secret.tif", real_pages(1))
    (folder / "stack.tif").symlink_to(outside)
    assert_refused(*run_main(tmp_path / "in", tmp_path / "out", tiny_weights, capsys), 2, "links outside")


def test_non_finite_model_output_is_a_model_error(gc_input, tmp_path, capsys):
    weights = make_tiny_ensemble(tmp_path / "w", offsets=(0.0, float("nan"), 0.0, 0.0))
    assert_refused(*run_main(gc_input, tmp_path / "out", weights, capsys), 4, "model error", "non-finite")


def test_missing_weights_is_a_model_error(gc_input, tmp_path, capsys):
    assert_refused(*run_main(gc_input, tmp_path / "out", tmp_path / "nowhere", capsys), 4, "model error", "ensemble.json")


def test_missing_output_folder_is_created_and_an_unwritable_one_refused(gc_input, tiny_weights, tmp_path, capsys):
    code, err, result = run_main(gc_input, tmp_path / "new" / "deep", tiny_weights, capsys)
    assert code == 0 and len(result) == 16
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err, result = run_main(gc_input, blocker / "out", tiny_weights, capsys)
    assert_refused(code, err, None, 3, "output error")


def test_evaluator_rules_reject_malformed_results():
    validate_results([{"class": "normal", "confidence": 0.2}], 1)
    for bad in ([{"class": "normal", "confidence": 1}], [{"class": "Normal", "confidence": 0.1}],
                [{"class": "normal"}], [["normal", 0.1]], {"class": "normal"}, [{"class": "atypical", "confidence": 1.5}]):
        with pytest.raises(ValueError):
            validate_results(bad)
    with pytest.raises(ValueError):
        validate_results([{"class": "normal", "confidence": 0.2}], 2)
