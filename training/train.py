"""Cross-validated training of any recipe (Lightning): seed 001's multi-task network by default.

    amf train --manifest ../shared/data/amibr/manifest.csv --split train --preset seed001 --out runs/amibr-seed001

Folds: leave one domain out (``cv=lodo``; validation = that domain) or slide-grouped stratified k-fold
(``cv=slide-kfold``). Each fold writes ``<out>/<fold>/``: Lightning checkpoints every epoch
(``ckpt/last.ckpt``, ``ckpt/best.ckpt``), ``metrics.csv`` (per-epoch losses, BA, AUROC, patches/s), and,
when the fold finishes, ``model.safetensors`` + ``config.json`` (see checkpoint.py; LoRA merged). The loss is the
sum of the recipe's terms (terms.py). With ``--set weight_averaging=ema`` the averaged weights are validated too
(``val_avg/*``) and selection picks the better of raw and averaged each epoch (averaging.py: ``select/score``,
``select/ema``; ``selected_weights`` in config.json).
The run folder's ``curves.png`` (curves.py, ``amf curves``) is redrawn as each fold finishes.
Before any training the overlap guard (guard.py) refuses a figure held out, by ``--split`` or by a fold, that comes
back into training from its own dataset or another (``--drop-overlap``, ``--allow-overlap``), and the pre-flight
(preflight.py) refuses a run that cannot start, before anything is written; the run folder records the rows it
trains on (``training-rows.csv``, ``training-fingerprints.npy``) for ``amf evaluate``'s warning. A fold's folder is
its name made safe for file systems (run_files.py: ``val-amibr:tupac16`` -> ``val-amibr_tupac16``).
``--resume`` skips finished folds and continues an interrupted one from ``ckpt/last.ckpt``. ``--init RUN``
starts each fold from the same fold's weights in an earlier run (continued training or fine-tuning).
CPU runs use channels_last and bf16 autocast where the CPU has native bf16, else fp32 (device.py); GPUs use AMP;
several GPUs use Lightning's DDP.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from training import curves
from training.augment import augment, mixup
from training.averaging import RawOrAverage, averaged_copy
from training.checkpoint import init_weights, load_weights_only, save_checkpoint
from training.choices import ACCELERATORS, MASK_CACHE
from training.cluster import RankReport, StopOnSignal, environment_plugins
from training.data import PatchSet, load_every_row
from training.device import default_precision, on_gpu
from training.folds import Fold, fold_at, make_folds, select_folds
from training.guard import guard, record_training_rows
from training.losses import inverse_frequency_weights, soft_targets
from training.masks import GENERATOR_VERSION, external_masks, generate_masks
from training.network import build_network, has_decoders, to_input
from training.preflight import check_run, fold_rows
from training.progress import progress_callbacks
from training.recipe import Recipe
from training.resume import ExactResume
from training.run_files import (
    CHECKPOINT_FOLDER,
    CURVES_FILE,
    EARLIER_METRICS,
    LAST_CHECKPOINT,
    METRICS_FILE,
    WEIGHTS_FILE,
    fold_folder,
    fold_weights,
)
from training.run_lock import claim_folds, write_once
from training.sampling import make_loader
from training.side_by_side import train_side_by_side
from training.terms import STATE_NAMES, Targets, loss_terms, weighted_losses
from training.validation_epoch import ValidationEpoch


class MitosisTask(L.LightningModule):
    """A network from :func:`build_network` with the recipe's loss terms (terms.py), augmentation and validation.

    Build: the network, its task terms (validated too) and the training-only terms on its embedding, and with
    ``weight_averaging=ema`` an averaged copy (``averaged``) that the callback the task brings (averaging.py)
    updates, validates and selects from. Step: augment, MixUp, forward, the weighted sum of the terms. Validate:
    each validated network's losses per batch, its BA and AUROC per epoch (validation_epoch.py: each patch once over the
    processes of DDP). The training-only heads live here, not in the network, so that exports hold the network alone.
    """

    def __init__(self, recipe: dict, class_weights: tuple[float, float], steps_per_epoch: int,
                 n_domains: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.recipe = Recipe.from_dict(recipe)
        self.steps_per_epoch = steps_per_epoch
        self.net = build_network(self.recipe.network, train=True).to(memory_format=torch.channels_last)
        self.decoders = has_decoders(self.recipe.network)
        self.task_terms, self.embedding_terms = loss_terms(self.recipe, class_weights, self.net.embed_dim, n_domains)
        for t in self.task_terms + self.embedding_terms:
            if isinstance(t.term, nn.Module):  # trained by the optimizer, kept in checkpoints
                self.add_module(STATE_NAMES[t.name], t.term)
        self.averaged = averaged_copy(self.net, self.recipe)
        self.validation = ValidationEpoch()

    @staticmethod
    def to_input(images: torch.Tensor) -> torch.Tensor:
        """uint8 [N,H,W,3] -> float [N,3,H,W] in [0,1], channels_last memory."""
        return to_input(images).contiguous(memory_format=torch.channels_last)

    def targets(self, labels: torch.Tensor, votes: torch.Tensor) -> torch.Tensor:
        return soft_targets(labels, votes, self.recipe.soft_labels) if self.recipe.soft_labels else labels

    def progress(self) -> float:
        return self.global_step / max(1, self.recipe.epochs * self.steps_per_epoch)

    def training_step(self, batch: tuple, batch_idx: int) -> dict[str, torch.Tensor]:
        images, pix, labels, votes, domains, _ = batch
        r = self.recipe
        x, pix = augment(self.to_input(images), pix if self.decoders else None, r.augment)
        target = self.targets(labels, votes)
        if r.mixup_alpha:
            x, target = mixup(x, target, r.mixup_alpha)
        out = self.net(x.contiguous(memory_format=torch.channels_last))
        targets = Targets(target, pix, labels, domains, self.progress())
        losses = weighted_losses(self.task_terms + self.embedding_terms, out, targets)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, on_step=False, on_epoch=True,
                      batch_size=len(labels), sync_dist=True)
        # the logit and target, for the domain-aware sampler's feedback (sampling.SamplerFeedback)
        return {"loss": losses["loss"], "logit": out["logit"].detach(), "target": target}

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self.validate(self.net, "val", batch)

    def validate(self, net: nn.Module, prefix: str, batch: tuple) -> None:
        """Logs ``net``'s task losses under ``prefix`` (val, val_avg) and keeps its probabilities for the epoch."""
        images, pix, labels, votes, domains, index = batch
        out = net(self.to_input(images))
        targets = Targets(self.targets(labels, votes), pix, labels, domains, self.progress())
        losses = weighted_losses(self.task_terms, out, targets)
        self.log_dict({f"{prefix}/{k}": v for k, v in losses.items()}, on_epoch=True, batch_size=len(labels),
                      sync_dist=True)
        self.validation.add(prefix, torch.sigmoid(out["logit"].float()), losses["loss"], labels, index)

    def on_validation_epoch_start(self) -> None:
        self.validation = ValidationEpoch()

    def on_validation_epoch_end(self) -> None:
        for prefix, scores in self.validation.scores(self).items():
            self.log_dict({f"{prefix}/ba": scores["ba"], f"{prefix}/auroc": scores["auroc"]}, sync_dist=False)

    def configure_callbacks(self) -> list[Callback]:
        return [RawOrAverage(self.recipe)] if self.averaged is not None else []

    def configure_optimizers(self):
        r = self.recipe
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)
        if r.schedule == "constant":
            return opt
        if r.schedule == "plateau":
            monitor, mode = r.selection()
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=3, min_lr=1e-7)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": monitor, "interval": "epoch"}}
        total = max(1, r.epochs * self.steps_per_epoch)  # cosine, after a linear warm-up
        warm = int(r.warmup_epochs * self.steps_per_epoch)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Throughput(Callback):
    """Logs training patches/s and epoch wall time into metrics.csv. An epoch this process did not train logs
    nothing: a resume with a step limit from the checkpoint saved at an epoch's end runs only that epoch's end
    hooks again."""

    def __init__(self) -> None:
        self._start, self._seen = 0.0, 0

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start, self._seen = time.perf_counter(), 0  # a resume inside an epoch has no epoch start

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start, self._seen = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._seen += len(batch[2])

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._seen:
            dt = time.perf_counter() - self._start
            module.log_dict({"perf/train_patches_per_s": self._seen / dt, "perf/train_epoch_s": dt})


