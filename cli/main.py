"""The ``amf`` console command ([project.scripts] in pyproject.toml): every step of the project as one command.

Arguments are parsed before anything heavy is imported: torch and the ``training`` package load only when a
command that needs them runs, so ``amf COMMAND --help`` is instant and works in the runtime-only install.
Each command's implementation is a ``run(args)`` in its module (training/*.py, runtime/predict.py). Arguments
and paths are checked before the work starts, and before torch loads wherever the check needs no torch (the
option types, cli/checks.py, ``training.data.check``). Every problem the user can act on is one of
runtime/errors.py's errors, raised where it is found and printed here as one ``amf COMMAND: error: ...`` line
with its exit code: 2 a bad argument or input (a manifest, a split, a recipe field, a source of the wrong kind,
a training command without the ``train`` extra), 3 an output that cannot be written (also a full disk), 4 an
unusable model (a corrupt checkpoint or ensemble, an int8 export that fails its accuracy guard). Anything else
is an internal error: exit 1 with its traceback. The container's entry point stays ``process.py``.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable
from pathlib import Path

from cli import checks
from cli.options import (
    add_batch_size,
    add_data,
    add_device,
    add_out,
    add_runs,
    add_tta,
    add_vote,
    add_weights,
    non_negative_int,
    positive_float,
    positive_int,
    resolve_data,
)
from runtime.contract import is_exported
from runtime.ensemble import default_pages_per_run
from runtime.errors import AmfError, InputError, OutputError
from runtime.version import __version__
from training.choices import (
    CALIBRATION_METHOD,
    CALIBRATION_METHODS,
    CALIBRATION_PATCHES,
    GALLERY,
    INFERENCE_BATCH,
    MASK_CACHE,
    PRECISIONS,
    PRESETS,
    QUANTIZE_MODES,
    SELECTIONS,
)

FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # an OSError of these mid-work: an output error


class Parser(argparse.ArgumentParser):
    """argparse's parser with one line for a bad argument (``amf COMMAND: error: ...``, exit 2), not the usage
    block before it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def check_data(args: argparse.Namespace) -> None:
    """Before a training-side command starts: the ``train`` extra is installed (else the same line as when an
    import fails), the data options pair into ``args.data`` (one source per --manifest), and they select rows
    (training/data.py reads only the CSVs: no torch)."""
    missing = checks.missing_train_package()
    if missing:
        raise checks.needs_train_extra(missing)
    from training.data import check

    resolve_data(args)
    check(args.data, args.split)


# ---- the commands: each parses here and imports its implementation only when it runs ----

