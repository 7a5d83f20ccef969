"""Checks of a command's arguments before it starts working (and before torch loads): a source of the wrong kind, a
missing file, an output that cannot be written, the ``train`` extra, and options that would do nothing with the
others given (each acts or is refused). Each failure is one of runtime/errors.py's errors, which
cli/main.py prints as one ``amf COMMAND: error: ...`` line with its exit code. Nothing here creates anything.
"""

from __future__ import annotations

import argparse
import os
import re
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

from runtime.contract import SPEC_FILE, is_exported
from runtime.errors import InputError, ModelError, OutputError
from training.choices import CALIBRATION_METHOD, CALIBRATION_PATCHES, GALLERY, INFERENCE_BATCH, LODO

ENSEMBLE_SOURCE = f"an exported ensemble folder ({SPEC_FILE}, written by amf export)"


def sources(paths: list[Path], *, ensembles: bool, distinct: bool = False) -> None:
    """Each of ``paths`` is a run (or fold) folder with finished folds, or, where ``ensembles``, an exported
    ensemble; ``distinct``: none is given twice (amf export: its members would be the same twice)."""
    from training.run_files import RUN_SOURCE, find_fold_checkpoints  # torch-free; not needed for --help
    takes = f"{RUN_SOURCE}, or {ENSEMBLE_SOURCE}" if ensembles else RUN_SOURCE
    seen = set()
    for path in paths:
        if distinct and path.resolve() in seen:
            raise InputError(f"{path} is given twice: each source once")
        seen.add(path.resolve())
        if is_exported(path):
            if not ensembles:
                raise InputError(f"{path} is an exported ensemble ({SPEC_FILE}), not a run: this command takes "
                                 f"{RUN_SOURCE}")
        else:
            find_fold_checkpoints(path, expected=takes)

def finished(paths: list[Path], *, finished_only: bool) -> None:
    """``amf export``: every fold folder of each run has its model; one that lacks it is a ModelError (exit 4) naming
    them, unless ``finished_only``, which exports the finished folds and prints the ones left out."""
    from training.run_files import WEIGHTS_FILE, unfinished_folds

    missing = [str(folder) for path in paths if not is_exported(path) for folder in unfinished_folds(path)]
    if not missing:
        return
    if not finished_only:
        raise ModelError(f"{len(missing)} fold(s) without their model ({WEIGHTS_FILE}): {', '.join(missing)} "
                         "(unfinished, or its weights lost): amf train --resume finishes them; --finished-only "
                         "exports the other folds")
    print(f"--finished-only: {len(missing)} fold(s) left out, without their model: {', '.join(missing)}")


def existing(path: Path | None, option: str, what: str, folder: bool = False) -> None:
    """``option``'s ``path``, when given, exists (a folder where ``folder``); ``what`` says what it should be."""
    if path is not None and not (path.is_dir() if folder else path.exists()):
        raise InputError(f"{option} {path}: {'no such folder' if folder else 'not found'} ({what})")


