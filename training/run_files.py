"""The files of a run folder and of its fold folders, named once (torch-free: ``amf curves`` reads them fast)."""

WEIGHTS_FILE = "model.safetensors"  # a finished fold's network (checkpoint.py)
CONFIG_FILE = "config.json"  # beside it: network config, recipe, fold, selection (checkpoint.py)
METRICS_FILE = "metrics.csv"  # Lightning's per-epoch log (train.py)
EARLIER_METRICS = "metrics.earlier.csv"  # metrics.csv of the parts before a --resume, until the fold finishes
CURVES_FILE = "curves.png"  # in the run folder: amf train redraws it as each fold finishes (curves.py)