def train_args(p: argparse.ArgumentParser) -> None:
    add_data(p, split_help="train on this split's rows only (e.g. train)")
    add_out(p, "run folder: one sub-folder per fold (checkpoints, metrics.csv, model.safetensors + config.json)")
    r = p.add_argument_group("recipe (default: the preset's value)")
    r.add_argument("--preset", default="seed001", choices=PRESETS, metavar="NAME",
                   help=f"{' | '.join(PRESETS)} (default seed001)")
    r.add_argument("--epochs", type=positive_int)
    r.add_argument("--lr", type=positive_float)
    add_batch_size(r, "training batch size", None)
    r.add_argument("--select", choices=SELECTIONS, help="model selection on the validation part")
    r.add_argument("--seed", type=int)
    r.add_argument("--backbone", help="timm model name (multi-task: a CNN with features_only), or a foundation model")
    r.add_argument("--pretrained", help="'hub' for timm's weights, or a local weights file (foundation models: "
                   "required)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any recipe field, e.g. mixup_alpha=0.2, network.finetune=linear, augment.hue=0.05")
    r.add_argument("--single-task", action="store_true", help="decoders off (ablation)")
    f = p.add_argument_group("folds and masks")
    f.add_argument("--folds", metavar="NAMES",
                   help="comma-separated fold names or validation domains to run (default: all)")
    f.add_argument("--fold-index", type=non_negative_int, metavar="I",
                   help="train only the I-th fold (from 0, in run order; after --folds): one fold per SLURM array "
                        "task, --fold-index $SLURM_ARRAY_TASK_ID (docs/cluster.md)")
    f.add_argument("--hold-out-test", action="store_true", help="leave-one-domain-out only: each fold also holds "
                   "the next domain out of training and validation; amf evaluate of the run scores each fold's model "
                   "on it")
    f.add_argument("--masks", type=Path, metavar="DIR",
                   help="folder of masks made elsewhere (default: the built-in generator)")
    f.add_argument("--cache", type=Path, metavar="DIR",
                   help=f"where the built-in mask generator keeps its masks (default {MASK_CACHE})")
    o = p.add_argument_group("figures shown twice across a held-out part, within a dataset or across two "
                             "(training/overlap.py; refused by default, exit 2)")
    o = o.add_mutually_exclusive_group()
    o.add_argument("--drop-overlap", action="store_true", help="drop the training rows that show a figure held out "
                   "by --split or by a fold's validation (or test) part")
    o.add_argument("--allow-overlap", action="store_true", help="train anyway (recorded in each config.json)")
    x = p.add_argument_group("run")
    x.add_argument("--resume", action="store_true", help="skip finished folds, continue the current one from "
                   "ckpt/last.ckpt")
    x.add_argument("--init", type=Path, metavar="RUN", help="start each fold from the same fold's weights in this "
                   "earlier run (or one fold folder / .safetensors file); tensors it lacks, e.g. decoders, start fresh")
    add_device(x, "Lightning's accelerator: auto | cpu | cuda (gpu)")
    x.add_argument("--devices", default="auto", type=checks.devices, help="auto, how many devices (-1: all), or "
                   "which (GPU indexes, e.g. 0,1): Lightning's devices; several train with DDP; under srun, the tasks "
                   "per node (default auto)")
    x.add_argument("--num-nodes", type=positive_int, default=1, metavar="N",
                   help="nodes of one DDP job (srun --nodes; docs/cluster.md) (default 1)")
    x.add_argument("--precision", choices=PRECISIONS, metavar="NAME", help=f"Lightning's precision: "
                   f"{' | '.join(PRECISIONS)} (default bf16-mixed on GPUs and on CPUs with native bf16, e.g. AVX-512 "
                   f"BF16; else 32-true)")
    x.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="CPU: train N folds at once, each in a process of its own with the cores shared out as "
                        "threads, output in OUT/<fold>.log (up to one per core: more patches/s than one process; "
                        "default 1)")
    x.add_argument("--max-steps", type=positive_int, default=-1, metavar="N",
                   help="stop each fold after this many steps (smoke runs; default: no limit)")
    x.add_argument("--limit-val-batches", type=positive_float, default=1.0, metavar="N",
                   help="a fraction, or a count when > 1")


def train(args: argparse.Namespace) -> int:
    check_data(args)
    checks.training_options(args)
    if args.pretrained not in (None, "hub"):
        checks.existing(Path(args.pretrained), "--pretrained", "a local weights file, or 'hub' for timm's weights")
    checks.existing(args.init, "--init", "an earlier run folder, one fold folder or a .safetensors file")
    checks.existing(args.masks, "--masks", "a folder of masks, one PNG per patch", folder=True)
    checks.output_folder(args.out)
    import torch

    from training import train
    from training.recipe import build_recipe

    try:
        recipe = build_recipe(args)
    except ValueError as exc:  # the recipe's checks name the valid choices
        raise InputError(exc) from None
    checks.recipe_options(args, recipe)
    if args.jobs > 1 and args.device != "cpu" and (args.device == "cuda" or torch.cuda.is_available()):
        raise InputError("--jobs: on a GPU the folds train one after another (folds sharing one GPU were slower "
                         "each than one at a time); --device cpu to train them side by side")
    return train.run(args, recipe)


def pick_args(p: argparse.ArgumentParser) -> None:
    add_runs(p, "runs of the same folds, e.g. a run and its continuation with --init")
    add_data(p, split_help="the split the folds were trained on (e.g. train)")
    add_out(p, "folder for each fold's best model (OUT/<fold>/) and selection.json")
    add_batch_size(p, "inference batch", INFERENCE_BATCH)
    add_device(p)


def pick(args: argparse.Namespace) -> None:
    check_data(args)
    checks.sources(args.runs, ensembles=False)
    checks.output_folder(args.out)
    from training import pick

    pick.run(args)


def calibrate_args(p: argparse.ArgumentParser) -> None:
    add_runs(p, "run folder(s) with fold checkpoints, fold folders, or exported ensemble folders (their members, "
             "run as in the container); several of the same folds are also compared as candidate ensembles")
    add_data(p, split_help="the split the folds were trained on (e.g. train)")
    add_tta(p, "the TTA the threshold is chosen for; auto compares none and d4 on validation and keeps the better",
            auto=True)
    add_vote(p, "the rule the threshold is chosen for; auto scores each rule on validation and keeps majority "
             "unless another gains at least 0.005 mean BA", default="auto", auto=True)
    p.add_argument("--write", action="store_true", help="write the threshold into each fold's config.json (run "
                   "folders only)")
    p.add_argument("--out", type=Path, metavar="DIR", help="also write calibration.json there, and comparison.md "
                   "when several sources are compared (default: into each run folder only)")
    add_batch_size(p, f"PyTorch inference batch (checkpoints; default {INFERENCE_BATCH})", None)
    add_device(p, "where the models run (auto: CUDA when available; exported ensembles: as amf predict)")


