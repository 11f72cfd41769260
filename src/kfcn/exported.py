"""Run exported models (SavedModel, TFLite, ONNX) the way `kfcn evaluate` and `kfcn predict` run
`.keras` files, so a deployed file is scored on the same images with the same metrics.

The format is found from the content, not the name: a directory with `saved_model.pb` is a
SavedModel, a file that starts as a zip archive is a `.keras` model, one with the TFLite
flatbuffer identifier (`TFL3`) is TFLite, and any other file is read as ONNX. Each file must have
the interface `kfcn export` writes (input `image` uint8 RGB; outputs `mask` uint8 and
`probabilities` float32) and the class names and palette it stores; anything else is one
`ModelError` line naming the file and the problem.

A TFLite file has one input size. Its metadata (written by `kfcn export`) holds that size, the
quantization and the fitting (`kfcn.fitting`); each image is fitted to the size and the class
probabilities are brought back to the image's size (bilinear, then argmax). `fixed_size_predictor`
does the same for any model, so a `.keras` baseline is scored exactly as its TFLite file is
(`kfcn evaluate --size HxW`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from kfcn.errors import ModelError
from kfcn.fitting import FITTING, fit_uint8, unfit_probabilities

FORMATS = ("keras", "saved_model", "tflite", "onnx")
SIGNATURE = "serving_default"
INPUT = "image"
OUTPUTS = ("mask", "probabilities")
INFO_FILE = "kfcn.json"
"""Class names, palette and variant, in `assets.extra/` of a SavedModel."""
TFLITE_METADATA = "kfcn"
"""Name of the TFLite metadata entry with the info, size, quantization and fitting."""
ONNX_EXTRA = "pip install 'kfcn[onnx]'"

Segment = Callable[[np.ndarray], tuple[np.ndarray | None, np.ndarray]]
"""(h, w, 3) uint8 image -> ((h, w) uint8 mask or None, (h, w, C) float32 probabilities)."""


def model_format(path: str | Path) -> str:
    """'keras', 'saved_model', 'tflite' or 'onnx', from what `path` holds.

    A directory without `saved_model.pb` counts as 'keras' (a run or stage directory, resolved
    by `kfcn.runs.resolve_model`). A missing path is 'keras' too, whose loader names the problem.

    Raises:
        ModelError: the file cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        return "saved_model" if (path / "saved_model.pb").is_file() else "keras"
    if not path.is_file():
        return "keras"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file ({exc})") from None
    if head[:4] == b"PK\x03\x04" or path.suffix == ".keras":
        return "keras"
    if head[4:8] == b"TFL3" or path.suffix == ".tflite":
        return "tflite"
    return "onnx"


@dataclass
class Exported:
    """A loaded exported model."""

    path: Path
    format: str
    info: dict
    """class_names, palette, variant (and for TFLite size, quantization, fitting)."""
    segment: Segment = field(repr=False)
    size: tuple[int, int] | None = None
    """The fixed input (H, W), or None: any size."""
    quantization: str = "none"

    @property
    def num_classes(self) -> int:
        return len(self.info["class_names"])


