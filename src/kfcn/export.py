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
  `tf.slice` (see `kfcn.padding`), which become ONNX `Pad` and `Slice` nodes. The fixed
  bilinear upsampling is written as ONNX `Resize` (the same interpolation, faster in ONNX
  Runtime than a transposed convolution).

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

from kfcn.choices import EXPORT_FORMATS, QUANTIZATIONS
from kfcn.errors import ModelError
from kfcn.exported import INFO_FILE, ONNX_EXTRA, SIGNATURE, with_tflite_metadata
from kfcn.fitting import FITTING, fit_uint8
from kfcn.images import write_atomic
from kfcn.models.fcn import bilinear_kernel
from kfcn.padding import crop_to, input_multiple, pad_image

CALIBRATION_SPLIT = "train"
CALIBRATION_IMAGES = 100
"""int8: this many train images, a seeded sample of the whole split, calibrate the activations."""
CALIBRATION_SEED = 0
ONNX_OPSET = 17
SAME_SLICE = "same_slice"
"""Name (after the layer's prefix) of the Slice that crops an upsampling's Resize to TF's
"same" size (`_as_resize`), where `_crop_in_upsampling` finds it."""

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
    _bind_weights(onnx, proto.graph, weights, _transposed_paddings(model, variables, names))
    del weights
    _crop_in_upsampling(onnx, proto.graph)
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


def _bind_weights(onnx, graph, weights: dict[str, np.ndarray], paddings: dict[str, str]) -> None:
    """Turn the weight inputs of a converted graph into initializers, in ONNX's layout.

    tf2onnx sees the weights as inputs, so it leaves a `Transpose` (TF's HWIO -> ONNX's OIHW)
    on each; those are applied here, once, to the arrays. A `ConvTranspose` that is the fixed
    bilinear upsampling (`kfcn.models.fcn.bilinear_kernel`) becomes a `Resize` (see
    `_as_resize`); one whose kernel otherwise mixes no channels (learned upsampling, every
    off-diagonal slice zero) becomes a per-channel one (`group` = channels): the same sums
    without the zero terms. ONNX Runtime's transposed convolution was a quarter of its time on
    the FCN-8s; its `Resize` does the same interpolation several times faster.
    `paddings` (weight input name -> "same" or "valid") names the Keras padding of each
    transposed convolution's kernel: a "same" one is cropped by tf2onnx with a Slice and a Pad
    computed from shapes at run time, which `_as_resize`'s own crop then replaces.
    Nodes whose outputs nothing reads any more are dropped; only arrays the graph reads are
    bound.
    """
    inputs = set(weights)  # the graph inputs that are weights
    origin = {name: name for name in weights}  # array -> the weight input it came from
    readers = _readers(graph.node)
    unread = {name: len(nodes) for name, nodes in readers.items()}  # to free arrays early
    kept, replaced = [], set()
    for node in graph.node:
        if id(node) in replaced:
            continue
        if node.op_type == "Transpose" and node.input[0] in weights:
            perm = next(list(a.ints) for a in node.attribute if a.name == "perm")
            weights[node.output[0]] = np.ascontiguousarray(weights[node.input[0]].transpose(perm))
            origin[node.output[0]] = origin[node.input[0]]
            unread[node.input[0]] -= 1
            if not unread[node.input[0]]:
                del weights[node.input[0]]
            continue
        if node.op_type == "ConvTranspose" and node.input[1] in weights:
            crop = None
            if paddings.get(origin[node.input[1]]) == "same":
                crop = _same_crop(node, readers)
            resize = _as_resize(onnx, node, weights, crop[1].output[0] if crop else None)
            if resize:
                kept.extend(resize)
                replaced.update(id(n) for n in crop or ())
                continue
            _per_channel(onnx, node, weights)
        kept.append(node)
    del graph.node[:]
    graph.node.extend(_live(kept, {o.name for o in graph.output}))
    images = [i for i in graph.input if i.name not in inputs]
    del graph.input[:]
    graph.input.extend(images)
    used = {name for node in graph.node for name in node.input}
    for name in [name for name in weights if name in used]:
        graph.initializer.append(onnx.numpy_helper.from_array(weights.pop(name), name))


