"""The names and defaults of ``amf``'s options, written once.

Torch-free and import-free (the standard library only): cli/ parses every command with these lists before torch
loads, and the training side takes its lists and defaults from here.
"""

from __future__ import annotations

# data: the manifest formats (training/data.py reads them)
AMIBR, MIDOG25, CSV_FORMAT, FOLDERS = "amibr", "midog25", "csv", "folders"
FORMATS = (AMIBR, MIDOG25, CSV_FORMAT, FOLDERS)

# recipes (training/recipe.py defines one recipe per name, in this order)
PRESETS = ("seed001", "scratch", "scratch-strong", "seed002-efficientnetv2-m", "seed002-vit-l16", "seed002-swin-b",
           "uni-linear", "uni-lora", "virchow-lora", "virchow2-lora", "h-optimus-0-lora", "seed003")
SELECTIONS = {"val_loss": ("val/loss", "min"), "val_ba": ("val/ba", "max")}  # name -> (logged metric, better)
LODO = "lodo"  # the cross-validation that holds out a domain per fold (--hold-out-test: a second one)

# where training runs: amf's --device -> Lightning's accelerator; Lightning's precision names (2.6)
ACCELERATORS = {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}
DEVICES = tuple(ACCELERATORS)
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16", "bf16-true", "16-true", "64-true", "64",
              "transformer-engine", "transformer-engine-float16")
INFERENCE_BATCH = 64  # PyTorch inference batch of evaluate, calibrate and pick
MASK_CACHE = "cache"  # amf train: where the built-in mask generator keeps its masks unless --cache says
GALLERY = 6  # amf evaluate: the vote's most confident errors per domain in report.html

# export: int8 quantisation, and the static calibration chosen on the validation parts (docs/calibration.md)
QUANTIZE_MODES = ("static", "weights")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
CALIBRATION_METHOD, CALIBRATION_PATCHES = "minmax", 256

AUTO = "auto"  # --tta auto / --vote auto: the command chooses on the validation parts
