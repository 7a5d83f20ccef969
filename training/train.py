"""Cross-validated training of any recipe (Lightning): seed 001's multi-task network by default.

    amf train --manifest ../shared/data/amibr/manifest.csv --split train --preset seed001 --out runs/amibr-seed001

Folds: leave one domain out (``cv=lodo``; validation = that domain) or slide-grouped stratified k-fold
(``cv=slide-kfold``). Each fold writes ``<out>/<fold>/``: Lightning checkpoints every epoch
(``ckpt/last.ckpt``, ``ckpt/best.ckpt``), ``metrics.csv`` (per-epoch losses, BA, AUROC, patches/s), and,
when the fold finishes, ``model.safetensors`` + ``config.json`` (see checkpoint.py; LoRA merged). With
``--set weight_averaging=ema`` the averaged weights are validated too (``val_avg/*``) and selection picks
the better of raw and averaged each epoch (``select/score``, ``select/ema``; ``selected_weights`` in config.json).
The run folder's ``curves.png`` (curves.py, ``amf curves``) is redrawn as each fold finishes.
Several datasets (the data options repeated): before any training the overlap guard (guard.py) refuses a figure
held out of one dataset, by ``--split`` or by a fold, that another brings into training (``--drop-overlap``,
``--allow-overlap``); the run folder records the rows it trains on (``training-rows.csv``,
``training-fingerprints.npy``) for ``amf evaluate``'s warning.
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
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from runtime.errors import InputError
from training import curves
from training.augment import augment, mixup
from training.checkpoint import init_weights, load_weights_only, save_checkpoint
from training.data import ManifestError, PatchSet, concat, load_sources, select
from training.device import ACCELERATORS, default_precision, on_gpu
from training.folds import Fold, make_folds, select_folds
from training.guard import Guarded, guard, record_training_rows
from training.heads import DomainHead, ProjectionHead, dann_schedule
from training.losses import (
    AdaptiveFocalLoss,
    SupConLoss,
    binary_dice_loss,
    inverse_frequency_weights,
    multiclass_dice_loss,
    soft_targets,
    weighted_bce,
)
from training.masks import GENERATOR_VERSION, external_masks, generate_masks
from training.network import build_network, has_decoders, to_input
from training.progress import progress_callbacks
from training.recipe import Recipe
from training.run_files import CURVES_FILE, EARLIER_METRICS, METRICS_FILE, WEIGHTS_FILE
from training.sampling import DomainAwareSampler, make_loader
from training.side_by_side import train_side_by_side


def ema_update(decay: float, warmup: bool):
    """AveragedModel's update, ``ema = d * ema + (1 - d) * current`` (torch's EMA). With ``warmup`` the decay grows
    with the updates so far, ``d = min(decay, (1 + n) / (10 + n))`` (the ``num_updates`` rule of TensorFlow's
    ExponentialMovingAverage): the average forgets the random start within the first epochs instead of carrying
    it for ~1/(1 - decay) steps."""
    if not warmup:
        return get_ema_multi_avg_fn(decay)

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        get_ema_multi_avg_fn(min(decay, (1 + int(n)) / (10 + int(n))))(averaged, current, n)

    return update


class MitosisTask(L.LightningModule):
    """Wraps a network from :func:`build_network` with the recipe's losses, augmentation and metrics.

    Loss = classification (class-weighted BCE or adaptive focal, on hard or vote-softened targets, MixUp
    optional) + Dice + Dice (decoders) + supervised contrastive (projection of the embedding) + domain
    adversarial (gradient reversal). The projection and domain heads live here, not in the network, so
    checkpoints and exports hold the network alone. With ``weight_averaging=ema`` an averaged copy of the
    network (``averaged.module``) is updated after every optimizer step and validated beside the raw one.

    Several processes (DDP): the validation probabilities, labels and row indices of every rank are gathered, and
    BA and AUROC count each patch once (DistributedSampler pads the validation set to a multiple of the process
    count by repeating up to W - 1 patches); the logged losses are Lightning's batch-size-weighted means over all
    ranks, padding included (off by at most W - 1 of N patches). Domain-aware sampling feeds every rank's
    per-sample losses to every rank's sampler, so that all ranks draw the same epoch list, which Lightning's
    distributed wrapper then splits between them.
    """

    def __init__(self, recipe: dict, class_weights: tuple[float, float], steps_per_epoch: int,
                 n_domains: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.recipe = Recipe.from_dict(recipe)
        r = self.recipe
        self.class_weights = tuple(class_weights) if r.class_weighted else (1.0, 1.0)
        self.steps_per_epoch = steps_per_epoch
        self.net = build_network(r.network, train=True).to(memory_format=torch.channels_last)
        self.decoders = has_decoders(r.network)
        self.focal = AdaptiveFocalLoss(self.class_weights, r.focal_gamma) if r.loss == "focal" else None
        dim = self.net.embed_dim
        self.projection = ProjectionHead(dim) if r.supcon_weight else None
        self.supcon = SupConLoss(r.supcon_temperature) if r.supcon_weight else None
        self.domain_head = DomainHead(dim, n_domains) if r.domain_adversarial else None
        self.sampler: DomainAwareSampler | None = None  # set by train_fold for domain-aware sampling
        # EMA of the parameters AND the buffers (BatchNorm running statistics), in fp32 like the net's
        # parameters (autocast leaves them fp32); frozen so the optimizer skips it; a submodule, so it is in the
        # Lightning checkpoints and --resume continues it. torch._foreach_lerp_ updates all tensors at once.
        self.averaged = AveragedModel(self.net, multi_avg_fn=ema_update(r.ema_decay, r.ema_warmup),
                                      use_buffers=True).requires_grad_(False) if r.weight_averaging == "ema" else None
        self.selected_weights = "raw"  # which weights won the latest validation: raw | ema
        self._val_probs: dict[str, list[torch.Tensor]] = {}  # per metric prefix: val (raw), val_avg (averaged)
        self._val_losses: dict[str, list[torch.Tensor]] = {}  # batch loss x batch size
        self._val_labels: list[torch.Tensor] = []
        self._val_index: list[torch.Tensor] = []  # row indices: the padding repeats of DistributedSampler

    @staticmethod
    def to_input(images: torch.Tensor) -> torch.Tensor:
        """uint8 [N,H,W,3] -> float [N,3,H,W] in [0,1], channels_last memory."""
        return to_input(images).contiguous(memory_format=torch.channels_last)

    def targets(self, labels: torch.Tensor, votes: torch.Tensor) -> torch.Tensor:
        return soft_targets(labels, votes, self.recipe.soft_labels) if self.recipe.soft_labels else labels

    def classification_loss(self, logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.focal is not None:
            return self.focal(logit, target)
        return weighted_bce(logit, target, self.class_weights)

    def losses(self, out: dict, target: torch.Tensor, pix: torch.Tensor) -> dict[str, torch.Tensor]:
        w_cls, w_seg, w_pix = self.recipe.loss_weights
        parts = {"cls": self.classification_loss(out["logit"], target)}
        total = w_cls * parts["cls"]
        if self.decoders:
            parts["dice_seg"] = binary_dice_loss(out["seg"], pix > 0)
            parts["dice_pix"] = multiclass_dice_loss(out["pix"], pix)
            total = total + w_seg * parts["dice_seg"] + w_pix * parts["dice_pix"]
        parts["loss"] = total
        return parts

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        images, pix, labels, votes, domains, index = batch
        r = self.recipe
        x, pix = augment(self.to_input(images), pix if self.decoders else None, r.augment)
        target = self.targets(labels, votes)
        if r.mixup_alpha:
            x, target = mixup(x, target, r.mixup_alpha)
        out = self.net(x.contiguous(memory_format=torch.channels_last))
        parts = self.losses(out, target, pix)
        if self.supcon is not None:
            parts["supcon"] = self.supcon(self.projection(out["embedding"].float()), labels.long())
            parts["loss"] = parts["loss"] + r.supcon_weight * parts["supcon"]
        if self.domain_head is not None:
            progress = self.global_step / max(1, r.epochs * self.steps_per_epoch)
            domain_logits = self.domain_head(out["embedding"].float(), dann_schedule(progress))
            parts["domain"] = F.cross_entropy(domain_logits, domains)
            parts["loss"] = parts["loss"] + r.domain_adversarial * parts["domain"]
        if self.sampler is not None:
            logit = out["logit"].float().detach()
            per_sample = F.binary_cross_entropy_with_logits(logit, target.float(), reduction="none")
            # all ranks' losses (in rank order), so every rank's sampler keeps the same state
            self.sampler.update(self.all_gather(index).reshape(-1), self.all_gather(per_sample).reshape(-1))
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, on_step=False, on_epoch=True,
                      batch_size=len(labels), sync_dist=True)
        return parts["loss"]

    def on_train_batch_end(self, outputs, batch: tuple, batch_idx: int) -> None:
        if self.averaged is not None:
            self.averaged.update_parameters(self.net)

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        images, pix, labels, votes, _, index = batch
        x, target = self.to_input(images), self.targets(labels, votes)
        nets = {"val": self.net, **({"val_avg": self.averaged.module} if self.averaged is not None else {})}
        for prefix, net in nets.items():
            out = net(x)
            parts = self.losses(out, target, pix)
            self.log_dict({f"{prefix}/{k}": v for k, v in parts.items()}, on_epoch=True, batch_size=len(labels),
                          sync_dist=True)
            self._val_probs.setdefault(prefix, []).append(torch.sigmoid(out["logit"].float()).detach())
            if self.averaged is not None:
                self._val_losses.setdefault(prefix, []).append(parts["loss"].detach().float() * len(labels))
        self._val_labels.append(labels.detach())
        self._val_index.append(index.detach())

    def on_validation_epoch_end(self) -> None:
        index = self.all_gather(torch.cat(self._val_index)).reshape(-1).cpu().numpy()
        once = np.unique(index, return_index=True)[1]  # each patch once: DistributedSampler pads with repeats
        labels = self.all_gather(torch.cat(self._val_labels)).reshape(-1).cpu().numpy()[once] >= 0.5
        bas = {}
        for prefix, batches in self._val_probs.items():
            probs = self.all_gather(torch.cat(batches)).reshape(-1).cpu().numpy()[once]
            bas[prefix] = float(balanced_accuracy_score(labels, probs >= 0.5))
            auroc = roc_auc_score(labels, probs) if 0 < labels.sum() < len(labels) else float("nan")
            self.log_dict({f"{prefix}/ba": bas[prefix], f"{prefix}/auroc": float(auroc)}, sync_dist=False)
        if self.averaged is not None:  # the better of raw and averaged (raw on a tie)
            # the epoch's mean loss as Lightning logs it (weighted by batch size), over all processes
            scores = bas if self.recipe.select == "val_ba" else {
                prefix: self.all_gather(torch.stack(v).sum()).sum().item() / len(index)
                for prefix, v in self._val_losses.items()}
            _, mode = self.recipe.selection()
            winner = (max if mode == "max" else min)(scores, key=scores.get)
            self.selected_weights = "ema" if winner == "val_avg" else "raw"
            self.log_dict({"select/score": scores[winner], "select/ema": float(winner == "val_avg")}, sync_dist=False)
        self._val_probs.clear()
        self._val_losses.clear()
        self._val_labels.clear()
        self._val_index.clear()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["selected_weights"] = self.selected_weights  # read back by train_fold from best.ckpt

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
    resume, accelerator, devices, precision, init = (options.resume, options.accelerator, options.devices,
                                                     options.precision, options.init)
    max_steps, limit_val_batches, mask_source = options.max_steps, options.limit_val_batches, options.mask_source
    folder = out / fold.name
    train_idx, val_idx, _ = fold.indices(data.domains, data.slides)
    if exclude is not None:
        train_idx = np.setdiff1d(train_idx, exclude)
    if not len(train_idx) or not len(val_idx):  # selection needs a validation part
        raise ManifestError(f"fold {fold.name}: {len(train_idx)} training and {len(val_idx)} validation patches in "
                            f"the data (domains: {', '.join(sorted(set(data.domains)))})")
    train, val = data.subset(train_idx), data.subset(val_idx)
    weights = inverse_frequency_weights(train.labels)
    domain_names = sorted(set(train.domains))  # the domain head's classes (validation ids are never used)
    domain_id = lambda ps: np.searchsorted(domain_names, ps.domains).clip(0, len(domain_names) - 1)  # noqa: E731
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    gen = torch.Generator().manual_seed(recipe.seed)
    pick = (lambda idx: masks[idx]) if masks is not None else (lambda idx: None)  # noqa: E731
    loader, sampler = make_loader(train, tensors(train, pick(train_idx), domain_id(train)), recipe, weights, gen)
    val_loader = DataLoader(tensors(val, pick(val_idx), domain_id(val)), 64)
    module = MitosisTask(recipe.to_dict(), weights, len(loader), len(domain_names))
    module.sampler = sampler
    last = folder / "ckpt" / "last.ckpt"
    init_file = fold_weights(init, fold.name) if init is not None else None
    if init_file is not None and not (resume and last.is_file()):
        fresh = init_weights(module.net, init_file)
        print(f"[{fold.name}] starting from {init_file}" + (f"; {len(fresh)} tensors fresh" if fresh else ""))
    monitor, mode = recipe.selection()
    best, latest = checkpoints(folder / "ckpt", monitor, mode)
    callbacks = [best, latest, Throughput(), *progress_callbacks(fold.name)]  # a log gets plain lines, no bar
    if recipe.early_stopping:
        # strict=False: --max-steps may end a fold before any validation
        callbacks.append(EarlyStopping(monitor, patience=recipe.early_stopping, mode=mode, strict=False))
    gpu = on_gpu(accelerator)
    trainer = L.Trainer(
        max_epochs=recipe.epochs, max_steps=max_steps, accelerator=accelerator, devices=devices,
        precision=precision or default_precision(gpu), deterministic="warn" if gpu else True,
        logger=CSVLogger(folder, name="", version=""), callbacks=callbacks,
        num_sanity_val_steps=0, limit_val_batches=limit_val_batches, log_every_n_steps=10,
        enable_progress_bar=True, enable_model_summary=False,
    )
    resuming = resume and last.is_file()
    if resuming and trainer.global_rank == 0:  # Lightning's CSV logger starts metrics.csv afresh
        _append_metrics(folder / METRICS_FILE, folder / EARLIER_METRICS)
    trainer.fit(module, loader, val_loader, ckpt_path=last if resuming else None, weights_only=True)
    if trainer.global_rank != 0:
        return folder
    if (folder / EARLIER_METRICS).is_file():  # one metrics.csv over every resumed part, in order
        _append_metrics(folder / METRICS_FILE, folder / EARLIER_METRICS)
        (folder / EARLIER_METRICS).rename(folder / METRICS_FILE)
    state = load_weights_only(best.best_model_path or last)
    module.load_state_dict(state["state_dict"])
    chosen = state.get("selected_weights", "raw")  # the weights that won at the selected epoch
    net = module.averaged.module if chosen == "ema" else module.net
    net = net.merged() if hasattr(net, "merged") else net
    selected = {k: float(v) for k, v in trainer.callback_metrics.items()} if not best.best_model_path else None
    meta = {
        "fold": fold.to_dict(), "recipe": recipe.to_dict(), "class_weights": weights, "threshold": 0.5,
        "selected_epoch": int(state["epoch"]), "selected_on": monitor, "selected_weights": chosen,
        "masks": mask_source if has_decoders(recipe.network) else None,
        "init": str(init_file) if init_file is not None else None,
        "selected_score": float(best.best_model_score) if best.best_model_score is not None else selected,
        "data": {"train": int(len(train)), "val": int(len(val)),
                 "train_atypical": int(train.labels.sum()), "val_atypical": int(val.labels.sum())},
        **({"allow_overlap": True} if options.allow_overlap else {}),
        **({"overlap_dropped": int(len(exclude))} if exclude is not None else {}),
    }
    save_checkpoint(folder, net.float(), meta)
    print(f"[{fold.name}] selected epoch {meta['selected_epoch']}, {chosen} weights "
          f"({monitor} = {meta['selected_score']})")
    curves.plot(curves.read_run(out), out / CURVES_FILE, str(out))  # the run's picture, redrawn per fold
    return folder


def _append_metrics(source: Path, target: Path) -> None:
    """Append the rows of ``source`` (then removed) to ``target``, over the union of their columns."""
    if not source.is_file():
        return
    parts = [list(csv.DictReader(f.open())) for f in (target, source) if f.is_file()]
    columns = list(dict.fromkeys(c for rows in parts for row in rows[:1] for c in row))
    with target.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(row for rows in parts for row in rows)
    source.unlink()


def fold_weights(init: Path, fold_name: str) -> Path:
    """The weights a fold starts from: ``init/<fold>/`` when it exists, else ``init`` itself (one model for all)."""
    for candidate in (init / fold_name / WEIGHTS_FILE, init / WEIGHTS_FILE, init):
        if candidate.is_file():
            return candidate
    raise InputError(f"--init {init}: neither {init / fold_name / WEIGHTS_FILE} nor a weights file (an earlier run "
                     "folder with this fold, a fold folder or a .safetensors file)")


def run(args: argparse.Namespace, recipe: Recipe) -> int:
    """``amf train`` (cli/main.py parses the arguments and builds ``recipe`` with ``recipe.build_recipe``); the exit
    status: 0, or 1 when a fold trained side by side (``--jobs``) failed."""
    parts = load_sources(args.data)
    data, chosen = select(parts, args.split)
    domains = ", ".join(sorted(set(map(str, data.domains))))
    print(f"{len(data)} patches, {int(data.labels.sum())} atypical, domains {domains}; "
          f"{torch.get_num_threads()} CPU threads")
    folds = make_folds(recipe.cv, data.domains, data.labels, data.slides, n_splits=recipe.n_splits,
                       hold_out_test=args.hold_out_test, seed=recipe.seed)
    if args.folds:
        folds = select_folds(folds, args.folds.split(","))
    if args.resume:  # a fold with its final weights is done
        for fold in (f for f in folds if (args.out / f.name / WEIGHTS_FILE).is_file()):
            print(f"[{fold.name}] finished earlier, skipped")
        folds = [f for f in folds if not (args.out / f.name / WEIGHTS_FILE).is_file()]
    guarded = Guarded(data)
    if len(parts) > 1:  # figures two datasets share: refused unless dropped or allowed
        guarded = guard(concat(parts), chosen, folds, drop=args.drop_overlap, allow=args.allow_overlap)
        data = guarded.data
    masks = None
    if has_decoders(recipe.network) and folds:
        masks = external_masks(args.masks, data, args.data) if args.masks else generate_masks(data.images, args.cache)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
    record_training_rows(args.out, data)
    options = RunOptions(
        accelerator=ACCELERATORS[args.device], devices=args.devices, precision=args.precision, resume=args.resume,
        init=args.init, max_steps=args.max_steps,
        limit_val_batches=int(args.limit_val_batches) if args.limit_val_batches > 1 else args.limit_val_batches,
        mask_source=f"external:{args.masks}" if args.masks else GENERATOR_VERSION, allow_overlap=args.allow_overlap)
    if args.jobs > 1 and len(folds) > 1:  # the masks are in the cache now: the children read them from there
        return train_side_by_side(args.argv, args.out, [f.name for f in folds], args.jobs)
    for fold in folds:
        train_fold(fold, data, masks, recipe, args.out, options, guarded.exclude.get(fold.name))
    return 0