def _readers(nodes) -> dict[str, list]:
    """Tensor name -> the nodes that read it."""
    readers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _live(nodes: list, outputs: set[str]) -> list:
    """`nodes` (in topological order) without those whose outputs nothing reads."""
    needed, live = set(outputs), []
    for node in reversed(nodes):
        if any(name in needed for name in node.output):
            live.append(node)
            needed.update(node.input)
    return live[::-1]


def _same_crop(node, readers: dict[str, list]):
    """(Slice, Pad): how tf2onnx crops `node`'s output (a ConvTranspose of TF's "same" padding)
    to TF's size: a Slice, the only reader besides the Shape nodes that compute its bounds,
    then a Pad (of zero width) reading only that. None when the graph is not so."""
    users = [n for n in readers.get(node.output[0], []) if n.op_type != "Shape"]
    if len(users) != 1 or users[0].op_type != "Slice":
        return None
    pads = readers.get(users[0].output[0], [])
    if len(pads) != 1 or pads[0].op_type != "Pad":
        return None
    return users[0], pads[0]


def _crop_in_upsampling(onnx, graph) -> None:
    """Crop the logits to the image's size in the last upsampling's own Slice.

    `_segment` crops the padded logits to the image: after the last upsampling (`_as_resize`'s
    "same" Slice, NCHW) tf2onnx writes a Transpose to NHWC and a Slice from zero to the image's
    size, which the padded logits always hold. Those bounds (plus the Resize's offset f) go to
    the upsampling's Slice, and the Transpose writes the cropped tensor: one full-size copy
    fewer. A graph not so is left as it is.
    """
    constants = {i.name: i for i in graph.initializer}
    readers = _readers(graph.node)

    def only_reader(name: str, op_type: str):
        nodes = readers.get(name, [])
        return nodes[0] if len(nodes) == 1 and nodes[0].op_type == op_type else None

    upsampling = [n for n in graph.node if n.name.endswith(f"/{SAME_SLICE}")]
    if not upsampling:
        return
    same = upsampling[-1]
    transpose = only_reader(same.output[0], "Transpose")
    crop = transpose and only_reader(transpose.output[0], "Slice")
    if not crop or _attributes(onnx, transpose).get("perm") != [0, 2, 3, 1] or len(crop.input) != 3:
        return
    starts = constants.get(crop.input[1])
    if starts is None or np.any(onnx.numpy_helper.to_array(starts)):
        return
    offset = onnx.numpy_helper.to_array(constants[same.input[1]])  # (2,): f, f
    prefix = same.name
    extra = {
        f"{prefix}/crop_from": np.array([1], np.int64),  # H, W in the NHWC bounds
        f"{prefix}/crop_to": np.array([3], np.int64),
        f"{prefix}/crop_offset": offset.astype(np.int64),
    }
    graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in extra.items())
    hw, hw64, ends = (f"{prefix}/crop_{key}" for key in ("hw", "hw64", "ends"))
    make = onnx.helper.make_node
    bounds = [
        make("Slice", [crop.input[2], *list(extra)[:2]], [hw], name=hw),
        make("Cast", [hw], [hw64], name=hw64, to=onnx.TensorProto.INT64),
        make("Add", [hw64, f"{prefix}/crop_offset"], [ends], name=ends),
    ]
    same.input[2] = ends
    transpose.output[0] = crop.output[0]
    nodes = [n for n in graph.node if n is not crop]
    at = next(i for i, n in enumerate(nodes) if n is same)
    del graph.node[:]
    graph.node.extend(nodes[:at] + bounds + nodes[at:])


