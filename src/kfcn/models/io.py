"""Model files: a standard Keras `.keras` archive that also carries what inference needs.

The archive loads with plain `keras.models.load_model(path, safe_mode=True)` once kfcn is imported
(its custom layer and initializer are registered). kfcn's information — the resolved config the
model was trained with, the variant, class names, palette and kfcn version — is stored under the
key "kfcn" of the archive's `metadata.json`. Keras writes that file and never reads it back when
loading, so the key is safe there; an extra archive member would instead make Keras extract the
whole archive (weights included) to a temporary directory on every load.

`load_model` reads a file faster than `keras.saving.load_model` (0.4-1 s of CPU for a 538 MB
FCN-8s on a 2-core CPU; see BENCHMARKS.md) and gives the same model: it builds the layers with
zero initializers (drawing 134 M random numbers only to overwrite them cost most of the time)
and then restores each layer's own initializer, and it reads `model.weights.h5` in place inside
the archive, where Keras first copies it into memory or a temporary file. Files whose weights
are compressed, or that the fast path cannot read, load through Keras.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import mmap
import os
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import tensorflow as tf

from kfcn import __version__
from kfcn.choices import PRECISIONS as PRECISION_NAMES
from kfcn.errors import ModelError
from kfcn.fileio import publish, temp_path
from kfcn.keras_compat import saving_lib
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


PRECISIONS = dict(zip(PRECISION_NAMES, ("float32", "bfloat16", "mixed_float16"), strict=True))
"""--precision -> the Keras dtype policy of the model's layers. bfloat16 keeps its weights in
bfloat16 too (half the memory, no cast per call); float16 computes in float16 on float32 weights
(float16's range is too narrow to hold every weight and activation safely)."""

FLOAT32_LAYERS = ("preprocess", "logits")
"""Layers that stay float32 at any precision: the input's mean subtraction (bfloat16 would round
pixel values by up to 1) and the output logits."""


def load_model(path: str | os.PathLike, precision: str = "float32") -> tuple[keras.Model, dict]:
    """Load a model file written by `save_model` (or any kfcn `.keras` file).

    Args:
        path: the `.keras` file.
        precision: 'float32' (as saved), 'bfloat16' or 'float16': every layer but the input
            preprocessing and the logits computes at that precision (see `PRECISIONS`); the
            logits stay float32.

    Returns:
        `(model, info)`: the uncompiled model, and its stored information (see `make_info`).

    Raises:
        ModelError: one line, for a missing, corrupt or non-kfcn file.
        ValueError: an unknown precision.
    """
    _check_precision_name(precision)
    info = model_info(path)
    try:
        model = _fast_load(path, precision)
    except Exception:  # noqa: BLE001  any trouble: let Keras read the file and name the problem
        model = None
    if model is None:
        try:
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except (zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{path}: cannot load the model ({reason})") from None
        model = with_precision(model, precision)
    n = int(model.output.shape[-1])
    if len(info["class_names"]) != n:
        raise ModelError(
            f"{path}: the model predicts {n} classes but its information lists "
            f"{len(info['class_names'])} class names"
        )
    return model, info


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """`model` computing at `precision` ('float32', 'bfloat16', 'float16'; see `load_model`).

    Returns `model` itself when it already computes at that precision, else a copy with the
    same weights (cast to the new variable dtype).
    """
    _check_precision_name(precision)
    if model_precision(model) == precision:
        return model
    config = keras.saving.serialize_keras_object(model)
    if not _set_precision(config, precision):
        return model
    copy_ = _build(config)
    for new, old in zip(copy_.weights, model.weights, strict=True):
        new.assign(tf.cast(old.value, new.dtype))
    return copy_


def model_precision(model: keras.Model) -> str:
    """The `--precision` name of a model's convolutions ('float32', 'bfloat16', 'float16'), or
    their Keras dtype policy name when it is none of these (e.g. 'mixed_bfloat16'). Anything
    that is not a Keras model (a stand-in that only predicts) counts as float32."""
    if not isinstance(model, keras.Model):
        return "float32"
    for layer in _all_layers(model)[::-1]:
        if isinstance(layer, keras.layers.Conv2D):
            name = layer.dtype_policy.name
            return next((k for k, v in PRECISIONS.items() if v == name), name)
    return "float32"


def _check_precision_name(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision {precision!r} is unknown; expected one of {', '.join(PRECISIONS)}"
        )


def _set_precision(config: dict, precision: str) -> bool:
    """Set the dtype policy of a serialized functional model's layers, in place.

    Returns:
        Whether any layer changed.
    """
    policy = PRECISIONS[precision]
    changed = False
    for layer in config["config"]["layers"]:
        inner = layer["config"]
        dtype = inner.get("dtype")
        if layer["class_name"] == "InputLayer" or inner.get("name") in FLOAT32_LAYERS:
            continue
        if not isinstance(dtype, dict) or dtype.get("config", {}).get("name") == policy:
            continue
        inner["dtype"] = {
            "module": "keras",
            "class_name": "DTypePolicy",
            "config": {"name": policy},
            "registered_name": None,
        }
        changed = True
    return changed


CONFIG_MEMBER = "config.json"
WEIGHTS_MEMBER = "model.weights.h5"
_ZEROS = {"module": "keras.initializers", "class_name": "Zeros", "config": {}}


def _fast_load(path: str | os.PathLike, precision: str = "float32") -> keras.Model | None:
    """`keras.saving.load_model(path, compile=False, safe_mode=True)`, without its waste, at
    `precision`.

    Returns:
        The model, or None when the weights member is compressed (then Keras must read it).
    """
    with zipfile.ZipFile(path) as zf:
        config = json.loads(zf.read(CONFIG_MEMBER))
        member = zf.getinfo(WEIGHTS_MEMBER)
    if member.compress_type != zipfile.ZIP_STORED:
        return None
    _set_precision(config, precision)
    model = _build(config)
    store = _weights_store(path)
    try:
        saving_lib._load_state(model, store, None, inner_path="", visited_saveables=set())
    finally:
        store.close()
    return model


def _build(config: dict) -> keras.Model:
    """The model of a serialized config (as in `config.json`), with each variable set to zero
    (not drawn from its initializer) and each layer keeping its initializer for later use."""
    config = copy.deepcopy(config)
    initializers = _zero_initializers(config)
    config["compile_config"] = None
    with saving_lib.ObjectSharingScope():
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    for layer in _all_layers(model):
        for key, value in initializers.get(layer.name, {}).items():
            setattr(layer, key, keras.initializers.deserialize(value))
    return model


def _zero_initializers(config: dict) -> dict[str, dict[str, Any]]:
    """Set every layer initializer in a model `config` to zeros, in place.

    Returns:
        {layer name: {"kernel_initializer": original config, ...}} to restore after building.
    """
    replaced: dict[str, dict[str, Any]] = {}
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        inner = node.get("config")
        if "class_name" in node and isinstance(inner, dict) and "name" in inner:
            for key, value in inner.items():
                if key.endswith("_initializer") and isinstance(value, dict):
                    replaced.setdefault(inner["name"], {})[key] = copy.deepcopy(value)
                    inner[key] = dict(_ZEROS)
        stack.extend(value for value in node.values() if isinstance(value, (dict, list)))
    return replaced


def _all_layers(model: keras.Model) -> list:
    layers, stack = [], list(model.layers)
    while stack:
        layer = stack.pop()
        layers.append(layer)
        stack.extend(getattr(layer, "layers", []))
    return layers


def _weights_store(path: str | os.PathLike):
    """Keras's HDF5 weight store over the archive's stored `model.weights.h5`, read in place.

    Keras would first copy the member into memory (or a temporary file), then h5py copies each
    array out of that, then TensorFlow copies the array before assigning it. Here h5py reads the
    member where it lies in the archive, and each contiguous float array is copied once, from
    a memory map of the file into an aligned buffer that TensorFlow takes over for the variable.
    """
    with zipfile.ZipFile(path) as zf:
        member = zf.getinfo(WEIGHTS_MEMBER)
    raw = open(path, "rb")  # noqa: SIM115  closed with the store
    raw.seek(member.header_offset)
    header = raw.read(30)
    if header[:4] != b"PK\x03\x04":
        raw.close()
        raise zipfile.BadZipFile(f"{path}: bad local header of {WEIGHTS_MEMBER}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = member.header_offset + 30 + name_len + extra_len
    window = io.BufferedReader(_Window(raw, start, member.file_size), 1 << 16)
    mapped = mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ)

    class InPlaceStore(saving_lib.H5IOStore):
        def _get_h5_file(self, path_or_io, mode=None):
            self.io_file = window
            return h5py.File(window, mode="r")

        def __getitem__(self, key):
            data = self._h5_entry_group[key] if key in self._h5_entry_group else None
            offset = data.id.get_offset() if isinstance(data, h5py.Dataset) else None
            if (
                offset is None
                or data.dtype != np.float32
                or data.chunks is not None
                or data.size == 0
                or "dtype" in data.attrs
            ):
                return super().__getitem__(key)
            stored = np.frombuffer(mapped, np.float32, data.size, start + offset)
            array = _aligned_empty(data.shape)
            np.copyto(array, stored.reshape(data.shape))
            return tf.experimental.dlpack.from_dlpack(array.__dlpack__())  # shares `array`

        def close(self):
            super().close()
            with contextlib.suppress(BufferError):  # a view still alive: the GC closes it
                mapped.close()

    return InPlaceStore(WEIGHTS_MEMBER, mode="r")


def _aligned_empty(shape: tuple[int, ...], align: int = 64) -> np.ndarray:
    """An uninitialised float32 array whose data starts on an `align`-byte boundary, as
    TensorFlow's CPU kernels require of a tensor's buffer."""
    size = int(np.prod(shape))
    buffer = np.empty(size + align // 4, np.float32)
    skip = (-buffer.ctypes.data % align) // 4
    return buffer[skip : skip + size].reshape(shape)


class _Window(io.RawIOBase):
    """Bytes [start, start + size) of an open file, as a seekable read-only file."""

    def __init__(self, raw, start: int, size: int):
        self.raw, self.start, self.size, self.pos = raw, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        if n == 0:
            return 0
        self.raw.seek(self.start + self.pos)
        got = self.raw.readinto(memoryview(buffer)[:n])
        self.pos += got
        return got

    def close(self) -> None:
        self.raw.close()
        super().close()