def tensors(ps: PatchSet, masks: np.ndarray | None, domain_ids: np.ndarray) -> TensorDataset:
    """uint8 images, pixel-class targets (0 background, 1 normal, 2 atypical; a 1x1 placeholder without
    masks), float labels, vote fractions (NaN where unknown), domain ids, row indices."""
    if masks is None:
        pix = np.zeros((len(ps), 1, 1), np.uint8)
    else:
        pix = masks.astype(np.uint8) * (1 + ps.labels[:, None, None]).astype(np.uint8)
    votes = ps.votes if ps.votes is not None else np.full(len(ps), np.nan, np.float32)
    return TensorDataset(torch.from_numpy(ps.images), torch.from_numpy(pix),
                         torch.from_numpy(ps.labels.astype(np.float32)), torch.from_numpy(votes.astype(np.float32)),
                         torch.from_numpy(domain_ids.astype(np.int64)), torch.arange(len(ps)))


@dataclass(frozen=True)
class RunOptions:
    """How the folds of a run are trained (what they learn is the recipe's). ``init``: a run folder whose
    same-named fold (or a fold folder / weights file) each network starts from; ``mask_source`` is recorded in
    config.json."""

    accelerator: str = "auto"  # Lightning's: auto | cpu | gpu
    devices: str | int = "auto"
    num_nodes: int = 1  # srun's nodes of one DDP job (cluster.py)
    precision: str | None = None  # default: device.default_precision()
    resume: bool = False
    init: Path | None = None
    max_steps: int = -1
    limit_val_batches: float | int = 1.0
    mask_source: str = GENERATOR_VERSION
    allow_overlap: bool = False  # --allow-overlap: recorded in config.json


