"""`kfcn export`: a model as a TensorFlow SavedModel or a TFLite file, for serving.

Both formats hold the whole inference path, so a server needs neither kfcn nor Keras:

* **SavedModel** (`format="saved_model"`): signature `serving_default` takes one image
  `image` (H, W, 3) uint8 RGB of *any* size (no batch axis) and returns `mask` (H, W) uint8 class
  indices and `probabilities` (H, W, C) float32 softmax scores, both at the image's size. The
  padding to a multiple of 32 and the crop back run inside the graph, with the same
  `kfcn.padding` functions `kfcn evaluate` and `kfcn predict` use, so masks equal `kfcn predict`'s.
* **TFLite** (`format="tflite"`): one fixed input size, chosen at export. Signature
  `serving_default` takes `image` (1, H, W, 3) uint8 and returns `mask` (1, H, W) uint8 and
  `probabilities` (1, H, W, C) float32; padding happens inside, so H and W need not be multiples
  of 32. `quantize` chooses the weights: "none" keeps float32 (about 0.5 GB for VGG16; masks
  match the SavedModel's up to float rounding), "float16" halves the file, "dynamic" stores
  int8 weights with float activations, and "int8" quantizes weights and activations with ranges
  calibrated on the train images of a `kfcn prepare` directory. Every variant keeps the uint8
  image input and the uint8 mask output; ops without an int8 kernel stay float.

* **ONNX** (`format="onnx"`, the `onnx` extra): the SavedModel's interface, input `image`
  (H, W, 3) uint8 of any size -> `mask` (H, W) uint8 and `probabilities` (H, W, C) float32, for
  a plain `onnxruntime.InferenceSession`. The graph is traced with the weights as *inputs*
  (Keras's `stateless_call`) and converted by `tf2onnx.convert.from_function`, and the weights
  are then bound as the graph's initializers: nothing freezes 0.5 GB of constants into a TF
  graph for tf2onnx to copy (its SavedModel path deep-copies the whole graph, weights included,
  once per optimizer pass, and ran out of memory on VGG16). Pad and crop are plain `tf.pad` and
  `tf.slice` (see `kfcn.padding`), which become ONNX `Pad` and `Slice` nodes. `kfcn.onnx_graph`
  then rewrites what ONNX Runtime runs slowly into nodes that compute the same values: the
  fixed bilinear upsampling as `Resize` (faster than a transposed convolution), and the
  image's padding, mean and channel order in the first convolution's layout.

The SavedModel writes `assets.extra/kfcn.json`, TFLite `OUT.json` next to the file and a `kfcn`
metadata entry inside it (with the input size, the quantization and the fitting, see
`kfcn.fitting`), ONNX the `metadata_props` `class_names`, `palette`, `variant` and
`kfcn_version`: the class names, palette and variant, so a server can name and colour the
classes, and `kfcn evaluate` and `kfcn predict` can score the file.

Images must be decoded as kfcn decodes them (`kfcn.data.records.decode_image`: JPEGs with
`INTEGER_ACCURATE` DCT, which matches PIL) for the masks to match `kfcn predict` exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kfcn import onnx_graph
from kfcn.choices import EXPORT_FORMATS, QUANTIZATIONS
from kfcn.errors import ModelError
from kfcn.exported import INFO_FILE, ONNX_EXTRA, SIGNATURE, with_tflite_metadata
from kfcn.fitting import FITTING, fit_uint8
from kfcn.images import write_atomic
from kfcn.padding import crop_to, input_multiple, pad_image

CALIBRATION_SPLIT = "train"
CALIBRATION_IMAGES = 100
"""int8: this many train images, a seeded sample of the whole split, calibrate the activations."""
CALIBRATION_SEED = 0
ONNX_OPSET = 17

UINT8_CLASSES = np.iinfo(np.uint8).max + 1
"""Masks are uint8: 256 class indices at most (a dataset's classes are fewer, see
`kfcn.data.classes.MAX_CLASSES`)."""


def _segment(model: keras.Model, image: tf.Tensor, weights=None) -> dict[str, tf.Tensor]:
    """(H, W, 3) uint8 -> mask (H, W) uint8 and probabilities (H, W, C) float32.

    `weights`: the values of `model.trainable_variables + model.non_trainable_variables` to
    compute with (Keras's `stateless_call`) instead of the model's own variables.
    """
    padded, hw = pad_image(image, input_multiple(model))  # (H', W', 3) float32, (2,) int32
    if weights is None:
        logits = model(padded[tf.newaxis], training=False)  # (1, H', W', C)
    else:
        n = len(model.trainable_variables)
        trainable, non_trainable = list(weights[:n]), list(weights[n:])
        logits, _ = model.stateless_call(trainable, non_trainable, padded[tf.newaxis])
    # Crop, then drop the batch axis: one slice of the full-size logits instead of two copies.
    logits = tf.squeeze(crop_to(tf.cast(logits, tf.float32), hw), 0)  # (H, W, C)
    mask = tf.argmax(logits, axis=-1, output_type=tf.int32)  # (H, W)
    return {"mask": tf.cast(mask, tf.uint8), "probabilities": tf.nn.softmax(logits)}


def _archive(model: keras.Model, spec: tf.TensorSpec, serve) -> keras.export.ExportArchive:
    """An export archive of `model` with `serve` as its `serving_default` signature.

    Keras's `ExportArchive` tracks the model's variables so that the SavedModel restores them and
    the TFLite converter can freeze them into constants.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, serve, input_signature=[spec])
    return archive