def _fail(path: Path, problem: str) -> ModelError:
    return ModelError(f"{path}: {problem}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _check_info(path: Path, info) -> dict:
    if not isinstance(info, dict) or not isinstance(info.get("class_names"), list):
        raise _fail(path, "no kfcn class names in the model's metadata; export it with kfcn export")
    names = info["class_names"]
    palette = info.get("palette")
    if not isinstance(palette, list) or len(palette) != len(names):
        raise _fail(path, f"the metadata has {len(names)} class names but no palette for them")
    return info


def load_exported(path: str | Path, fmt: str | None = None) -> Exported:
    """Load a SavedModel directory, a TFLite file or an ONNX file written by `kfcn export`.

    Raises:
        ModelError: one line naming the file: not a model of that format, truncated or corrupt,
            another interface than `kfcn export`'s, no kfcn metadata, or (ONNX) the `onnx`
            extra is not installed.
    """
    path = Path(path)
    fmt = fmt or model_format(path)
    loaders = {"saved_model": _load_saved_model, "tflite": _load_tflite, "onnx": _load_onnx}
    if fmt not in loaders:
        raise _fail(path, f"not an exported model (format {fmt}); expected one of {list(loaders)}")
    return loaders[fmt](path)


# --- SavedModel ---------------------------------------------------------------------------------


def _load_saved_model(path: Path) -> Exported:
    if not (path / "saved_model.pb").is_file():
        raise _fail(path, "not a SavedModel directory (no saved_model.pb)")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TF raises many types for a damaged SavedModel
        raise _fail(path, f"cannot load the SavedModel ({_first_line(exc)})") from None
    serve = loaded.signatures.get(SIGNATURE)
    if serve is None:
        raise _fail(path, f"the SavedModel has no {SIGNATURE!r} signature")
    inputs = serve.structured_input_signature[1]
    spec = inputs.get(INPUT)
    if (
        set(inputs) != {INPUT}
        or spec.dtype != tf.uint8
        or spec.shape.as_list() != [None, None, 3]
        or set(serve.structured_outputs) != set(OUTPUTS)
    ):
        raise _fail(path, _interface_problem(inputs, serve.structured_outputs, "(H, W, 3)"))
    try:
        info = json.loads((path / "assets.extra" / INFO_FILE).read_text())
    except (OSError, ValueError):
        info = None
    info = _check_info(path, info)

    def segment(image):
        out = serve(image=tf.constant(image, tf.uint8))
        return out["mask"].numpy(), out["probabilities"].numpy()

    exported = Exported(path, "saved_model", info, segment)
    exported._keep = loaded  # the signature needs its SavedModel alive
    return exported


def _interface_problem(inputs, outputs, shape: str) -> str:
    return (
        f"not kfcn's export interface (input {INPUT!r} uint8 {shape} -> outputs "
        f"{', '.join(map(repr, OUTPUTS))}); found inputs {sorted(inputs)}, outputs "
        f"{sorted(outputs)}"
    )


# --- TFLite -------------------------------------------------------------------------------------


def tflite_metadata(flatbuffer: bytes) -> dict | None:
    """The kfcn metadata entry of a TFLite flatbuffer, or None when it has none."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == TFLITE_METADATA.encode():
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            return json.loads(np.asarray(data, np.uint8).tobytes())
    return None


def with_tflite_metadata(flatbuffer: bytes, metadata: dict) -> bytes:
    """`flatbuffer` with `metadata` (JSON) as its kfcn metadata entry (replacing one before)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    model.metadata = [m for m in (model.metadata or []) if m.name != TFLITE_METADATA.encode()]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = TFLITE_METADATA
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _load_tflite(path: Path) -> Exported:
    try:
        flatbuffer = path.read_bytes()
    except OSError as exc:
        raise _fail(path, f"cannot read the TFLite file ({exc})") from None
    if flatbuffer[4:8] != b"TFL3":
        raise _fail(path, "not a TFLite file (no TFL3 flatbuffer identifier)")
    try:
        interpreter = tf.lite.Interpreter(model_content=flatbuffer)
        signatures = interpreter.get_signature_list()
        meta = tflite_metadata(flatbuffer)
    except Exception as exc:  # the interpreter raises ValueError/RuntimeError on damaged files
        raise _fail(path, f"truncated or corrupt TFLite file ({_first_line(exc)})") from None
    if SIGNATURE not in signatures:
        found = ", ".join(map(repr, signatures)) or "none"
        raise _fail(path, f"not kfcn's export interface (no {SIGNATURE!r} signature; {found})")
    runner = interpreter.get_signature_runner(SIGNATURE)
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    spec = inputs.get(INPUT)
    if (
        set(inputs) != {INPUT}
        or spec["dtype"] != np.uint8
        or len(spec["shape"]) != 4
        or spec["shape"][-1] != 3
        or set(outputs) != set(OUTPUTS)
    ):
        raise _fail(path, _interface_problem(inputs, outputs, "(1, H, W, 3)"))
    if meta is None or "size" not in meta or meta.get("fitting") != FITTING:
        raise _fail(
            path,
            "a TFLite file without kfcn's size and fitting metadata (written by an older kfcn); "
            "export it again with kfcn export --format tflite",
        )
    info = _check_info(path, meta)
    size = (int(spec["shape"][1]), int(spec["shape"][2]))

    def segment(image):  # (H, W, 3) uint8 of `size`
        out = runner(image=np.asarray(image, np.uint8)[np.newaxis])
        return out["mask"][0], out["probabilities"][0]

    exported = Exported(path, "tflite", info, segment, size, meta.get("quantization", "none"))
    exported._keep = interpreter
    return exported


# --- ONNX ---------------------------------------------------------------------------------------


def require_onnx(what: str):
    """Import onnxruntime, or fail with the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(f"{what} needs ONNX Runtime: {ONNX_EXTRA}") from None
    return onnxruntime


def _load_onnx(path: Path) -> Exported:
    ort = require_onnx(f"{path}: scoring an ONNX file")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are not the user's business
    # On a host whose cores other jobs share, spinning workers and equal-sized blocks per thread
    # left ONNX Runtime waiting on its slowest thread (1.9-2.4x the SavedModel's time, against
    # 1.8 with these two). README, "Export formats compared", has the figures on a quiet host.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.dynamic_block_base", "4")
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise _fail(path, f"not a readable ONNX model ({_first_line(exc)})") from None
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    spec = inputs.get(INPUT)
    if (
        set(inputs) != {INPUT}
        or spec.type != "tensor(uint8)"
        or len(spec.shape) != 3
        or spec.shape[-1] != 3
        or set(outputs) != set(OUTPUTS)
    ):
        raise _fail(path, _interface_problem(inputs, outputs, "(H, W, 3)"))
    props = session.get_modelmeta().custom_metadata_map
    try:
        info = {key: json.loads(props[key]) for key in ("class_names", "palette")}
        info["variant"] = props.get("variant", "unknown")
    except (KeyError, ValueError):
        info = None
    info = _check_info(path, info)

    def segment(image):
        mask, probabilities = session.run(list(OUTPUTS), {INPUT: np.asarray(image, np.uint8)})
        return mask, probabilities

    return Exported(path, "onnx", info, segment)


# --- prediction ---------------------------------------------------------------------------------


def _uint8(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


class FormatPredictor:
    """Class indices from an exported model, or from any model fitted to one size.

    It offers what `kfcn evaluate`, `kfcn predict` and `kfcn.tiling` use of
    `kfcn.inference.Predictor`: `classes`, `probabilities`, `batch_probabilities`,
    `num_classes` and `describe`.

    Args:
        segment: runs the model on one uint8 image (see `Segment`).
        num_classes: classes the model predicts.
        size: fit every image to this (H, W) first (`kfcn.fitting`), then bring the
            probabilities back; None: the model takes every size.
        description: what `describe` adds (format, quantization, file, ...).
        tta: a `kfcn.inference.TTA` (only without `size`): the probabilities of every view,
            as `kfcn.inference.Predictor` makes them, except that a resized view is rounded
            to uint8 (the exported input), are averaged.
    """

    plain = False
    input_multiple = 1  # the exported graph pads and crops itself; fitted images are fixed-size

    def __init__(
        self,
        segment: Segment,
        num_classes: int,
        size=None,
        description: dict | None = None,
        tta=None,
    ):
        self.segment = segment
        self.tta = tta
        self.num_classes = num_classes
        self.size = tuple(size) if size is not None else None
        self.description = dict(description or {})

    def classes(self, images: Sequence) -> list[np.ndarray]:
        """One (h_i, w_i) uint8 array of class indices per (h_i, w_i, 3) image."""
        return [self._classes(_uint8(image)) for image in images]

    def _classes(self, image: np.ndarray) -> np.ndarray:
        if self.tta is not None:
            return self._tta_probabilities(image).argmax(-1).astype(np.uint8)
        if self.size is None:
            mask, probabilities = self.segment(image)
            if mask is None:
                mask = np.argmax(probabilities, axis=-1)
            return np.asarray(mask, np.uint8)
        return self.probabilities(image).argmax(-1).astype(np.uint8)

    def probabilities(self, image) -> np.ndarray:
        """(h, w, C) float32 class probabilities of one (h, w, 3) image (its TTA views' mean)."""
        image = _uint8(image)
        if self.tta is not None:
            return self._tta_probabilities(image)
        if self.size is None:
            return np.asarray(self.segment(image)[1], np.float32)
        fitted, hw = fit_uint8(image, self.size)  # (H, W, 3) uint8, resized (h', w')
        _, probabilities = self.segment(fitted.numpy())
        probabilities = unfit_probabilities(probabilities, hw, image.shape[:2])  # (h, w, C)
        return np.asarray(probabilities, np.float32)

    def batch_probabilities(self, images) -> np.ndarray:
        """(B, h, w, C) `probabilities` of same-sized images (an exported file takes one)."""
        return np.stack([self.probabilities(image) for image in images])

    def _tta_probabilities(self, image: np.ndarray) -> np.ndarray:
        """(h, w, C) mean probabilities over the TTA views of an (h, w, 3) uint8 image."""
        h, w = image.shape[:2]
        views = self.tta.views(h, w)
        total = np.zeros((h, w, self.num_classes), np.float64)
        for size, flip in views:
            view = image
            if size != (h, w):
                view = _uint8(tf.image.resize(image, size, method="bilinear").numpy())
            _, probabilities = self.segment(np.ascontiguousarray(view[:, ::-1] if flip else view))
            probabilities = np.asarray(probabilities, np.float32)  # (h', w', C)
            if flip:
                probabilities = probabilities[:, ::-1]
            if size != (h, w):
                probabilities = tf.image.resize(probabilities, (h, w), method="bilinear").numpy()
            total += probabilities
        return (total / len(views)).astype(np.float32)

    def describe(self) -> dict:
        tta = self.tta.as_dict() if self.tta is not None else None
        return {"ensemble": 1, "tta": tta, **self.description}


def exported_predictor(exported: Exported) -> FormatPredictor:
    """The predictor of a loaded export (fitting TFLite's images to its size)."""
    return FormatPredictor(
        exported.segment,
        exported.num_classes,
        exported.size,
        describe_export(exported),
    )


def describe_export(exported: Exported) -> dict:
    """format, quantization, file and size (None: any) of an export, for reports."""
    return {
        "format": exported.format,
        "quantization": exported.quantization,
        "file": str(exported.path),
        "size": list(exported.size) if exported.size else None,
        "fitting": FITTING if exported.size else None,
        "precision": "float32",
    }


def fixed_size_predictor(predictor, size: tuple[int, int], description: dict) -> FormatPredictor:
    """A `kfcn.inference.Predictor` (one model or an ensemble, no TTA) fitted to `size`."""

    def segment(image):
        return None, predictor.probabilities(image)

    return FormatPredictor(segment, predictor.num_classes, size, description)


def load_format_predictor(
    models,
    ensemble: bool = False,
    tta=None,
    precision: str = "float32",
    size: tuple[int, int] | None = None,
):
    """A predictor for MODEL arguments that are not plain `.keras` scoring: an exported file,
    or `.keras` models fitted to `size` (`kfcn evaluate --size`).

    Returns:
        `(predictor, info, paths)`, or None for `.keras` models without `size` (then
        `kfcn.inference.load_predictor` serves them as always).

    Raises:
        ModelError: an exported file that cannot be scored (see `load_exported`), an ensemble
            with an exported member, or a `size` other than a TFLite file's own.
        ConfigError: `--tta` with a fixed size (`size`, or a TFLite file), or `--precision`
            with an exported file. A SavedModel or ONNX file takes `--tta`.
    """
    import os

    from kfcn.errors import ConfigError
    from kfcn.inference import load_predictor

    args = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    formats = [model_format(arg) for arg in args]
    if all(fmt == "keras" for fmt in formats):
        if size is None:
            return None
        if tta is not None:
            raise ConfigError("--tta cannot be used with --size: TTA needs other sizes")
        predictor, info, paths = load_predictor(args, ensemble, None, precision)
        description = {
            "format": "keras",
            "quantization": "none",
            "file": str(paths[0]),
            "size": list(size),
            "fitting": FITTING,
            "precision": predictor.precision,
        }
        return fixed_size_predictor(predictor, size, description), info, paths
    if len(args) > 1:
        other = next(arg for arg, fmt in zip(args, formats, strict=True) if fmt != "keras")
        raise ModelError(f"{other}: an ensemble takes .keras models only, not exported files")
    if precision != "float32":
        raise ConfigError(
            f"--precision {precision} is for .keras models; {args[0]} runs as it was exported"
        )
    exported = load_exported(args[0], formats[0])
    if exported.size is not None:
        where = (
            f"{exported.path} is a fixed-size TFLite file ({exported.size[0]}x{exported.size[1]})"
        )
        if tta is not None:
            raise ConfigError(f"--tta cannot be used: {where}, and TTA needs other sizes")
        if size is not None and tuple(size) != exported.size:
            raise ConfigError(f"--size {size[0]}x{size[1]}: {where}")
    elif tta is not None and size is not None:
        raise ConfigError("--tta cannot be used with --size: TTA needs other sizes")
    predictor = exported_predictor(exported)
    predictor.tta = tta
    if size is not None and exported.size is None:
        predictor.size = tuple(size)
        predictor.description.update(size=list(size), fitting=FITTING)
    predictor._exported = exported  # keeps the session alive
    return predictor, exported.info, [exported.path]