def checkpoints(folder: Path, monitor: str, mode: str) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """``best.ckpt`` (the selection) and ``last.ckpt``, written after every epoch whether or not the selection
    improved (Lightning's ``save_last`` writes it only when ``best`` is written): ``--resume`` starts there."""
    best = ModelCheckpoint(folder, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                           enable_version_counter=False)
    latest = ModelCheckpoint(folder, filename="last", save_top_k=1, enable_version_counter=False)
    return best, latest


def train_fold(fold: Fold, data: PatchSet, masks: np.ndarray | None, recipe: Recipe, out: Path,
               options: RunOptions = RunOptions(), exclude: np.ndarray | None = None) -> Path:
    """Train one fold; returns its folder (with model.safetensors + config.json). ``exclude``: rows kept out of
    its training part (``--drop-overlap``: they show figures of its held-out part)."""
    folder = fold_folder(out, fold.name)
    train_rows, val_rows = fold_rows(fold, data, exclude)
    train, val = data.subset(train_rows), data.subset(val_rows)
    class_weights = inverse_frequency_weights(train.labels)
    domains = sorted(set(train.domains))  # the domain head's classes (validation ids are never used)
    train_set, val_set = (tensors(ps, None if masks is None else masks[rows], domain_ids(ps, domains))
                          for ps, rows in ((train, train_rows), (val, val_rows)))
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    loader, sampler_callbacks = make_loader(train, train_set, recipe, class_weights,
                                            torch.Generator().manual_seed(recipe.seed))
    exact = ExactResume(loader)  # --resume continues as if never stopped, also inside an epoch
    loader = exact.loader
    module = MitosisTask(recipe.to_dict(), class_weights, len(loader), len(domains))
    last = folder / CHECKPOINT_FOLDER / LAST_CHECKPOINT
    resuming = options.resume and last.is_file()  # decided once: then the fold continues from last.ckpt
    init_file = fold_weights(options.init, fold.name) if options.init is not None else None
    if init_file is not None and not resuming:
        fresh = init_weights(module.net, init_file)
        print(f"[{fold.name}] starting from {init_file}" + (f"; {len(fresh)} tensors fresh" if fresh else ""))
    trainer, best = fold_trainer(folder, fold.name, recipe, options, [
        *sampler_callbacks, exact, StopOnSignal(fold.name, last), RankReport(fold.name)])  # SLURM's USR1, TERM
    fit(trainer, module, (loader, DataLoader(val_set, 64)), folder, last if resuming else None)
    if trainer.global_rank != 0:  # rank 0 writes the fold's files
        return folder
    config = save_selected(folder, module, best, last, {
        "fold": fold.to_dict(), "recipe": recipe.to_dict(), "class_weights": class_weights, "threshold": 0.5,
        "masks": options.mask_source if has_decoders(recipe.network) else None,
        "init": str(init_file) if init_file is not None else None,
        "data": {"train": int(len(train)), "val": int(len(val)),
                 "train_atypical": int(train.labels.sum()), "val_atypical": int(val.labels.sum())},
        **({"allow_overlap": True} if options.allow_overlap else {}),
        **({"overlap_dropped": int(len(exclude))} if exclude is not None else {})})
    print(f"[{fold.name}] selected epoch {config['selected_epoch']}, {config['selected_weights']} weights "
          f"({config['selected_on']} = {config['selected_score']})")
    try:  # the run's picture, redrawn per fold; folds training beside it may be writing their metrics.csv
        curves.plot(curves.read_run(out), out / CURVES_FILE, str(out))
    except (ValueError, KeyError) as exc:
        print(f"[{fold.name}] {CURVES_FILE} not redrawn ({exc}); amf curves {out} draws it")
    return folder


