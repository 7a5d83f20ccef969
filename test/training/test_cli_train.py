"""``amf``'s training commands: recipe and manifest errors are one line and exit 2."""

from __future__ import annotations

import pytest
from conftest import AMIBR_FIXTURE

from cli import main as cli
from training import calibrate, data, device, evaluate, export, masks, train


@pytest.mark.parametrize(("setting", "message"), [
    ("augment.hu=0.05", "--set augment.hu: no such field; choose from ['d4', "),
    ("loss=foo", "unknown loss 'foo' (one of bce, focal)"),
    ("nosuch.field=1", "--set nosuch.field: unknown section 'nosuch' (network, augment)"),
    ("epochs", "--set 'epochs': expected key=value"),
])
def test_a_bad_recipe_setting_is_one_line_and_exit_2(setting, message, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--manifest", str(AMIBR_FIXTURE / "manifest.csv"), "--out", str(out), "--set", setting])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"amf train: error: {message}") and err.count("\n") == 1, err
    assert not out.exists()


def test_mixup_with_decoders_is_refused_before_any_image_is_read(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data, "_load_patches", lambda *args: pytest.fail("images read"))
    assert cli.main(["train", "--manifest", str(AMIBR_FIXTURE / "manifest.csv"), "--out", str(tmp_path / "run"),
                     "--set", "mixup_alpha=0.2"]) == 2
    assert capsys.readouterr().err.startswith("amf train: error: MixUp mixes images but not their masks")


def test_a_bad_manifest_is_an_error_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path), "--manifest", str(tmp_path / "missing.csv"),
                     "--out", str(tmp_path / "report")]) == 2
    assert capsys.readouterr().err == f"amf evaluate: error: {tmp_path / 'missing.csv'}: manifest not found\n"


def test_the_old_module_entry_points_are_gone():
    for module in (train, calibrate, evaluate, export, masks):
        assert not hasattr(module, "main"), module.__name__
        assert "__main__" not in open(module.__file__).read(), module.__name__


def test_training_precision_defaults_to_bf16_only_where_the_hardware_has_it(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)  # an AVX2 CPU: bf16 convolutions crawl
    assert device.default_precision(on_gpu=False) == "32-true" and device.default_precision(on_gpu=True) == "bf16-mixed"
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)  # AVX-512 BF16 / AMX
    assert device.default_precision(on_gpu=False) == "bf16-mixed"