def calibrate(args: argparse.Namespace) -> None:
    check_data(args)
    checks.sources(args.runs, ensembles=True)
    checks.inference_options(args)
    for run in args.runs:  # calibration.json goes into each run folder
        if not is_exported(run):
            checks.output_folder(run, "RUN")
    if args.out is not None:
        checks.output_folder(args.out)
    from training import calibrate

    calibrate.run(args)


def evaluate_args(p: argparse.ArgumentParser) -> None:
    add_runs(p, "run folder(s) or fold folders (their checkpoints vote as one ensemble), and/or exported ensemble "
             "folders (ensemble.json: scored by the container's code); two or more ensembles are compared (A, B, "
             "...): the paired interval of each vote's BA difference from A's")
    add_data(p, split_help="evaluate only this split's rows (e.g. test)")
    add_out(p, "report folder: report.html (one self-contained page), report.json, report.md, roc.png, "
            "confusion.png")
    add_tta(p, "test-time augmentation (default: the spec's for an exported ensemble, none for checkpoints)",
            default=None)
    add_vote(p, "the vote (default: the spec's for an exported ensemble, majority for checkpoints; "
             "mean-then-vote groups the checkpoints by fold folder name)", default=None)
    p.add_argument("--no-vote", action="store_true", help="score the models one by one only (e.g. ablation variants)")
    p.add_argument("--bootstrap", type=non_negative_int, default=2000, metavar="N",
                   help="resamples for 95 %% intervals of BA, over slides where the manifest names them (0: off; "
                        "the paired difference of two ensembles still gets 2000; default 2000)")
    p.add_argument("--gallery", type=non_negative_int, metavar="N",
                   help=f"report.html: the vote's N most confident errors per domain (default {GALLERY})")
    add_batch_size(p, f"PyTorch inference batch (checkpoints; default {INFERENCE_BATCH})", None)
    add_device(p, "where the models run (auto: CUDA when available; exported ensembles: as amf predict)")


def evaluate(args: argparse.Namespace) -> None:
    check_data(args)
    checks.sources(args.runs, ensembles=True)
    checks.inference_options(args)
    checks.output_folder(args.out)
    from training import evaluate

    evaluate.run(args)


def export_args(p: argparse.ArgumentParser) -> None:
    add_runs(p, "run folder(s) with fold checkpoints, or fold folders (several runs of the same folds: several "
             "members per fold), and/or exported ensemble folders (re-quantised from their own graphs; beside "
             "runs, their members join the new ones in one graph)")
    add_data(p, split="train", manifest_help="labelled manifest: int8 calibration and the accuracy guard",
             split_help="the rows for calibration and the per-fold validation guard")
    add_out(p, "folder for ensemble.onnx + ensemble.json", default="weights")
    add_tta(p, "test-time augmentation the container applies (written into ensemble.json)")
    add_vote(p, "the vote the container applies (written into ensemble.json)", default="majority")
    q = p.add_argument_group("int8")
    q.add_argument("--quantize", default="static", choices=QUANTIZE_MODES,
                   help="static: int8 activations too; weights: int8 weights only, float activations (default static)")
    q.add_argument("--calibration", choices=CALIBRATION_METHODS,
                   help=f"static calibration method (default {CALIBRATION_METHOD})")
    q.add_argument("--calibration-patches", type=positive_int, metavar="N",
                   help=f"static calibration sample size (default {CALIBRATION_PATCHES})")
    q.add_argument("--no-guard", action="store_true", help="write the graph even when the accuracy guard fails")
    p.add_argument("--finished-only", action="store_true", help="export a run's finished folds and name the ones "
                   "without their model (default: such a fold is refused, exit 4)")


def export(args: argparse.Namespace) -> None:
    check_data(args)
    checks.sources(args.runs, ensembles=True, distinct=True)
    checks.finished(args.runs, finished_only=args.finished_only)
    checks.quantize_options(args)
    checks.output_folder(args.out)
    from training import export

    export.run(args)


def predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="stack (.tif/.tiff/.mha: every page), patch image (.png/.jpg/.jpeg/.bmp), folder (searched "
                        "recursively) or CSV manifest (file, image_id, path or filename column)")
    add_out(p, "CSV to write (atomically): source, page, class, confidence, each fold's probability")
    add_weights(p)
    add_batch_size(p, f"patches per inference run (default {default_pages_per_run('none')}; with --tta d4, "
                      f"{default_pages_per_run('d4')}: 8 views each)", None)
    add_tta(p, "override the ensemble spec's test-time augmentation", default=None)
    add_vote(p, "override the ensemble spec's vote", default=None)
    add_device(p, "where onnxruntime runs (default: $AMF_DEVICE, else auto: CUDA when a GPU is visible)", default=None)


def predict(args: argparse.Namespace) -> int:
    checks.output_file(args.out)
    from runtime import predict

    return predict.run(args)


def masks_args(p: argparse.ArgumentParser) -> None:
    add_data(p, split="train", split_help="draw from this split")
    add_out(p, "PNG to write")
    p.add_argument("--per-class", type=positive_int, default=5, help="patches per class and domain (default 5)")
    p.add_argument("--seed", type=int, default=0)


def masks(args: argparse.Namespace) -> None:
    check_data(args)
    checks.output_file(args.out)
    from training import masks

    masks.run(args)


def augment_args(p: argparse.ArgumentParser) -> None:
    add_data(p, split="train", split_help="draw from this split")
    add_out(p, "PNG to write")
    p.add_argument("--preset", default="scratch", choices=PRESETS, metavar="NAME",
                   help=f"{' | '.join(PRESETS)} (default scratch)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field, e.g. "
                   "augment.jpeg_p=1 (as amf train)")
    p.add_argument("--views", type=positive_int, default=7, help="augmented views per patch (default 7)")
    p.add_argument("--seed", type=int, default=0)


def augment(args: argparse.Namespace) -> None:
    check_data(args)
    checks.output_file(args.out)
    from training import augment_sample, recipe

    try:
        chosen = recipe.PRESETS[args.preset].with_overrides(args.set or [])
    except ValueError as exc:  # the recipe's checks name the valid fields
        raise InputError(exc) from None
    augment_sample.run(args, chosen)


def data_args(p: argparse.ArgumentParser) -> None:
    add_data(p, split_help="count only this split's rows (the figures it holds out are still compared)")
    p.add_argument("--out", type=Path, metavar="DIR", help="also write DIR/data.json (the table and every duplicate)")


def data(args: argparse.Namespace) -> None:
    check_data(args)
    if args.out is not None:
        checks.output_folder(args.out)
    from training import data_report

    data_report.run(args)


def curves_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, metavar="RUN", help="run folder (one sub-folder per fold), or one fold folder")
    p.add_argument("--out", type=Path, help="PNG to write (default RUN/curves.png)")


def curves(args: argparse.Namespace) -> None:
    if args.out is not None:
        checks.output_file(args.out)
    from training import curves

    curves.run(args)