def output_folder(path: Path, option: str = "--out") -> None:
    """``path`` is, or can be made, a writable folder."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: a file is there, not a folder")
    _creatable(path, option)


def output_file(path: Path, option: str = "--out") -> None:
    """A file can be written at ``path`` (its folder is, or can be made, writable)."""
    if path.is_dir():
        raise OutputError(f"{option} {path}: a folder is there; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{option} {path}: the file is not writable")
    _creatable(path.parent, option, path)


def _creatable(folder: Path, option: str, target: Path | None = None) -> None:
    """The nearest folder that exists on the way to ``folder`` is a writable folder."""
    target = target or folder
    nearest = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    if not nearest.is_dir():
        raise OutputError(f"{option} {target}: {nearest} is a file, not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {target}: {nearest} is not writable (choose another {option})")


# ---- the train extra, as this package's metadata lists it ----

PROJECT = "amf-mtl"


def train_extra() -> list[str]:
    """The distributions of pyproject's ``train`` extra, read from the installed package's metadata."""
    names = []
    for requirement in metadata.requires(PROJECT) or []:
        spec, _, marker = requirement.partition(";")
        if re.search(r"""extra\s*==\s*["']train["']""", marker):
            names.append(re.split(r"[\s<>=!~\[(]", spec.strip(), maxsplit=1)[0])
    return names


def _modules(distributions: list[str]) -> dict[str, str]:
    """Top-level module -> the distribution (of ``distributions``, installed ones) that provides it."""
    def key(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    wanted = {key(d): d for d in distributions}
    return {module: wanted[key(d)] for module, ds in metadata.packages_distributions().items() for d in ds
            if key(d) in wanted and not module.startswith("_")}


def missing_train_package() -> str | None:
    """The first distribution of the ``train`` extra that is not installed or cannot be imported, else None."""
    extra = train_extra()
    installed = _modules(extra)
    for name in extra:
        modules = [m for m, d in installed.items() if d == name]
        if not modules or any(find_spec(m) is None for m in modules):
            return name
    return None


def train_package_of(module: str) -> str | None:
    """The ``train`` extra's distribution that provides the top-level ``module``, if any."""
    return _modules(train_extra()).get(module)


def needs_train_extra(missing: str) -> InputError:
    return InputError(f"needs the train extra ({missing} is not installed): pip install -e '.[train]'")


# ---- options that act only with others: refused (one line, exit 2) where they would do nothing ----

def devices(text: str) -> str:
    """``--devices``: auto, a count (-1: all), or device indexes (``0,1``), as Lightning takes them."""
    words = [w.strip() for w in text.strip("[] ").split(",")]
    if text == "auto" or (all(w.isdigit() for w in words) and (len(words) > 1 or int(words[0]) > 0)) or text == "-1":
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: expected auto, a count of devices (-1: all) or GPU indexes "
                                     "such as 0,1")


def training_options(args: argparse.Namespace) -> None:
    """``amf train``'s options that need others, checked before torch loads."""
    if args.jobs > 1 and args.fold_index is not None:
        raise InputError("--jobs: trains several folds side by side, and --fold-index picks one: give one of them")
    if args.num_nodes > 1 and not {"SLURM_JOB_ID", "WORLD_SIZE"} & set(os.environ):
        raise InputError(f"--num-nodes {args.num_nodes}: nodes join one model when srun (SLURM) or torchrun starts "
                         "the processes (docs/cluster.md)")
    if args.device == "cpu" and args.devices not in ("auto", "-1") and "," in args.devices:
        raise InputError(f"--devices {args.devices}: device indexes choose GPUs; with --device cpu give a count")


def recipe_options(args: argparse.Namespace, recipe) -> None:
    """``amf train``'s options that depend on the recipe, checked once it is built (before any data is read)."""
    from training.network import has_decoders

    if args.single_task and recipe.network.kind != "mtl":
        raise InputError(f"--single-task: switches the multi-task network's decoders off, and this recipe's network "
                         f"({recipe.network.kind}) has none")
    if args.masks is not None and not has_decoders(recipe.network):
        raise InputError(f"--masks {args.masks}: the decoders' targets, and this recipe's network trains without "
                         "decoders (single task)")
    if args.cache is not None and (args.masks is not None or not has_decoders(recipe.network)):
        raise InputError(f"--cache {args.cache}: keeps the built-in mask generator's masks, and "
                         + ("--masks gives the masks" if args.masks is not None
                            else "this recipe's network trains without decoders (single task)"))
    if args.hold_out_test and recipe.cv != LODO:
        raise InputError(f"--hold-out-test: holds a domain out of leave-one-domain-out folds, and this recipe's "
                         f"folds are {recipe.cv} (--set cv={LODO}, or leave --hold-out-test out)")


def inference_options(args: argparse.Namespace) -> None:
    """``amf calibrate`` / ``evaluate``: ``--batch-size`` is the PyTorch batch of fold checkpoints (an exported
    ensemble batches as the container does), and ``--device`` reaches exported ensembles through AMF_DEVICE
    (runtime/device.py), as in ``amf predict``; the defaults filled in."""
    if args.batch_size is not None and all(is_exported(s) for s in args.runs):
        raise InputError(f"--batch-size {args.batch_size}: the PyTorch batch of fold checkpoints, and every source "
                         "is an exported ensemble (it runs as the container does)")
    args.batch_size = args.batch_size or INFERENCE_BATCH
    if getattr(args, "write", False) and all(is_exported(s) for s in args.runs):
        raise InputError("--write: writes the threshold into run folders' config.json, and every source is an "
                         "exported ensemble")
    if getattr(args, "no_vote", False) and (args.vote is not None or args.gallery is not None):
        raise InputError(f"--{'vote' if args.vote is not None else 'gallery'}: shows the vote, and --no-vote scores "
                         "the models one by one")
    if getattr(args, "gallery", 0) is None:
        args.gallery = GALLERY
    if args.device in ("cpu", "cuda"):
        os.environ["AMF_DEVICE"] = args.device


def quantize_options(args: argparse.Namespace) -> None:
    """``amf export``: the calibration options set the static activations' scales (--quantize static)."""
    if args.quantize != "static":
        given = [o for o, v in (("--calibration", args.calibration), ("--calibration-patches",
                                                                      args.calibration_patches)) if v is not None]
        if given:
            raise InputError(f"{given[0]}: calibrates the int8 activations of --quantize static, and --quantize "
                             f"{args.quantize} keeps them float")
    args.calibration = args.calibration or CALIBRATION_METHOD
    args.calibration_patches = args.calibration_patches or CALIBRATION_PATCHES
