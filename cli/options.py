"""The option vocabulary every ``amf`` command shares, defined once: data (``--manifest --format --root
--split``), ``--out``, ``--tta``, ``--vote``, ``--batch-size``, ``--device``, ``--weights``, and the run folders.

Parsing imports neither torch nor ``training``: the choice lists that ``training/`` owns (formats, presets,
selections, quantisation) are repeated here by name, and test/training/test_cli_train.py checks that they
match. TTA modes and vote rules come from the runtime's contract, which is torch-free.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from runtime.contract import TTA_MODES, VOTE_RULES

FORMATS = ("amibr", "midog25", "folders")  # training/data.py: FORMATS + the class-folder layout
# training/recipe.py: PRESETS
PRESETS = ("h-optimus-0-lora", "scratch", "scratch-strong", "seed001", "seed002-efficientnetv2-m", "seed002-swin-b",
           "seed002-vit-l16", "seed003", "uni-linear", "uni-lora", "virchow-lora", "virchow2-lora")
SELECTIONS = ("val_ba", "val_loss")  # training/recipe.py: SELECTIONS
QUANTIZE_MODES = ("static", "weights")  # training/quantize.py: MODES
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")  # training/quantize.py: CALIBRATION_METHODS
DEVICES = ("auto", "cpu", "cuda")
AUTO = "auto"  # --tta auto: the command chooses the mode on the validation parts


def positive_int(text: str) -> int:
    value = int(text)  # a ValueError reads "invalid positive_int value: 'TEXT'"
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative: expected 0 or more")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def add_runs(p: argparse.ArgumentParser, help: str = "run folder(s) with fold checkpoints, or fold folders") -> None:
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help=help)


def add_data(p: argparse.ArgumentParser, *, split: str | None = None, split_help: str = "use only this split's rows",
             manifest_help: str = "CSV manifest, or a class-folder root with --format folders") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--manifest", required=True, type=Path, help=manifest_help)
    g.add_argument("--format", default="amibr", choices=FORMATS,
                   help="amibr (file,label,domain,split), midog25 (image_id,majority,Tumor), folders "
                        "(ROOT/[domain/]class/*.png) (default amibr)")
    g.add_argument("--root", type=Path, metavar="DIR",
                   help="folder the manifest's paths are relative to (default: the manifest's)")
    g.add_argument("--split", default=split,
                   help=f"{split_help} (default {split if split else 'all rows'})")


def add_out(p: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    p.add_argument("--out", type=Path, required=default is None, default=None if default is None else Path(default),
                   help=help + (f" (default {default})" if default else ""))


def add_tta(p: argparse.ArgumentParser, help: str, default: str | None = "none", auto: bool = False) -> None:
    """``--tta MODE``: the test-time augmentation the models are used with (none: one view; d4: the mean over the
    8 rotations/flips); ``auto`` (where offered) lets the command choose it on the validation parts."""
    choices = (*TTA_MODES, AUTO) if auto else TTA_MODES
    p.add_argument("--tta", default=default, choices=choices, metavar="MODE",
                   help=f"{' | '.join(choices)}: {help}" + (f" (default {default})" if default else ""))


def add_vote(p: argparse.ArgumentParser, help: str, default: str | None, auto: bool = False) -> None:
    """``--vote RULE``: how the models' answers combine (runtime/vote.py: majority, seed 001's; mean-probability;
    mean-then-vote, for several models per fold); ``auto`` (where offered) lets the command choose it on the
    validation parts."""
    choices = (*VOTE_RULES, AUTO) if auto else VOTE_RULES
    p.add_argument("--vote", default=default, choices=choices, metavar="RULE",
                   help=f"{' | '.join(choices)}: {help}" + (f" (default {default})" if default else ""))


def add_batch_size(p: argparse.ArgumentParser, help: str, default: int | None) -> None:
    p.add_argument("--batch-size", type=positive_int, default=default, metavar="N",
                   help=help + (f" (default {default})" if default is not None else ""))


def add_device(p: argparse.ArgumentParser, help: str = "where PyTorch runs (auto: CUDA when available)",
               default: str | None = "auto") -> None:
    p.add_argument("--device", default=default, choices=DEVICES,
                   help=help + (f" (default {default})" if default else ""))


def add_weights(p: argparse.ArgumentParser, help: str = "exported ensemble folder (ensemble.json + ensemble.onnx); "
                "default: $AMF_WEIGHTS, else /opt/ml/model when it holds ensemble.json, else weights/") -> None:
    p.add_argument("--weights", type=Path, metavar="DIR", help=help)
