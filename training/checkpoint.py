"""Fold checkpoints: ``model.safetensors`` (tensors only, no pickle) + ``config.json`` beside it.

``config.json`` holds the network config (enough to rebuild the module), the recipe, the fold and the
validation figures at the selected epoch. Loading never unpickles anything.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from runtime.errors import ModelError
from training.network import NetworkConfig, build_network
from training.run_files import CONFIG_FILE, WEIGHTS_FILE, atomic_path, write_atomically


def save_checkpoint(folder: str | Path, net: nn.Module, meta: dict) -> Path:
    """``net``: a network from :func:`build_network` in its plain form (LoRA merged)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    config = {"network": net.cfg.to_dict(), **meta}
    write_atomically(folder / CONFIG_FILE, json.dumps(config, indent=2, default=str).encode())
    with atomic_path(folder / WEIGHTS_FILE) as partial:  # last: a fold with its weights file is finished
        save_file(state, partial)
    return folder


def read_config(folder: str | Path) -> dict:
    return json.loads((Path(folder) / CONFIG_FILE).read_text())


def selected_score(config: dict) -> float | None:
    """The selection metric's value at the fold's selected epoch, None where the fold was never validated (the
    config.json of such a fold from an older version holds its last logged metrics there instead, a dict)."""
    score = config.get("selected_score")
    return float(score) if isinstance(score, int | float) else None


def load_network(folder: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the network from ``config.json`` and load ``model.safetensors`` (strict); files that cannot be read
    or do not fit together (a corrupt or truncated checkpoint) are a ModelError naming the folder."""
    try:
        config = read_config(folder)
        net = build_network(NetworkConfig.from_dict({**config["network"], "pretrained": False}))
        net.load_state_dict(load_file(Path(folder) / WEIGHTS_FILE), strict=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        raise ModelError(f"{folder}: unusable fold checkpoint ({' '.join(str(exc).split())[:300]})") from None
    return net.eval(), config


def init_weights(net: nn.Module, path: str | Path) -> list[str]:
    """Start ``net`` from the tensors of a fold folder (or a ``.safetensors`` file) to fine-tune or train on.

    Every tensor there must exist in ``net`` with the same shape. Returns the names of ``net``'s tensors that
    the file lacks (e.g. the decoders, when it comes from a single-task model); they keep their fresh values.
    """
    path = Path(path)
    file = path / WEIGHTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no weights to start from")
    result = net.load_state_dict(load_file(file), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{file}: tensors the network does not have, e.g. {result.unexpected_keys[:3]}")
    return list(result.missing_keys)


def init_mismatch(net: nn.Module, path: str | Path) -> str | None:
    """Why :func:`init_weights` would refuse ``path`` for ``net`` (a tensor the network does not have, or one of
    another shape, or a file that is no safetensors file), read from the file's header; None when it fits."""
    path = Path(path)
    file = path / WEIGHTS_FILE if path.is_dir() else path
    own = net.state_dict()
    try:
        with safe_open(file, framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key not in own:
                    return f"{file}: tensors the network does not have, e.g. {key}"
                shape = tuple(weights.get_slice(key).get_shape())
                if shape != tuple(own[key].shape):
                    return f"{file}: {key} is {list(shape)}, the network's is {list(own[key].shape)}"
    except (OSError, SafetensorError) as exc:
        return f"{file}: not a weights file ({' '.join(str(exc).split())[:200]})"
    return None


def load_pruned(folder: str | Path) -> tuple[nn.Module, dict]:
    net, config = load_network(folder)
    return net.pruned().eval(), config


def member_names(folders: list[Path]) -> list[str]:
    """The fold folders' names, or ``run/fold`` where folders of several runs share a name (members of a fold)."""
    clash = len({f.name for f in folders}) < len(folders)
    return [f"{f.parent.name}/{f.name}" if clash else f.name for f in folders]


def load_weights_only(path: str | Path) -> dict:
    """A Lightning/PyTorch checkpoint read with ``weights_only=True``: tensors and plain containers only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def check_resumable(path: str | Path) -> None:
    """A Lightning checkpoint that ``amf train --resume`` can continue from: a whole zip archive (every member's
    CRC checked) that torch reads with ``weights_only``, holding the weights and the epoch. Otherwise a ModelError
    naming it (exit 4); nothing is read into the model and nothing is changed."""
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
        if broken is not None:
            raise ValueError(f"{broken} fails its CRC check")
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        missing = [key for key in ("state_dict", "epoch") if key not in state]
        if missing:
            raise ValueError(f"no {' or '.join(missing)} in it")
    except (OSError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise ModelError(f"{path}: corrupt or truncated checkpoint ({' '.join(str(exc).split())[:200]}); --resume "
                         "cannot continue from it (remove it to train this fold from the start)") from None