COMMANDS: dict[str, tuple[Callable, Callable, str, str]] = {
    # name: (arguments, implementation, one-line help, description)
    "data": (data_args, data, "what the data options select, per dataset and domain, and the figures shown twice",
             "Per dataset and domain: rows, atypical, slides, votes known, patches cropped or padded to 128x128; "
             "then the figures found twice, within a dataset or across two (same slide and position within 8 px, "
             "or the same pixels at the centre), and the search's time. Rows repeated exactly are dropped with a "
             "count. --out DIR writes DIR/data.json."),
    "train": (train_args, train, "cross-validated training of a recipe (Lightning)",
              "Train every fold of a recipe (leave one domain out, or slide-grouped k-fold); seed 001's multi-task "
              "network by default. Each fold writes <out>/<fold>/: Lightning checkpoints every epoch, metrics.csv, "
              "and model.safetensors + config.json when it finishes."),
    "curves": (curves_args, curves, "draw a run's learning curves (PNG) and print its per-fold table",
               "Per fold, from metrics.csv (also while it trains): validation balanced accuracy of the raw and the "
               "averaged weights with the selected epoch, and the losses; the table gives the best and selected "
               "epochs and the mean of the selected scores."),
    "pick": (pick_args, pick, "keep per fold the run whose model scores best on its validation part",
             "For runs of the same folds: copy each fold's model with the highest validation balanced accuracy "
             "(threshold 0.5) to OUT/<fold>/; OUT/selection.json records every candidate."),
    "calibrate": (calibrate_args, calibrate, "choose the decision threshold, vote and TTA on the validation parts",
                  "Each fold model predicts its own validation part, never the test split; one threshold shared "
                  "by all folds, the grid value that maximises the mean validation balanced accuracy; the vote "
                  "rule scored on each fold's own members (several runs of the same folds). Several sources of "
                  "the same folds (runs, exported ensembles) are also compared: each alone, all together and the "
                  "better per fold, and the first is replaced only by a gain of at least 0.005 mean validation BA. "
                  "Writes calibration.json in each run folder (and --out); --write also puts the threshold into "
                  "every config.json."),
    "evaluate": (evaluate_args, evaluate, "score fold checkpoints or an exported ensemble on a labelled manifest",
                 "Balanced accuracy (95 % bootstrap interval), sensitivity, specificity and AUROC, overall and per "
                 "domain, for each fold model and their vote (runtime/vote.py, with runtime/tta.py's TTA); "
                 "an exported ensemble runs as in the container. report.html adds the plots and the vote's most "
                 "confident errors per domain."),
    "export": (export_args, export, "export fold checkpoints as the container's int8 ONNX ensemble",
               "Fold checkpoints -> pruned networks -> one ONNX graph -> int8 (static, calibrated on the "
               "manifest's training split) -> accuracy guard and parity -> ensemble.onnx + ensemble.json."),
    "predict": (predict_args, predict, "predict folders, manifests or stacks with an exported ensemble (CSV)",
                "The container's ensemble on many patches or stacks in one process, with a progress line. "
                "Exit codes as process.py: 0 done, 2 input error, 3 output not writable, 4 model error."),
    "augment": (augment_args, augment, "draw a recipe's training augmentation on real patches (PNG)",
                "Per domain, an atypical and a normal patch as read, then augmented views drawn as in training, "
                "with the generated mask's outline following the geometry (as in docs/augment-strong.png)."),
    "masks": (masks_args, masks, "draw a sample of the built-in generator's masks (PNG)",
              "Per domain, a row of atypical then normal patches with their generated mask outlined "
              "(red = atypical, green = normal), as in docs/masks.png."),
}


USAGE = """Atypical vs normal mitotic figures: train, choose, evaluate, export and run the fold ensemble.

commands:
{commands}

a typical path (M = a manifest; the shipped model's whole schedule: scripts/reproduce_default.sh):
  amf data --manifest M --split train
  amf train --manifest M --split train --preset scratch --epochs 25 --out runs/X
  amf curves runs/X
  amf calibrate runs/X --manifest M --split train --tta auto
  amf evaluate runs/X --manifest M --split test --out reports/X
  amf export runs/X --manifest M --out weights
  amf predict FOLDER_CSV_OR_STACK --out predictions.csv --weights weights

several datasets: repeat the data options, e.g. --manifest A --format amibr --manifest B --format midog25
(domains become dataset:domain; amf train refuses a figure that two of them share across a held-out part)

`amf COMMAND --help` lists a command's options; the data options (--manifest --format --root --name
--domain-column --columns --split), --out, --tta MODE, --vote RULE, --batch-size, --device and --weights mean the
same in every command."""


def build_parser() -> argparse.ArgumentParser:
    commands = "\n".join(f"  {name:<10} {summary}" for name, (_, _, summary, _) in COMMANDS.items())
    parser = Parser(prog="amf", description=USAGE.format(commands=commands),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"amf-mtl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of the commands above")
    for name, (arguments, implementation, summary, description) in COMMANDS.items():
        p = sub.add_parser(name, description=f"{summary[0].upper()}{summary[1:]}. {description}")
        arguments(p)
        p.set_defaults(implementation=implementation)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # amf train --jobs: its children's arguments
    try:
        return args.implementation(args) or 0
    except ModuleNotFoundError as exc:
        # a module of the train extra, or any import while one of its packages is missing (not installed, its
        # modules cannot be named)
        missing = checks.train_package_of((exc.name or "").partition(".")[0]) or checks.missing_train_package()
        if missing is None:
            raise
        error: AmfError = checks.needs_train_extra(missing)
    except AmfError as exc:  # runtime/errors.py's kinds, raised where the problem is found
        error = exc
    except OSError as exc:  # mid-work: the disk is full, or the file system read-only
        if exc.errno not in FULL_OR_READ_ONLY:
            raise
        error = OutputError(f"{exc.filename or getattr(args, 'out', None) or 'the output'}: {exc.strerror}")
    print(f"amf {args.command}: error: {error}", file=sys.stderr)
    return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