def _check_model(model: keras.Model) -> None:
    classes = int(model.output.shape[-1])
    if classes > UINT8_CLASSES:
        raise ModelError(
            f"the model predicts {classes} classes; export writes uint8 masks "
            f"(at most {UINT8_CLASSES} classes)"
        )


def _info_json(info: dict | None) -> str:
    info = info or {}
    keys = ("variant", "class_names", "palette", "kfcn_version")
    return json.dumps({key: info[key] for key in keys if key in info}, indent=2)


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` to `out`, replacing an earlier export there."""
    if out.is_dir():
        # os.replace cannot replace a non-empty directory: move the old one aside first.
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_saved_model(model: keras.Model, out: str | Path, info: dict | None = None) -> Path:
    """Write `model` as a SavedModel that segments uint8 images of any size.

    Args:
        model: an FCN from `kfcn.models.load_model` or `build_fcn`.
        out: the SavedModel directory to write; an earlier SavedModel there is replaced.
        info: the model's information (`load_model`'s second value); its class names, palette
            and variant go to `OUT/assets.extra/kfcn.json`.

    Returns:
        `out`. Signature `serving_default`: `image` (H, W, 3) uint8 -> `mask` (H, W) uint8,
        `probabilities` (H, W, C) float32.

    Raises:
        ModelError: `out` is a file or a directory that is not a SavedModel, or cannot be
            written; or the model has more than 256 classes.
    """
    out = Path(out)
    check_out(out, "saved_model")
    _check_model(model)
    spec = tf.TensorSpec([None, None, 3], tf.uint8, name="image")
    archive = _archive(model, spec, lambda image: _segment(model, image))
    return _write_dir(out, lambda tmp: _save(archive, tmp, info))


def check_out(out: str | Path, fmt: str) -> None:
    """Refuse an output path that would replace something other than an earlier export.

    Raises:
        ModelError: for 'saved_model', `out` is a file or a non-empty directory without
            `saved_model.pb`; for 'tflite', `out` is a directory.
    """
    out = Path(out)
    if fmt in ("tflite", "onnx") and out.is_dir():
        raise ModelError(f"{out}: is a directory; --format {fmt} writes one file (model.{fmt})")
    if fmt == "saved_model" and (
        out.is_file()
        or (out.is_dir() and any(out.iterdir()) and not (out / "saved_model.pb").is_file())
    ):
        raise ModelError(f"{out}: exists and is not a SavedModel; choose another --out")


def _save(archive: keras.export.ExportArchive, tmp: Path, info: dict | None) -> None:
    archive.write_out(str(tmp), verbose=False)
    (tmp / "assets.extra").mkdir(exist_ok=True)
    (tmp / "assets.extra" / INFO_FILE).write_text(_info_json(info))


def _write_dir(out: Path, write) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide the model from a serving user
    except OSError as exc:
        raise ModelError(f"{out}: cannot write here ({exc})") from None
    try:
        write(tmp)
        _replace(tmp, out)
    except OSError as exc:
        raise ModelError(f"{out}: cannot write the export ({exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_tflite(
    model: keras.Model,
    out: str | Path,
    size: tuple[int, int],
    info: dict | None = None,
    quantize: str = "none",
    calibration_data: str | Path | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
) -> Path:
    """Write `model` as a TFLite file for images of one fixed size.

    Args:
        model: an FCN from `kfcn.models.load_model` or `build_fcn`.
        out: the `.tflite` file to write (replaced when present). Class names, palette and
            variant go to the same name with `.json` instead.
        size: (H, W) of the input images, each >= 1 (padding to a multiple of 32 is inside).
        info: the model's information (`load_model`'s second value).
        quantize: 'none' (float32), 'float16', 'dynamic' (int8 weights) or 'int8' (int8
            weights and activations).
        calibration_data: for 'int8', a directory written by `kfcn prepare`;
            `calibration_images` of its train images (a seeded sample of the whole split),
            fitted to `size` as inference fits them (`kfcn.fitting`), calibrate the activations.
        calibration_images: how many.

    Returns:
        `out`. Signature `serving_default`: `image` (1, H, W, 3) uint8 -> `mask` (1, H, W) uint8,
        `probabilities` (1, H, W, C) float32.

    Raises:
        ModelError: a bad size or quantization, `out` is a directory or cannot be written, the
            conversion fails, or the model has more than 256 classes.
        DataError: the calibration directory has no train split.
    """
    out = Path(out)
    height, width = size
    if height < 1 or width < 1:
        raise ModelError(f"export size {height}x{width}: height and width must be >= 1")
    check_quantize(quantize, calibration_data)
    check_out(out, "tflite")
    _check_model(model)

    def serve(image):  # (1, H, W, 3) uint8
        outputs = _segment(model, image[0])
        return {key: value[tf.newaxis] for key, value in outputs.items()}

    spec = tf.TensorSpec([1, height, width, 3], tf.uint8, name="image")
    archive = _archive(model, spec, serve)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # The converter reads a SavedModel (~0.5 GB): write it beside the output, not in /tmp.
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
            archive.write_out(tmp, verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
            _set_quantization(converter, quantize, calibration_data, size, calibration_images)
            flatbuffer = _convert(converter, out)
    except OSError as exc:
        raise ModelError(f"{out}: cannot write the export ({exc})") from None
    metadata = json.loads(_info_json(info))
    metadata.update(size=[height, width], quantization=quantize, fitting=FITTING)
    flatbuffer = with_tflite_metadata(flatbuffer, metadata)
    write_atomic(out.with_suffix(".json"), _info_json(info).encode())
    write_atomic(out, flatbuffer)
    return out


def check_quantize(quantize: str, calibration_data: str | Path | None) -> None:
    """Refuse an unknown quantization, int8 without calibration data, or data it would ignore.

    Raises:
        ModelError: with what to do instead.
    """
    if quantize not in QUANTIZATIONS:
        raise ModelError(f"--quantize {quantize!r}: expected one of {', '.join(QUANTIZATIONS)}")
    if quantize == "int8" and calibration_data is None:
        raise ModelError(
            "--quantize int8 needs --calibration-data DIR (a directory written by kfcn prepare; "
            "its train images calibrate the activation ranges)"
        )
    if quantize != "int8" and calibration_data is not None:
        raise ModelError(f"--calibration-data is for --quantize int8, not {quantize}")


def _set_quantization(converter, quantize: str, data_dir, size, count: int) -> None:
    if quantize == "none":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.representative_dataset = calibration_images(data_dir, size, count)


def calibration_images(
    data_dir: str | Path, size: tuple[int, int], count: int, seed: int = CALIBRATION_SEED
):
    """A TFLite representative dataset: `count` train images of `data_dir`, drawn at random
    (seeded) from all its shards, each fitted to `size` by `kfcn.fitting.fit_uint8` (the
    fitting inference uses), as (1, H, W, 3) uint8.

    Raises:
        DataError: `data_dir` has no complete train split.
        ModelError: `count` < 1.
    """
    from kfcn.data import records

    if count < 1:
        raise ModelError(f"--calibration-images {count}: expected at least 1")
    shards = records.list_shards(data_dir, CALIBRATION_SPLIT)  # fails early, naming the problem
    positions = calibration_positions(data_dir, count, seed)
    chosen = np.zeros(max(positions, default=0) + 1, bool)
    chosen[positions] = True
    chosen = tf.constant(chosen)

    def generate():
        ds = tf.data.TFRecordDataset([str(p) for p in shards]).enumerate()
        ds = ds.filter(lambda i, _: i < tf.size(chosen, tf.int64) and chosen[i])
        for _, serialized in ds:
            image = records.decode_example(serialized)["image"]  # (h, w, 3) uint8
            yield [fit_uint8(image, size)[0][tf.newaxis]]  # (1, H, W, 3) uint8

    return generate


def calibration_positions(data_dir: str | Path, count: int, seed: int) -> list[int]:
    """Record positions (in shard order) of the int8 calibration sample: `count` distinct
    positions of the train split drawn with `seed` (all of them when the split is smaller)."""
    from kfcn.data import pipeline

    total = pipeline.count_records(data_dir, CALIBRATION_SPLIT)
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(total, size=min(count, total), replace=False))


def _convert(converter: tf.lite.TFLiteConverter, out: Path) -> bytes:
    """Run the converter (with the optimizations `_set_quantization` chose)."""
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises many types; report it as one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{out}: TFLite conversion failed ({reason})") from None


def export_onnx(model: keras.Model, out: str | Path, info: dict | None = None) -> Path:
    """Write `model` as an ONNX file that segments uint8 images of any size.

    The serving function is traced with the weights as extra inputs (`_segment`'s `weights`),
    converted by `tf2onnx.convert.from_function`, and the weights are then bound as
    initializers: the TF graph tf2onnx processes holds no weights, so converting VGG16 costs
    the weights twice (as arrays and in the file) rather than many copies.

    Args:
        model: an FCN from `kfcn.models.load_model` or `build_fcn`.
        out: the `.onnx` file to write (replaced when present).
        info: the model's information; class names, palette and variant go to the model's
            `metadata_props` (JSON strings).

    Returns:
        `out`. Input `image` (H, W, 3) uint8 -> `mask` (H, W) uint8, `probabilities`
        (H, W, C) float32.

    Raises:
        ModelError: the `onnx` extra is missing, `out` is a directory or cannot be written, the
            conversion fails, or the model has more than 256 classes.
    """
    onnx, tf2onnx = _onnx_modules()
    out = Path(out)
    check_out(out, "onnx")
    _check_model(model)
    variables = list(model.trainable_variables) + list(model.non_trainable_variables)
    names = [f"weight_{i}" for i in range(len(variables))]
    specs = [tf.TensorSpec([None, None, 3], tf.uint8, name="image")] + [
        tf.TensorSpec(v.shape, v.dtype, name=name) for v, name in zip(variables, names, strict=True)
    ]

    @tf.function(input_signature=specs)
    def serve(image, *weights):
        return _segment(model, image, weights)

    try:
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=specs, opset=ONNX_OPSET)
    except Exception as exc:  # tf2onnx raises many types; report it as one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{out}: ONNX conversion failed ({reason})") from None
    weights = {name: v.numpy() for v, name in zip(variables, names, strict=True)}
    paddings = _transposed_paddings(model, variables, names)
    onnx_graph.bind_weights(onnx, proto.graph, weights, paddings)
    del weights
    onnx_graph.crop_in_upsampling(onnx, proto.graph)
    onnx_graph.fold_input(onnx, proto.graph)
    meta = json.loads(_info_json(info))
    for key, value in meta.items():
        proto.metadata_props.append(
            onnx.StringStringEntryProto(
                key=key, value=value if isinstance(value, str) else json.dumps(value)
            )
        )
    proto.producer_name = "kfcn"
    data = proto.SerializeToString()
    del proto
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, data)
    except OSError as exc:
        raise ModelError(f"{out}: cannot write the export ({exc})") from None
    return out


def _transposed_paddings(model: keras.Model, variables: list, names: list[str]) -> dict[str, str]:
    """Weight input name -> Keras padding ("same" or "valid") of each transposed convolution's
    kernel."""
    name_of = {id(v): name for v, name in zip(variables, names, strict=True)}
    return {
        name_of[id(layer.kernel)]: layer.padding
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2DTranspose) and id(layer.kernel) in name_of
    }


def _onnx_modules():
    """(onnx, tf2onnx), or a ModelError naming the extra to install."""
    try:
        import onnx
        import onnx.helper
        import onnx.numpy_helper
        import tf2onnx
    except ImportError:
        raise ModelError(f"--format onnx needs onnx and tf2onnx: {ONNX_EXTRA}") from None
    return onnx, tf2onnx


def parse_size(text: str) -> tuple[int, int]:
    """Parse 'HxW' (e.g. '512x384') into (H, W).

    Raises:
        ModelError: not two positive integers joined by 'x'.
    """
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ModelError(f"--size {text!r}: expected HxW with positive integers, e.g. 512x512")
    return int(parts[0]), int(parts[1])


def export_model(
    model: str | Path,
    fmt: str,
    out: str | Path,
    size: tuple[int, int] | None = None,
    quantize: str = "none",
    calibration_data: str | Path | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
) -> Path:
    """Load a model (a `.keras` file or a run directory) and export it.

    Args:
        model: a `.keras` file, a run directory (its latest finished stage) or a stage directory.
        fmt: 'saved_model', 'tflite' or 'onnx'.
        out: the SavedModel directory, `.tflite` or `.onnx` file to write.
        size: (H, W) of the TFLite input; required for 'tflite', not allowed for 'saved_model'
            (whose signature takes any size).
        quantize: for 'tflite', 'none', 'float16', 'dynamic' or 'int8' (see `export_tflite`).
        calibration_data: for int8, a directory written by `kfcn prepare`.
        calibration_images: for int8, how many of its train images calibrate.

    Returns:
        `out`.

    Raises:
        ModelError: an unknown format or quantization, a missing or extra size or calibration
            directory, or any error of the exporters.
    """
    from kfcn.models import load_model
    from kfcn.runs import resolve_model

    if fmt not in EXPORT_FORMATS:
        raise ModelError(
            f"export format {fmt!r} is unknown; expected one of {', '.join(EXPORT_FORMATS)}"
        )
    if fmt == "tflite" and size is None:
        raise ModelError("--format tflite needs --size HxW (TFLite models have one input size)")
    if fmt != "tflite" and size is not None:
        raise ModelError(f"--size is for --format tflite; --format {fmt} takes images of any size")
    if fmt != "tflite" and (quantize != "none" or calibration_data is not None):
        raise ModelError("--quantize and --calibration-data are for --format tflite")
    check_quantize(quantize, calibration_data)
    check_out(out, fmt)
    if fmt == "onnx":
        _onnx_modules()  # before the model loads
    keras_model, info = load_model(resolve_model(model))
    if fmt == "saved_model":
        return export_saved_model(keras_model, out, info)
    if fmt == "onnx":
        return export_onnx(keras_model, out, info)
    return export_tflite(
        keras_model, out, size, info, quantize, calibration_data, calibration_images
    )
