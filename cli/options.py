"""The option vocabulary every ``amf`` command shares, defined once: data (``--manifest --format --root --name
--domain-column --columns``, repeated for several datasets, and ``--split``), ``--out``, ``--tta``, ``--vote``,
``--batch-size``, ``--device``, ``--weights``, and the run folders.

Parsing imports neither torch nor ``training``: the choice lists that ``training/`` owns (formats, presets,
selections, quantisation) are repeated here by name, and test/training/test_cli_train.py checks that they
match. TTA modes and vote rules come from the runtime's contract, which is torch-free.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from runtime.contract import TTA_MODES, VOTE_RULES
from runtime.errors import InputError

FORMATS = ("amibr", "midog25", "csv", "folders")  # training/data.py: FORMATS + CSV_FORMAT + the class-folder layout
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
    """The data options. Several datasets: repeat ``--manifest``; each per-dataset option is given once (it applies
    to every dataset) or once per manifest (paired in order); ``--name`` once per manifest; ``--columns`` once per
    ``--format csv`` dataset (paired in order) or once for all of them. :func:`resolve_data` pairs them."""
    g = p.add_argument_group("data (repeat --manifest for several datasets; a per-dataset option given once "
                             "applies to all, else once per --manifest, paired in order)")
    g.add_argument("--manifest", required=True, type=Path, action="append", help=manifest_help)
    g.add_argument("--format", choices=FORMATS, action="append",
                   help="amibr (file,label,domain,split,slide,x,y), midog25 (the published MIDOG 2025 CSV: image_id,"
                        "filename,coordinateX/Y,Tumor,Scanner,Species,expert1-3,majority), csv (columns named by "
                        "--columns), folders (ROOT/[domain/]class/*.png) (default amibr)")
    g.add_argument("--root", type=Path, metavar="DIR", action="append",
                   help="folder the manifest's paths are relative to (default: the manifest's)")
    g.add_argument("--name", action="append", help="the dataset's name in tables and domains (dataset:domain; "
                   "default: its format, or the manifest's file name for csv and folders)")
    g.add_argument("--domain-column", action="append", metavar="COLUMN",
                   help="the column that defines domains (midog25: Tumor | Scanner | Species, default Tumor)")
    g.add_argument("--columns", action="append", metavar="KEY=COLUMN,...",
                   help="--format csv: path=...,label=... and optionally domain, split, slide, x, y, votes "
                        "(a fraction), e.g. path=image_id,label=majority,slide=filename")
    g.add_argument("--split", default=split,
                   help=f"{split_help}; with several datasets, those without a split column give every row "
                        f"(default {split if split else 'all rows'})")


def resolve_data(args: argparse.Namespace) -> None:
    """Pair the data options into ``args.data`` (training.data.DataSource, one per ``--manifest``); a count that
    does not pair is an InputError (one line)."""
    from training.data import CSV_FORMAT, DataSource

    manifests = args.manifest
    n = len(manifests)

    def paired(option: str, values: list | None, count: int = n, once: bool = True) -> list:
        if not values:
            return [None] * count
        if len(values) == count or (once and len(values) == 1):
            return values * (count // len(values))
        allowed = f"once or {count} times" if once else f"{count} times"
        raise InputError(f"--{option} given {len(values)} time(s) for {n} --manifest: give it {allowed} "
                         f"(paired in order)")

    formats = [f or "amibr" for f in paired("format", args.format)]
    csv_count = formats.count(CSV_FORMAT)
    if args.columns and not csv_count:
        raise InputError("--columns: names the columns of a --format csv manifest, and none is csv")
    columns = iter(paired("columns", args.columns, csv_count))
    names = paired("name", args.name, once=n == 1)
    sources = []
    for manifest, fmt, root, name, domain in zip(manifests, formats, paired("root", args.root), names,
                                                 paired("domain-column", args.domain_column)):
        if fmt == CSV_FORMAT and not args.columns:
            raise InputError(f"--format csv ({manifest}): name its columns with --columns path=...,label=...")
        default = fmt if fmt in ("amibr", "midog25") else Path(manifest).stem
        sources.append(DataSource(manifest, fmt, root, name or default, domain,
                                  next(columns) if fmt == CSV_FORMAT else None))
    args.data = unique_names(sources)


def unique_names(sources: list) -> list:
    """Dataset names made unique in order (``amibr``, ``amibr-2``, ...)."""
    from dataclasses import replace

    seen: dict[str, int] = {}
    out = []
    for source in sources:
        seen[source.name] = seen.get(source.name, 0) + 1
        out.append(source if seen[source.name] == 1 else replace(source, name=f"{source.name}-{seen[source.name]}"))
    return out


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
