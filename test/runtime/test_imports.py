"""The boundary between the runtime (ships in the image) and the training side, read from the source."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from conftest import ROOT

RUNTIME_FILES = sorted((ROOT / "runtime").glob("*.py")) + [ROOT / "process.py"]
FORBIDDEN = {"torch", "torchvision", "timm", "lightning", "peft", "training", "model"}
RUNTIME_THIRD_PARTY = {"numpy", "onnxruntime", "SimpleITK"}


def imported_modules(path: Path) -> list[str]:
    """Every module an import statement of ``path`` names, at any depth (also inside functions)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names.append(node.module or "")
    return names


def test_the_runtime_never_imports_training_code_or_torch():
    assert len(RUNTIME_FILES) > 5
    for path in RUNTIME_FILES:
        for name in imported_modules(path):
            top = name.split(".")[0]
            assert top not in FORBIDDEN, f"{path.relative_to(ROOT)} imports {name}"
            assert top in sys.stdlib_module_names or top in RUNTIME_THIRD_PARTY | {"runtime"}, \
                f"{path.relative_to(ROOT)} imports {name}, which requirements.txt does not install"
            assert top not in ("pickle", "shelve", "marshal"), f"{path.relative_to(ROOT)} imports {name}"


def test_the_runtime_never_unpickles():
    for path in RUNTIME_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("load", "loads"):
                assert ast.unparse(node.value) not in ("np", "numpy"), f"{path}: {ast.unparse(node)}"
            if isinstance(node, ast.keyword):
                assert node.arg != "allow_pickle", path


def test_the_check_sees_an_import_hidden_in_a_function(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def f():\n    import torch.nn\n    from training.network import to_input\n")
    assert imported_modules(sneaky) == ["torch.nn", "training.network"]


def pins(name: str) -> dict[str, str]:
    """package (lower case, extras dropped) -> pinned version, from a requirements file."""
    found = {}
    for line in (ROOT / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, version = line.split("==")
            found[package.split("[")[0].lower()] = version.strip()
    return found


def test_requirements_are_the_runtime_and_the_lean_file_pins_the_same_versions():
    gpu, cpu = pins("requirements.txt"), pins("requirements-cpu.txt")
    assert set(gpu) - {n for n in gpu if n.startswith("nvidia-")} == {"numpy", "simpleitk", "onnxruntime-gpu"}
    assert all(n.endswith("-cu12") for n in gpu if n.startswith("nvidia-")), "CUDA 12 libraries only"
    assert set(cpu) == {"numpy", "simpleitk", "onnxruntime"}
    assert cpu["onnxruntime"] == gpu["onnxruntime-gpu"] and cpu["numpy"] == gpu["numpy"]
    assert cpu["simpleitk"] == gpu["simpleitk"]


def test_onnxruntime_is_imported_in_one_place_with_telemetry_off():
    importers = [path.name for path in RUNTIME_FILES
                 if "onnxruntime" in {name.split(".")[0] for name in imported_modules(path)}]
    assert importers == ["device.py"]
    source = (ROOT / "runtime" / "device.py").read_text()
    assert source.index('os.environ["ORT_DISABLE_TELEMETRY"] = "1"') < source.index("import onnxruntime")