def domain_ids(ps: PatchSet, domains: list[str]) -> np.ndarray:
    """Each patch's index in ``domains`` (sorted; a domain not among them gets a neighbour's, never used)."""
    return np.searchsorted(domains, ps.domains).clip(0, len(domains) - 1)


def fold_trainer(folder: Path, name: str, recipe: Recipe, options: RunOptions,
                 callbacks: list[Callback]) -> tuple[L.Trainer, ModelCheckpoint]:
    """Lightning's trainer for the fold in ``folder``, and its callback that keeps the selected epoch."""
    monitor, mode = recipe.selection()
    best, latest = checkpoints(folder / CHECKPOINT_FOLDER, monitor, mode)
    callbacks = [best, latest, Throughput(), *progress_callbacks(name), *callbacks]  # a log gets plain lines, no bar
    if recipe.early_stopping:
        # strict=False: --max-steps may end a fold before any validation
        callbacks.append(EarlyStopping(monitor, patience=recipe.early_stopping, mode=mode, strict=False))
    gpu = on_gpu(options.accelerator)
    trainer = L.Trainer(
        max_epochs=recipe.epochs, max_steps=options.max_steps, accelerator=options.accelerator,
        devices=options.devices, num_nodes=options.num_nodes, plugins=environment_plugins(), default_root_dir=folder,
        precision=options.precision or default_precision(gpu),
        deterministic="warn" if gpu else True, logger=CSVLogger(folder, name="", version=""), callbacks=callbacks,
        num_sanity_val_steps=0, limit_val_batches=options.limit_val_batches, log_every_n_steps=10,
        enable_progress_bar=True, enable_model_summary=False,
    )
    return trainer, best


def fit(trainer: L.Trainer, module: MitosisTask, loaders: tuple[DataLoader, DataLoader], folder: Path,
        checkpoint: Path | None) -> None:
    """Lightning's fit on the (training, validation) ``loaders``, continued from ``checkpoint`` where given. The
    fold's ``metrics.csv`` keeps the epochs of earlier sessions: Lightning's CSV logger starts it afresh, so they wait
    in ``EARLIER_METRICS`` meanwhile."""
    if checkpoint is not None and trainer.global_rank == 0:
        print(f"[{folder.name}] resuming from {checkpoint}", flush=True)
        _append_metrics(folder / METRICS_FILE, folder / EARLIER_METRICS)
    trainer.fit(module, *loaders, ckpt_path=checkpoint, weights_only=True)
    if trainer.global_rank == 0 and (folder / EARLIER_METRICS).is_file():  # one metrics.csv, in order
        _append_metrics(folder / METRICS_FILE, folder / EARLIER_METRICS)
        (folder / EARLIER_METRICS).rename(folder / METRICS_FILE)


def save_selected(folder: Path, module: MitosisTask, best: ModelCheckpoint, last: Path, about: dict) -> dict:
    """Writes the fold's model.safetensors, the weights that won at the selected epoch (raw or averaged; LoRA
    merged), and config.json: ``about`` and the selection, which it returns. The selected epoch is best.ckpt's, or
    the last one where none was validated (``selected_score`` None; else the selection metric's value there)."""
    state = load_weights_only(best.best_model_path or last)
    module.load_state_dict(state["state_dict"])
    weights = state.get("selected_weights", "raw")
    net = module.averaged.module if weights == "ema" else module.net
    net = net.merged() if hasattr(net, "merged") else net
    score = float(best.best_model_score) if best.best_model_score is not None else None
    config = {**about, "selected_epoch": int(state["epoch"]), "selected_on": best.monitor,
              "selected_weights": weights, "selected_score": score}
    save_checkpoint(folder, net.float(), config)
    return config


