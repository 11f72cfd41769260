"""`kfcn convert`: the published Caffe FCN models (`.caffemodel`) as kfcn model files.

The file is read through `kfcn.caffeproto` (no Caffe needed). Its layer names tell the variant:
`score_pool3` makes an FCN-8s, `score_pool4` an FCN-16s, neither an FCN-32s, and the Scale layers
`scale_pool4`/`scale_pool3` the at-once FCN-8s. Every width comes from the blob shapes, so
narrower or wider nets of the same layout convert too. The model is kfcn's `caffe` topology of
the same builder (`kfcn.models.build_fcn(..., topology="caffe")`) with the file's weights:

    Caffe layer                    kfcn layer       weights
    conv{b}_{i}, fc6, fc7          block{b}_conv{i}, fc6, fc7, score_*: (out, in, kh, kw) ->
    score_fr, score_pool4/3          (kh, kw, in, out), and the bias
    upscore (FCN-32s), upscore2,   upscore32, ...   (in, out, k, k) -> (k, k, out, in): the
    upscore16, upscore_pool4,                        file's own kernels, and biases where the
    upscore8                                         file has them
    scale_pool4, scale_pool3       the same         one factor per channel

Pads, strides and crop offsets come from the file's layer parameters when it has them; a file
that holds only names, types and blobs gets the FCN values (`kfcn.models.fcn.caffe_layout`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from kfcn import caffeproto
from kfcn.config import VGG16_WIDTHS, Config
from kfcn.errors import ModelError
from kfcn.fileio import sha256_file

BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
CONVS = tuple(f"conv{b}_{i}" for b, n in BLOCKS for i in range(1, n + 1))
POOLS = tuple(f"pool{b}" for b, _ in BLOCKS)
# Caffe's name of each transposed convolution, by kfcn layer name.
DECONVS = {
    "fcn32": {"upscore32": "upscore"},
    "fcn16": {"upscore2": "upscore2", "upscore16": "upscore16"},
    "fcn8": {"upscore2": "upscore2", "upscore_pool4": "upscore_pool4", "upscore8": "upscore8"},
}
SKIPS = {"fcn32": (), "fcn16": ("score_pool4",), "fcn8": ("score_pool4", "score_pool3")}
CROPS = {
    "fcn32": ("score",),
    "fcn16": ("score_pool4c", "score"),
    "fcn8": ("score_pool4c", "score_pool3c", "score"),
}


def _fail(path, problem: str) -> ModelError:
    return ModelError(f"{path}: {problem}")


def read_caffemodel(path: str | os.PathLike) -> dict[str, caffeproto.Layer]:
    """The layers of a `.caffemodel` by name (both the `layer` and the legacy `layers` list).

    Raises:
        ModelError: missing, unreadable, not a Caffe net, or a blob whose values do not fill
            its shape (a truncated file).
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file")
    try:
        net = caffeproto.read_net(path)
    except OSError as exc:
        raise _fail(path, f"cannot read the file ({exc.strerror})") from None
    except (DecodeError, RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "bad bytes"
        reason = reason.split(": ")[-1]  # protobuf's "Error parsing message ...: " prefix
        raise _fail(
            path,
            "not a Caffe model (a binary NetParameter): the file is truncated, damaged or of "
            f"another kind ({reason})",
        ) from None
    try:
        layers = caffeproto.net_layers(net)
    except ValueError as exc:
        raise _fail(path, f"a damaged or truncated Caffe model: {exc}") from None
    del net  # the parsed message holds a second copy of every float
    if not any(layer.blobs for layer in layers):
        raise _fail(path, "not a Caffe model with weights: no layer holds any blobs")
    return {layer.name: layer for layer in layers}


def detect_variant(layers: dict) -> tuple[str, bool]:
    """('fcn32' | 'fcn16' | 'fcn8', at_once) from the layer names."""
    at_once = "scale_pool4" in layers or "scale_pool3" in layers
    if "score_pool3" in layers:
        return "fcn8", at_once
    if "score_pool4" in layers:
        return "fcn16", at_once
    return "fcn32", False


def _layer(path, layers: dict, name: str, variant: str, blobs: int = 1) -> caffeproto.Layer:
    layer = layers.get(name)
    if layer is None:
        raise _fail(path, f"no layer '{name}', which an {variant} needs")
    if len(layer.blobs) < blobs:
        raise _fail(path, f"layer '{name}' holds {len(layer.blobs)} blobs; expected {blobs}")
    return layer


def _values(param, name: str, default: int) -> tuple[int, int]:
    """(h, w) of a convolution parameter: `name_h`/`name_w`, else the repeated `name`."""
    h, w = getattr(param, f"{name}_h", 0), getattr(param, f"{name}_w", 0)
    if h or w:
        return int(h), int(w)
    values = list(getattr(param, name))
    if not values:
        return default, default
    return int(values[0]), int(values[-1])


def _check_conv(path, layer, pad: int, stride: int = 1) -> None:
    """The layer's padding and stride are what the topology builds (or the file says none)."""
    param = layer.convolution
    if param is None:
        return
    got_pad, got_stride = _values(param, "pad", 0), _values(param, "stride", 1)
    if (
        got_pad != (pad, pad)
        or got_stride != (stride, stride)
        or any(d > 1 for d in param.dilation)
    ):
        raise _fail(
            path,
            f"layer '{layer.name}' has pad {got_pad}, stride {got_stride}; the FCN layout "
            f"needs pad {pad}, stride {stride}",
        )


def _check_pool(path, layer) -> None:
    param = layer.pooling
    if param is None:
        return
    kernel = (param.kernel_h, param.kernel_w) if param.kernel_h else (param.kernel_size,) * 2
    stride = (param.stride_h, param.stride_w) if param.stride_h else (param.stride,) * 2
    pad = (param.pad_h, param.pad_w) if param.pad_h or param.pad_w else (param.pad,) * 2
    if param.pool != 0 or kernel != (2, 2) or stride != (2, 2) or pad != (0, 0) or param.round_mode:
        raise _fail(
            path,
            f"layer '{layer.name}' is not the FCN's 2x2 max pooling at stride 2 (ceil mode): "
            f"pool {param.pool}, kernel {kernel}, stride {stride}, pad {pad}",
        )


def _conv_weights(path, layer, in_channels: int | None) -> list[np.ndarray]:
    """Caffe (out, in, kh, kw) + bias -> Keras (kh, kw, in, out), (out,)."""
    kernel = layer.blobs[0]
    if kernel.ndim != 4 or (in_channels is not None and kernel.shape[1] != in_channels):
        raise _fail(
            path,
            f"layer '{layer.name}' has a weight blob of shape {kernel.shape}; expected "
            f"(out, {in_channels if in_channels is not None else 'in'}, kh, kw)",
        )
    out = kernel.shape[0]
    bias = layer.blobs[1].reshape(-1) if len(layer.blobs) > 1 else np.zeros(out, np.float32)
    if bias.size != out:
        raise _fail(path, f"layer '{layer.name}' has {bias.size} biases for {out} outputs")
    return [kernel.transpose(2, 3, 1, 0), bias]


def _deconv_weights(path, layer, classes: int) -> list[np.ndarray]:
    """Caffe (in, out / group, k, k) [+ bias] -> Keras (k, k, out, in) [+ (out,)]."""
    kernel = layer.blobs[0]
    if kernel.ndim == 4 and kernel.shape[:2] == (classes, 1) and classes > 1:
        # One kernel per channel (group = classes): the same as a full kernel that is zero
        # between different channels.
        full = np.zeros((classes, classes) + kernel.shape[2:], np.float32)
        full[np.arange(classes), np.arange(classes)] = kernel[:, 0]
        kernel = full
    if (
        kernel.ndim != 4
        or kernel.shape[:2] != (classes, classes)
        or kernel.shape[2] != kernel.shape[3]
    ):
        raise _fail(
            path,
            f"layer '{layer.name}' has a weight blob of shape {kernel.shape}; expected "
            f"({classes}, {classes}, k, k)",
        )
    weights = [kernel.transpose(2, 3, 1, 0)]
    if len(layer.blobs) > 1:
        bias = layer.blobs[1].reshape(-1)
        if bias.size != classes:
            raise _fail(path, f"layer '{layer.name}' has {bias.size} biases for {classes} classes")
        weights.append(bias)
    return weights


def _widths(path, layers: dict, variant: str) -> tuple[int, ...]:
    """The seven `model.widths` from the blob shapes; every conv of a block must share one."""
    widths, channels = [], 3
    for block, convs in BLOCKS:
        outs = set()
        for i in range(1, convs + 1):
            layer = _layer(path, layers, f"conv{block}_{i}", variant)
            _conv_weights(path, layer, channels)  # checks the input channels
            channels = layer.blobs[0].shape[0]
            outs.add(channels)
        if len(outs) != 1:
            raise _fail(path, f"block {block}'s convolutions have different widths {sorted(outs)}")
        widths.append(channels)
    for name in ("fc6", "fc7"):
        layer = _layer(path, layers, name, variant)
        _conv_weights(path, layer, channels)
        channels = layer.blobs[0].shape[0]
        widths.append(channels)
    return tuple(int(w) for w in widths)


def _layout(path, layers: dict, variant: str, at_once: bool) -> dict:
    """The Caffe topology's parameters (see `caffe_layout`) from the file's layer parameters."""
    from kfcn.models.fcn import CAFFE_UPSAMPLING

    conv1 = layers["conv1_1"].convolution
    conv1_pad = _values(conv1, "pad", 100)[0] if conv1 is not None else 100
    _check_conv(path, layers["conv1_1"], conv1_pad)
    for name in CONVS[1:]:
        _check_conv(path, layers[name], 1)
    _check_conv(path, layers["fc6"], 0)
    _check_conv(path, layers["fc7"], 0)
    for name in POOLS:
        if name in layers:
            _check_pool(path, layers[name])
    upsampling, bias = {}, []
    for name, caffe_name in DECONVS[variant].items():
        layer = layers[caffe_name]
        kernel = int(layer.blobs[0].shape[-1])
        stride = CAFFE_UPSAMPLING[variant][name][1]
        if layer.convolution is not None:
            stride = _values(layer.convolution, "stride", stride)[0]
            _check_conv(path, layer, 0, stride)
        upsampling[name] = [kernel, stride]
        if len(layer.blobs) > 1:
            bias.append(name)
    crops = {}
    for name in CROPS[variant]:
        param = layers[name].crop if name in layers else None
        if param is not None and list(param.offset):
            if param.axis != 2:
                raise _fail(path, f"layer '{name}' crops from axis {param.axis}; expected 2")
            offsets = [int(o) for o in param.offset]
            crops[name] = [offsets[0], offsets[-1]]
    return {
        "conv1_pad": conv1_pad,
        "upsampling": upsampling,
        "crops": crops,
        "deconv_bias": bias,
        "at_once": at_once,
    }


def _assign(source, model, weights: dict[str, list[np.ndarray]]) -> None:
    """Set the model's layers from `weights` (emptied on the way), smallest layer first.

    Each array is transposed into one aligned buffer that TensorFlow takes without copying, and
    each layer's file data is released once assigned; taking fc6 (0.4 GB of 0.54) last, little
    else of the file is still held then. Peak memory stays near the model plus one fc6.
    """
    import tensorflow as tf

    from kfcn.models.io import _aligned_empty

    for name in sorted(weights, key=lambda n: sum(v.size for v in weights[n])):
        target = model.get_layer(name)
        want = [tuple(w.shape) for w in target.weights]
        got = [tuple(v.shape) for v in weights[name]]
        if want != got:
            raise _fail(source, f"layer '{name}' has weights of shapes {got}; expected {want}")
        for variable, value in zip(target.weights, weights.pop(name), strict=True):
            buffer = _aligned_empty(value.shape)
            np.copyto(buffer, value)
            del value
            variable.assign(tf.experimental.dlpack.from_dlpack(buffer.__dlpack__()))
            del buffer


def _build_zeroed(variant: str, num_classes: int, widths, layout: dict, cfg: Config):
    """`build_fcn(variant, ..., widths, topology="caffe", layout)` with every variable zero
    instead of drawn from its initializer (each layer keeps its initializer).

    At VGG16's widths the random draws would cost seconds and leave about 0.85 GB resident
    (TensorFlow keeps the memory it drew them in), only to be overwritten by the file's weights.
    So the same net is built at width 1, and its config, at the file's widths, is rebuilt the
    way `kfcn.models.load_model` builds a model file (`kfcn.models.io`).
    """
    import keras

    from kfcn.models import build_fcn
    from kfcn.models.io import _build

    def build(widths_):
        return build_fcn(
            variant,
            num_classes=num_classes,
            backbone_weights="none",
            widths=list(widths_),
            topology="caffe",
            layout=layout,
            weight_decay=cfg.train.weight_decay,
            dropout=cfg.model.dropout,
        )

    config = keras.saving.serialize_keras_object(build([1] * len(widths)))
    width_of = {f"block{b}_conv{i}": b - 1 for b, n in BLOCKS for i in range(1, n + 1)}
    width_of.update(fc6=5, fc7=6)
    for layer in config["config"]["layers"]:
        name = layer["config"]["name"]
        if name in width_of:
            layer["config"]["filters"] = int(widths[width_of[name]])
        layer.pop("build_config", None)  # the layers build from their inputs' new shapes
    return _build(config)


def convert_caffemodel(
    source: str | os.PathLike, out: str | os.PathLike, classes: str | os.PathLike | None = None
) -> tuple[Path, dict]:
    """Convert a Caffe FCN `.caffemodel` into a kfcn model file.

    Args:
        source: the `.caffemodel` (e.g. `fcn8s-heavy-pascal.caffemodel`).
        out: the `.keras` file to write (atomically: nothing is written on failure).
        classes: a class-list YAML file (`kfcn.data.classes`) naming the classes; by default
            the VOC names for 21 classes, else `class_0`, `class_1`, ...

    Returns:
        `(path written, model info)`; the info's `source` names the file and its SHA-256.

    Raises:
        ModelError: the file is no Caffe FCN (one line: the file and the problem, a missing
            layer by name), or the class list's count differs from the score layers'.
    """
    from kfcn.data.classes import load_classes
    from kfcn.errors import DataError
    from kfcn.models import make_info, save_model

    source, out = Path(source), Path(out)
    if out.suffix != ".keras":
        raise ModelError(f"{out}: model files must end in .keras")
    layers = read_caffemodel(source)
    variant, at_once = detect_variant(layers)
    widths = _widths(source, layers, variant)
    score_fr = _layer(source, layers, "score_fr", variant)
    num_classes = int(score_fr.blobs[0].shape[0])
    weights = {"score_fr": _conv_weights(source, score_fr, widths[6])}
    for b, n in BLOCKS:
        for i in range(1, n + 1):
            layer = layers[f"conv{b}_{i}"]
            weights[f"block{b}_conv{i}"] = _conv_weights(source, layer, None)
    for name in ("fc6", "fc7"):
        weights[name] = _conv_weights(source, layers[name], None)
    for name, width in zip(SKIPS[variant], (widths[3], widths[2]), strict=False):
        layer = _layer(source, layers, name, variant)
        weights[name] = _conv_weights(source, layer, width)
        if at_once:
            scale_name = name.replace("score", "scale")
            scale = _layer(source, layers, scale_name, "at-once " + variant)
            factors = scale.blobs[0].reshape(-1)
            if factors.size != width:
                raise _fail(
                    source, f"layer '{scale_name}' has {factors.size} factors for {width} channels"
                )
            weights[scale_name] = [factors]
    for name, caffe_name in DECONVS[variant].items():
        layer = _layer(source, layers, caffe_name, variant)
        weights[name] = _deconv_weights(source, layer, num_classes)
        if weights[name][0].shape[-1] != num_classes:
            raise _fail(source, f"layer '{caffe_name}' does not map {num_classes} classes")
    for name, values in weights.items():
        if values[0].shape[-1] != num_classes and name.startswith("score"):
            raise _fail(
                source,
                f"layer '{name}' scores {values[0].shape[-1]} classes but score_fr {num_classes}",
            )
    layout = _layout(source, layers, variant, at_once)
    for layer in layers.values():
        layer.blobs = []  # from here `weights` alone holds the arrays

    class_list = None
    if classes is not None:
        try:
            class_list = load_classes(classes)
        except DataError as exc:
            raise ModelError(str(exc)) from None
        if len(class_list.names) != num_classes:
            raise ModelError(
                f"{classes}: lists {len(class_list.names)} classes but {source} scores "
                f"{num_classes} (layer score_fr)"
            )

    cfg = Config()
    cfg.model.num_classes = num_classes
    cfg.model.backbone_weights = "none"
    cfg.model.widths = None if widths == VGG16_WIDTHS else list(widths)
    cfg.model.topology = "caffe"
    model = _build_zeroed(variant, num_classes, widths, layout, cfg)
    _assign(source, model, weights)
    info = make_info(
        variant,
        cfg,
        class_names=class_list.names if class_list else None,
        palette=class_list.palette if class_list else None,
    )
    info["at_once"] = at_once
    info["source"] = {"file": source.name, "sha256": sha256_file(source), "format": "caffemodel"}
    return save_model(model, out, info), info
