"""The option vocabulary every ``amf`` command shares, defined once: data (``--manifest --format --root --name
--domain-column --columns``, repeated for several datasets, and ``--split``), ``--out``, ``--tta``, ``--vote``,
``--batch-size``, ``--device``, ``--weights``, and the run folders.

Parsing imports no torch: the choice lists and defaults come from training/choices.py (the standard library only),
TTA modes and vote rules from the runtime's contract.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from runtime.contract import TTA_MODES, VOTE_RULES
from runtime.errors import InputError
from training.choices import AMIBR, AUTO, CSV_FORMAT, DEVICES, FORMATS, MIDOG25


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


class PerDataset(argparse.Action):
    """A per-dataset data option (``--format --root --name --domain-column --columns``): each value is kept with the
    index of the ``--manifest`` written before it (-1: before the first one), for :func:`resolve_data`."""

    def __call__(self, parser, namespace, values, option_string=None):
        after = len(getattr(namespace, "manifest", None) or []) - 1
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), (after, values)])


DATA_RULE = ("each per-dataset option belongs to the --manifest it follows (written before the first: to every "
             "dataset); given once per dataset, they may also all follow the last --manifest and pair in order")


def add_data(p: argparse.ArgumentParser, *, split: str | None = None, split_help: str = "use only this split's rows",
             manifest_help: str = "CSV manifest, or a class-folder root with --format folders") -> None:
    """The data options. Several datasets: repeat ``--manifest``; a per-dataset option belongs to the ``--manifest``
    it follows (before the first one: to all), or, given once per dataset after the last one, pairs in order
    (:data:`DATA_RULE`). :func:`resolve_data` assigns them."""
    g = p.add_argument_group(f"data (repeat --manifest for several datasets: {DATA_RULE})")
    g.add_argument("--manifest", required=True, type=Path, action="append", help=manifest_help)
    g.add_argument("--format", choices=FORMATS, action=PerDataset,
                   help="amibr (file,label,domain,split,slide,x,y), midog25 (the published MIDOG 2025 CSV: image_id,"
                        "filename,coordinateX/Y,Tumor,Scanner,Species,expert1-3,majority), csv (columns named by "
                        "--columns), folders (ROOT/[domain/]class/*.png) (default amibr)")
    g.add_argument("--root", type=Path, metavar="DIR", action=PerDataset,
                   help="folder the manifest's paths are relative to (default: the manifest's)")
    g.add_argument("--name", action=PerDataset, help="the dataset's name in tables and domains (dataset:domain; "
                   "default: its format, or the manifest's file name for csv and folders)")
    g.add_argument("--domain-column", action=PerDataset, metavar="COLUMN",
                   help="the column that defines domains (midog25: Tumor | Scanner | Species, default Tumor)")
    g.add_argument("--columns", action=PerDataset, metavar="KEY=COLUMN,...",
                   help="--format csv: path=...,label=... and optionally domain, split, slide, x, y, votes "
                        "(a fraction), e.g. path=image_id,label=majority,slide=filename")
    g.add_argument("--split", default=split,
                   help=f"{split_help}; with several datasets, those without a split column give every row "
                        f"(default {split if split else 'all rows'})")


def per_dataset(option: str, given: list[tuple[int, object]] | None, targets: list[int], last: int,
                what: str = "--manifest") -> dict[int, object]:
    """``option``'s values assigned by :data:`DATA_RULE` to the datasets ``targets`` (indexes of ``--manifest``, the
    last one ``last``; ``what`` names them in the error): {dataset index: value}. A value no rule can place is an
    InputError."""
    default, own, placeable = None, {}, True
    for after, value in given or []:
        if after < 0:
            placeable &= default is None
            default = value
        elif after in targets and after not in own:
            own[after] = value
        else:
            placeable = False
    if not placeable:
        after_last = all(after == last for after, _ in given)
        if len(given) != len(targets) or not after_last:
            raise InputError(f"--{option} given {len(given)} time(s) for {len(targets)} {what}: {DATA_RULE}")
        return dict(zip(targets, (value for _, value in given)))  # once per dataset after the last: in order
    return {i: own.get(i, default) for i in targets if own.get(i, default) is not None}


def resolve_data(args: argparse.Namespace) -> None:
    """Assign the data options to the datasets into ``args.data`` (training.data.DataSource, one per
    ``--manifest``) by :data:`DATA_RULE`; a value that cannot be placed is an InputError (one line)."""
    from training.data import DataSource

    manifests = args.manifest
    every = list(range(len(manifests)))
    last = every[-1]
    formats = per_dataset("format", args.format, every, last)
    formats = [formats.get(i) or AMIBR for i in every]
    csv_datasets = [i for i in every if formats[i] == CSV_FORMAT]
    if args.columns and not csv_datasets:
        raise InputError("--columns: names the columns of a --format csv manifest, and none is csv")
    columns = per_dataset("columns", args.columns, csv_datasets, last, "--format csv dataset(s)")
    if args.name and len(manifests) > 1 and any(after < 0 for after, _ in args.name):
        raise InputError("--name before the first --manifest: a name is one dataset's; write it after its --manifest")
    names, roots = per_dataset("name", args.name, every, last), per_dataset("root", args.root, every, last)
    domains = per_dataset("domain-column", args.domain_column, every, last)
    sources = []
    for i, manifest in enumerate(manifests):
        if formats[i] == CSV_FORMAT and i not in columns:
            raise InputError(f"--format csv ({manifest}): name its columns with --columns path=...,label=...")
        default = formats[i] if formats[i] in (AMIBR, MIDOG25) else Path(manifest).stem
        sources.append(DataSource(manifest, formats[i], roots.get(i), names.get(i) or default, domains.get(i),
                                  columns.get(i)))
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