def _append_metrics(source: Path, target: Path) -> None:
    """Append the rows of ``source`` (then removed) to ``target``, over the union of their columns."""
    if not source.is_file():
        return
    tables = [list(csv.DictReader(f.open())) for f in (target, source) if f.is_file()]
    columns = list(dict.fromkeys(c for rows in tables for row in rows[:1] for c in row))
    with target.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(row for rows in tables for row in rows)
    source.unlink()




def only_epochs_differ(earlier: dict, recipe: dict) -> bool:
    """Whether two recipes differ in their number of epochs only (``--resume --epochs N`` continues a run longer)."""
    return {**earlier, "epochs": recipe["epochs"]} == recipe


def run(args: argparse.Namespace, recipe: Recipe) -> int:
    """``amf train`` (cli/main.py parses the arguments and builds ``recipe`` with ``recipe.build_recipe``); the exit
    status: 0, or 1 when a fold trained side by side (``--jobs``) failed."""
    everything, chosen = load_every_row(args.data, args.split)
    data = everything.subset(np.flatnonzero(chosen))
    domains = ", ".join(sorted(set(map(str, data.domains))))
    print(f"{len(data)} patches, {int(data.labels.sum())} atypical, domains {domains}; "
          f"{torch.get_num_threads()} CPU threads")
    folds = make_folds(recipe.cv, data.domains, data.labels, data.slides, n_splits=recipe.n_splits,
                       hold_out_test=args.hold_out_test, seed=recipe.seed)
    if args.folds:
        folds = select_folds(folds, args.folds.split(","))
    if args.fold_index is not None:  # one fold per SLURM array task
        folds = fold_at(folds, args.fold_index)
    if args.resume:  # a fold with its final weights is done
        for fold in (f for f in folds if (fold_folder(args.out, f.name) / WEIGHTS_FILE).is_file()):
            print(f"[{fold.name}] finished earlier, skipped")
        folds = [f for f in folds if not (fold_folder(args.out, f.name) / WEIGHTS_FILE).is_file()]
    # figures shown twice (within a dataset or across two) across a held-out part: refused unless dropped or allowed
    guarded = guard(everything, chosen, folds, drop=args.drop_overlap, allow=args.allow_overlap)
    data = guarded.data
    check_run(folds, data, recipe, guarded.exclude, args.out, resume=args.resume, init=args.init)  # writes nothing
    masks = None
    if has_decoders(recipe.network) and folds:
        masks = (external_masks(args.masks, data, args.data) if args.masks
                 else generate_masks(data.images, args.cache or MASK_CACHE))
    args.out.mkdir(parents=True, exist_ok=True)
    # written once (or refused: another run's); --resume may lengthen the schedule and nothing else
    content = json.dumps(recipe.to_dict(), indent=2)
    write_once(args.out / "recipe.json", content.encode(),
               replaces=lambda earlier: args.resume and only_epochs_differ(json.loads(earlier), json.loads(content)))
    record_training_rows(args.out, data)
    options = RunOptions(
        accelerator=ACCELERATORS[args.device], devices=args.devices, precision=args.precision, resume=args.resume,
        init=args.init, max_steps=args.max_steps, num_nodes=args.num_nodes,
        limit_val_batches=int(args.limit_val_batches) if args.limit_val_batches > 1 else args.limit_val_batches,
        mask_source=f"external:{args.masks}" if args.masks else GENERATOR_VERSION, allow_overlap=args.allow_overlap)
    if args.jobs > 1 and len(folds) > 1:  # the masks are in the cache now: the children read them from there
        return train_side_by_side(args.argv, args.out, [f.name for f in folds], args.jobs)
    with claim_folds(args.out, [f.name for f in folds]):  # one writer per fold: a second amf train is refused
        for fold in folds:
            train_fold(fold, data, masks, recipe, args.out, options, guarded.exclude.get(fold.name))
    return 0