def _attributes(onnx, node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _bilinear_factor(onnx, node, kernel: np.ndarray) -> int | None:
    """f when `node` (ConvTranspose, kernel (C, C, 2f, 2f)) is the bilinear x`f` upsampling of
    each channel with stride f and no padding of its own (f even), else None."""
    attrs = _attributes(onnx, node)
    channels, outputs, k_h, k_w = kernel.shape
    factor = k_h // 2
    plain = (
        len(node.input) == 2  # no bias
        and attrs.get("group", 1) == 1
        and channels == outputs
        and k_h == k_w == 2 * factor
        and factor % 2 == 0
        and list(attrs.get("strides", [])) == [factor, factor]
        and not any(attrs.get("pads", []))
        and not any(attrs.get("output_padding", []))
        and "output_shape" not in attrs
        and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        and all(d == 1 for d in attrs.get("dilations", []))
    )
    if not plain:
        return None
    expected = np.zeros_like(kernel)
    expected[np.arange(channels), np.arange(channels)] = bilinear_kernel(k_h, 1)[:, :, 0, 0]
    # A kernel converted from another framework may differ in the last bit of float32.
    return factor if np.allclose(kernel, expected, rtol=0, atol=1e-6) else None


def _as_resize(onnx, node, weights: dict[str, np.ndarray], same: str | None = None) -> list | None:
    """`node` (bilinear ConvTranspose, x`f`) as Pad -> Resize -> Slice nodes, or None.

    The transposed convolution places input pixel j at output coordinate j*f + f - 1/2 and
    interpolates linearly between neighbours, with zeros beyond the border: that is `Resize`
    (linear, half-pixel centres) of the input with one row and column of zeros around it,
    whose (n + 2) * f outputs hold the transposed convolution's (n + 1) * f from f/2 on. The
    same sums, so the same values up to float rounding.

    With `same` (a tensor name), a second Slice writes it: TF's "same" output, the n * f
    values from f/2 on of the transposed convolution's, that is from f on of the Resize's.
    The first Slice (the transposed convolution's own output) stays for readers of its shape
    (`_live` drops it when there are none).
    """
    factor = _bilinear_factor(onnx, node, weights[node.input[1]])
    if factor is None:
        return None
    prefix, half = node.name or node.output[0], factor // 2
    constants = {
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),  # N, C, H, W: begins, then ends
        "scales": np.array([1, 1, factor, factor], np.float32),
        "starts": np.array([half, half], np.int64),
        "ends": np.array([-half, -half], np.int64),
        "same_starts": np.array([factor, factor], np.int64),
        "same_ends": np.array([-factor, -factor], np.int64),
        "axes": np.array([2, 3], np.int64),
    }
    names = {key: f"{prefix}/resize_{key}" for key in constants}
    for key, value in constants.items():
        weights[names[key]] = value
    padded, resized = f"{prefix}/zero_border", f"{prefix}/resized"
    make = onnx.helper.make_node
    nodes = [
        make("Pad", [node.input[0], names["pads"]], [padded], name=padded),
        make(
            "Resize",
            [padded, "", names["scales"]],
            [resized],
            name=resized,
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
        make(
            "Slice",
            [resized, names["starts"], names["ends"], names["axes"]],
            list(node.output),
            name=f"{prefix}/slice",
        ),
    ]
    if same:
        bounds = [names["same_starts"], names["same_ends"], names["axes"]]
        nodes.append(make("Slice", [resized, *bounds], [same], name=f"{prefix}/{SAME_SLICE}"))
    return nodes


def _per_channel(onnx, node, weights: dict[str, np.ndarray]) -> None:
    """Make `node` (ConvTranspose, kernel (C, C, kh, kw)) per-channel when it mixes no channels."""
    kernel = weights[node.input[1]]  # (C_in, C_out, kh, kw)
    channels = kernel.shape[0]
    if _attributes(onnx, node).get("group", 1) != 1 or kernel.shape[1] != channels or channels == 1:
        return
    diagonal = kernel[np.arange(channels), np.arange(channels)]  # (C, kh, kw)
    off = kernel.copy()
    off[np.arange(channels), np.arange(channels)] = 0
    if np.any(off):
        return
    name = node.input[1] + "_per_channel"
    weights[name] = np.ascontiguousarray(diagonal[:, np.newaxis])  # (C, 1, kh, kw)
    node.input[1] = name
    kept = [a for a in node.attribute if a.name != "group"]
    del node.attribute[:]
    node.attribute.extend([*kept, onnx.helper.make_attribute("group", channels)])


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
