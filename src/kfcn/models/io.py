"""Model files: a standard Keras `.keras` archive that also carries what inference needs.

The archive loads with plain `keras.models.load_model(path, safe_mode=True)` once kfcn is imported
(its custom layer and initializer are registered). kfcn's information — the resolved config the
model was trained with, the variant, class names, palette and kfcn version — is stored under the
key "kfcn" of the archive's `metadata.json`. Keras writes that file and never reads it back when
loading, so the key is safe there; an extra archive member would instead make Keras extract the
whole archive (weights included) to a temporary directory on every load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kfcn import __version__
from kfcn.errors import ModelError
from kfcn.fileio import publish, temp_path
from kfcn.models import backbones as _backbones  # noqa: F401  (registers the preprocessing layers)
from kfcn.models import fcn as _fcn  # noqa: F401  (registers BilinearUpsampling)
from kfcn.palette import VOC_CLASSES, voc_colormap

METADATA_MEMBER = "metadata.json"
INFO_KEY = "kfcn"
REQUIRED_INFO = ("variant", "class_names", "palette", "config")


def make_info(variant: str, config, class_names=None, palette=None) -> dict:
    """The information a model file carries.

    Args:
        variant: 'fcn32', 'fcn16' or 'fcn8'.
        config: the resolved `kfcn.config.Config` (or its dict) the model was trained with.
        class_names: one name per class; default the VOC names when the config has 21
            classes, otherwise 'class_0', 'class_1', ...
        palette: (num_classes, 3) RGB colours; default the first entries of the VOC colour map.

    Returns:
        A JSON-ready dict with keys variant, class_names, palette, config, kfcn_version.
    """
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    if class_names is None:
        n = int(config["model"]["num_classes"])
        class_names = VOC_CLASSES if n == len(VOC_CLASSES) else [f"class_{i}" for i in range(n)]
    n = len(class_names)
    if palette is None:
        palette = voc_colormap(n)
    return {
        "variant": variant,
        "class_names": [str(name) for name in class_names],
        "palette": np.asarray(palette, dtype=np.uint8).reshape(-1, 3).tolist(),
        "config": config,
        "kfcn_version": __version__,
    }


def _json_ready(info: dict) -> dict:
    def default(obj: Any):
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, (Path, os.PathLike)):
            return str(obj)
        raise TypeError(f"model info value of type {type(obj).__name__} is not JSON-serialisable")

    return json.loads(json.dumps(info, default=default))


def _check_info(model: keras.Model, info: dict) -> dict:
    info = _json_ready(dict(info))
    info.setdefault("kfcn_version", __version__)
    missing = [key for key in REQUIRED_INFO if key not in info]
    if missing:
        raise ValueError(f"model info lacks {', '.join(missing)}; build it with make_info()")
    n = int(model.output.shape[-1])
    if len(info["class_names"]) != n or len(info["palette"]) != n:
        raise ValueError(
            f"model predicts {n} classes but info has {len(info['class_names'])} class names "
            f"and {len(info['palette'])} palette colours"
        )
    return info


def _save_keras(model: keras.Model, path: str, include_optimizer: bool) -> None:
    optimizer = getattr(model, "optimizer", None)
    if include_optimizer or optimizer is None:
        keras.saving.save_model(model, path)
        return
    # Keras saves the optimizer's slots whenever the model is compiled; an inference file does
    # not need them (they would triple its size with Adam), so hide the optimizer while saving.
    model.optimizer = None
    try:
        keras.saving.save_model(model, path)
    finally:
        model.optimizer = optimizer


def _copy_with_info(src: str, dst: str, info: dict) -> None:
    """Copy the archive `src` to `dst`, adding `info` to its metadata.json."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            out = zipfile.ZipInfo(item.filename, date_time=item.date_time)
            out.compress_type = item.compress_type
            if item.filename == METADATA_MEMBER:
                metadata = json.loads(zin.read(item))
                metadata[INFO_KEY] = info
                zout.writestr(out, json.dumps(metadata))
                continue
            with zin.open(item) as fin, zout.open(out, "w", force_zip64=True) as fout:
                shutil.copyfileobj(fin, fout, 1 << 24)


def save_model(
    model: keras.Model, path: str | os.PathLike, info: dict, include_optimizer: bool = False
) -> Path:
    """Save `model` and its `info` as one `.keras` file, atomically.

    Args:
        model: the FCN to save.
        path: destination; must end in `.keras`. Parent folders are created.
        info: what inference needs, as returned by `make_info` (variant, class_names, palette,
            config; kfcn_version is added when absent).
        include_optimizer: also store the optimizer state of a compiled model (for resuming).

    Returns:
        The path written.

    Raises:
        ModelError: `path` does not end in `.keras` or cannot be written.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ModelError(f"{path}: model files must end in .keras")
    info = _check_info(model, info)
    temps: list[str] = []  # Keras' archive, then the archive with info, in the target folder
    try:
        for suffix in (".keras", ".tmp"):
            temps.append(str(temp_path(path, suffix)))
        _save_keras(model, temps[0], include_optimizer)
        _copy_with_info(temps[0], temps[1], info)
        publish(temps[1], path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot write the model file ({exc})") from None
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def model_info(path: str | os.PathLike) -> dict:
    """Read the information stored in a kfcn model file, without loading its weights.

    Raises:
        ModelError: the file is missing, not a `.keras` archive, or not saved by kfcn.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        with zipfile.ZipFile(path) as zf:
            metadata = json.loads(zf.read(METADATA_MEMBER))
    except KeyError:
        raise ModelError(f"{path}: not a Keras model file (no {METADATA_MEMBER})") from None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable .keras model file ({exc})") from None
    info = metadata.get(INFO_KEY) if isinstance(metadata, dict) else None
    if not isinstance(info, dict) or any(key not in info for key in REQUIRED_INFO):
        raise ModelError(
            f"{path}: a Keras model file without kfcn information; expected a model saved by kfcn"
        )
    return info


def load_model(path: str | os.PathLike) -> tuple[keras.Model, dict]:
    """Load a model file written by `save_model`.

    Returns:
        `(model, info)`: the uncompiled model, and its stored information (see `make_info`).

    Raises:
        ModelError: one line, for a missing, corrupt or non-kfcn file.
    """
    info = model_info(path)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: cannot load the model ({reason})") from None
    n = int(model.output.shape[-1])
    if len(info["class_names"]) != n:
        raise ModelError(
            f"{path}: the model predicts {n} classes but its information lists "
            f"{len(info['class_names'])} class names"
        )
    return model, info
