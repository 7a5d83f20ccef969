"""The boundary between the runtime (ships in the image) and the training side, read from the source."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

from conftest import ROOT

RUNTIME_FILES = sorted((ROOT / "runtime").glob("*.py")) + [ROOT / "process.py"]
# the repository's other packages, and the import names of pyproject.toml's `train` extra (the image has none)
OTHER_PACKAGES = {"training", "cli"}
TRAINING_ONLY = {"torch", "torchvision", "timm", "lightning", "safetensors", "skimage", "sklearn", "scipy",
                 "matplotlib", "PIL", "onnx", "onnxscript", "peft", "psutil", "filelock"}
FORBIDDEN = OTHER_PACKAGES | TRAINING_ONLY
IMPORT_NAMES = {"scikit-image": "skimage", "scikit-learn": "sklearn", "pillow": "PIL"}  # where they differ
RUNTIME_THIRD_PARTY = {"numpy", "onnxruntime", "SimpleITK", "tifffile"}


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


def import_problems(path: Path) -> list[str]:
    """What the runtime may not import, found in ``path``: one line per offending import."""
    problems = []
    for name in imported_modules(path):
        top = name.split(".")[0]
        if top in FORBIDDEN:
            problems.append(f"{path.name} imports {name}, training-side code")
        elif top in ("pickle", "shelve", "marshal"):
            problems.append(f"{path.name} imports {name}, an unpickler")
        elif top not in sys.stdlib_module_names and top not in RUNTIME_THIRD_PARTY | {"runtime"}:
            problems.append(f"{path.name} imports {name}, which requirements.txt does not install")
    return problems


def test_the_runtime_never_imports_training_code_or_torch():
    assert len(RUNTIME_FILES) > 5
    for path in RUNTIME_FILES:
        assert import_problems(path) == [], path.relative_to(ROOT)


def test_the_forbidden_list_names_what_exists():
    """Each repository package in the list exists and is packaged (a stale name could never fail), and every
    package of the `train` extra is in the list by its import name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packaged = set(project["tool"]["setuptools"]["packages"])
    assert OTHER_PACKAGES == packaged - {"runtime"}
    assert all((ROOT / name / "__init__.py").is_file() for name in OTHER_PACKAGES)
    extra = {re.split(r"[<>=\[ ]", req)[0].lower() for req in project["project"]["optional-dependencies"]["train"]}
    assert {IMPORT_NAMES.get(name, name) for name in extra} == TRAINING_ONLY


def test_the_check_catches_every_forbidden_module_however_imported(tmp_path):
    lines = []
    for i, name in enumerate(sorted(FORBIDDEN)):
        lines += [f"import {name}", f"import {name}.sub as alias{i}", f"from {name}.sub import thing{i}",
                  f"def f{i}():\n    from {name} import other"]
    lines += ["import pickle", "import yaml", "import os.path", "from runtime.stack import read_stack"]
    source = tmp_path / "synthetic.py"
    source.write_text("\n".join(lines) + "\n")
    problems = import_problems(source)
    for name in FORBIDDEN:
        flagged = [p for p in problems if re.search(rf"imports {re.escape(name)}(\.sub)?, training-side", p)]
        assert len(flagged) == 4, (name, flagged)
    assert "synthetic.py imports pickle, an unpickler" in problems
    assert "synthetic.py imports yaml, which requirements.txt does not install" in problems
    assert len(problems) == 4 * len(FORBIDDEN) + 2  # os.path and runtime are fine


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
    assert set(gpu) - {n for n in gpu if n.startswith("nvidia-")} == {"numpy", "simpleitk", "tifffile",
                                                                              "onnxruntime-gpu"}
    assert all(n.endswith("-cu12") for n in gpu if n.startswith("nvidia-")), "CUDA 12 libraries only"
    assert set(cpu) == {"numpy", "simpleitk", "tifffile", "onnxruntime"}
    assert cpu["onnxruntime"] == gpu["onnxruntime-gpu"] and cpu["numpy"] == gpu["numpy"]
    assert cpu["simpleitk"] == gpu["simpleitk"] and cpu["tifffile"] == gpu["tifffile"]


def test_onnxruntime_is_imported_in_one_place_with_telemetry_off():
    importers = [path.name for path in RUNTIME_FILES
                 if "onnxruntime" in {name.split(".")[0] for name in imported_modules(path)}]
    assert importers == ["session.py"]
    source = (ROOT / "runtime" / "session.py").read_text()
    assert source.index('os.environ["ORT_DISABLE_TELEMETRY"] = "1"') < source.index("import onnxruntime")
