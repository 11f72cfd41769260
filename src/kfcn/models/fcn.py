"""FCN-32s, FCN-16s and FCN-8s (Shelhamer, Long & Darrell, 2016) on any backbone of
`kfcn.models.backbones`, stage transfer and freezing.

    images (B, H, W, 3) RGB 0-255 --backbone--> features by stride: 8, 16, 32
    stride 32 -> head (VGG16: fc6, fc7; others: fcn_head) -> score_fr       (B, H/32, W/32, C)
    fcn32: score_fr --upscore32 (x32)--------------------------------------> (B, H, W, C)
    fcn16: score_fr --upscore2 (x2)--> + score_pool4 = fuse_pool4 --upscore16 (x16)--> (B, H, W, C)
    fcn8:  fuse_pool4 --upscore_pool4 (x2)--> + score_pool3 = fuse_pool3 --upscore8 (x8)--> ...

`score_pool4` scores the stride-16 features and `score_pool3` the stride-8 ones (VGG16's pool4 and
pool3, whence the names). Layer names are stable so a trained stage initialises the next one by
name (`transfer_weights`). H and W must be multiples of 32; `kfcn.padding` pads any image to that
and crops the logits back.
"""

from __future__ import annotations

import fnmatch

import keras
import numpy as np

from kfcn.config import STAGES, TOPOLOGIES, ModelConfig, check_widths_fit
from kfcn.errors import ConfigError, ModelError
from kfcn.models.backbones import backbone_of, get_backbone

VARIANTS = STAGES  # ("fcn32", "fcn16", "fcn8")


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
    """A transposed-convolution kernel that upsamples each channel bilinearly (Caffe's
    `upsample_filt`), with no mixing across channels.

    Returns:
        (size, size, channels, channels) float32; kernel[:, :, c, c] is the 2-D bilinear filter,
        every off-diagonal (c_out != c_in) slice is zero.
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.arange(size, dtype=np.float64)
    filt_1d = 1 - np.abs(og - center) / factor  # (size,)
    filt = np.outer(filt_1d, filt_1d)  # (size, size)
    kernel = np.zeros((size, size, channels, channels), np.float32)
    kernel[:, :, np.arange(channels), np.arange(channels)] = filt[..., None]
    return kernel


@keras.saving.register_keras_serializable(package="kfcn")
class BilinearUpsampling(keras.initializers.Initializer):
    """Initialises a square `Conv2DTranspose` kernel (k, k, C, C) to per-channel bilinear
    upsampling. With stride s, kernel 2s and padding "same", output pixel centres line up with the
    input's: a constant map stays constant away from the border and a linear ramp stays linear."""

    def __call__(self, shape, dtype=None):
        k_h, k_w, c_out, c_in = shape
        if k_h != k_w or c_out != c_in:
            raise ValueError(
                f"BilinearUpsampling needs a square kernel with as many outputs as inputs; "
                f"got shape {tuple(shape)}"
            )
        return keras.ops.convert_to_tensor(bilinear_kernel(k_h, c_in), dtype=dtype or "float32")

    def get_config(self):
        return {}


def _upsample(x, factor: int, name: str, num_classes: int, weight_decay: float, trainable: bool):
    """Bilinear-initialised x`factor` transposed convolution: (B, h, w, C) -> (B, h*f, w*f, C)."""
    layer = keras.layers.Conv2DTranspose(
        num_classes,
        2 * factor,
        strides=factor,
        padding="same",
        use_bias=False,
        kernel_initializer=BilinearUpsampling(),
        kernel_regularizer=keras.regularizers.L2(weight_decay) if weight_decay > 0 else None,
        name=name,
    )
    layer.trainable = trainable
    return layer(x)


def _score(x, name: str, num_classes: int, weight_decay: float):
    """1x1 class-scoring convolution, zero-initialised as in the paper: a new skip starts out
    contributing nothing, so a stage begins exactly where the previous one ended."""
    return keras.layers.Conv2D(
        num_classes,
        1,
        kernel_initializer="zeros",
        kernel_regularizer=keras.regularizers.L2(weight_decay) if weight_decay > 0 else None,
        name=name,
    )(x)


@keras.saving.register_keras_serializable(package="kfcn")
class CaffeCrop(keras.layers.Layer):
    """Caffe's Crop layer on NHWC maps: `[x, reference]` -> x[:, oh:oh + H, ow:ow + W, :] with
    (H, W) the reference's size and (oh, ow) `offset`."""

    def __init__(self, offset=(0, 0), **kwargs):
        super().__init__(**kwargs)
        self.offset = tuple(int(o) for o in offset)

    def call(self, inputs):
        x, reference = inputs  # (B, h, w, C), (B, H, W, .)
        oh, ow = self.offset
        size = keras.ops.shape(reference)
        return x[:, oh : oh + size[1], ow : ow + size[2], :]  # (B, H, W, C)

    def compute_output_shape(self, input_shapes):
        x, reference = input_shapes
        return (x[0], reference[1], reference[2], x[3])

    def get_config(self):
        return {**super().get_config(), "offset": list(self.offset)}


@keras.saving.register_keras_serializable(package="kfcn")
class ChannelScale(keras.layers.Layer):
    """Caffe's Scale layer without bias: one factor per channel, (B, h, w, C) -> (B, h, w, C).
    The at-once FCN-8s scales pool4 and pool3 before scoring them (factors 0.01 and 0.0001)."""

    def __init__(self, value: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.value = float(value)

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale",
            shape=(int(input_shape[-1]),),
            initializer=keras.initializers.Constant(self.value),
        )

    def call(self, x):
        return x * keras.ops.cast(self.scale, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "value": self.value}


# The Caffe FCNs' decoders (fcn.berkeleyvision.org): each transposed convolution's (kernel,
# stride) and each crop's offset, by kfcn layer name; `score` crops the upsampled scores to the
# input. The at-once FCN-8s scales pool4 and pool3 by these factors before scoring them.
CAFFE_UPSAMPLING = {
    "fcn32": {"upscore32": (64, 32)},
    "fcn16": {"upscore2": (4, 2), "upscore16": (32, 16)},
    "fcn8": {"upscore2": (4, 2), "upscore_pool4": (4, 2), "upscore8": (16, 8)},
}
CAFFE_CROPS = {
    "fcn32": {"score": 19},
    "fcn16": {"score_pool4c": 5, "score": 27},
    "fcn8": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
}
AT_ONCE_SCALES = {"scale_pool4": 0.01, "scale_pool3": 0.0001}


def caffe_layout(variant: str, layout: dict | None = None) -> dict:
    """The Caffe topology's parameters for `variant`, the FCN values overridden by `layout`.

    Keys: `conv1_pad` (zero padding before block1_conv1, 100); `upsampling` {layer: [kernel,
    stride]}; `crops` {layer: [offset_h, offset_w]}; `deconv_bias` (the transposed convolutions
    that have a bias); `at_once` (the Scale layers before score_pool4 and score_pool3).
    """
    layout = dict(layout or {})
    out = {
        "conv1_pad": 100,
        "upsampling": {k: list(v) for k, v in CAFFE_UPSAMPLING[variant].items()},
        "crops": {k: [v, v] for k, v in CAFFE_CROPS[variant].items()},
        "deconv_bias": [],
        "at_once": False,
    }
    unknown = sorted(set(layout) - set(out))
    if unknown:
        raise ConfigError(f"Caffe layout: unknown keys {', '.join(unknown)}")
    for key in ("upsampling", "crops"):
        extra = sorted(set(layout.get(key, {})) - set(out[key]))
        if extra:
            raise ConfigError(f"Caffe layout of {variant}: no layers {', '.join(extra)} in {key}")
        out[key].update({k: [int(x) for x in v] for k, v in layout.get(key, {}).items()})
    for key in ("conv1_pad", "deconv_bias", "at_once"):
        if key in layout:
            out[key] = layout[key]
    out["conv1_pad"] = int(out["conv1_pad"])
    out["deconv_bias"] = sorted(str(n) for n in out["deconv_bias"])
    out["at_once"] = bool(out["at_once"]) and variant != "fcn32"
    return out


def _caffe_upsample(x, name, layout, num_classes, weight_decay, trainable):
    """A transposed convolution as Caffe's Deconvolution (no padding): (B, h, w, C) ->
    (B, (h - 1) * s + k, (w - 1) * s + k, C)."""
    kernel, stride = layout["upsampling"][name]
    layer = keras.layers.Conv2DTranspose(
        num_classes,
        kernel,
        strides=stride,
        padding="valid",
        use_bias=name in layout["deconv_bias"],
        kernel_initializer=BilinearUpsampling(),
        kernel_regularizer=keras.regularizers.L2(weight_decay) if weight_decay > 0 else None,
        name=name,
    )
    layer.trainable = trainable
    return layer(x)


def _caffe_skip(features, name, layout, num_classes, weight_decay):
    """score_pool4 / score_pool3 on the pool4 / pool3 features, after the at-once net's Scale."""
    if layout["at_once"]:
        scale_name = name.replace("score", "scale")
        scale = ChannelScale(AT_ONCE_SCALES[scale_name], name=scale_name)
        scale.trainable = False  # fixed in the published net (lr_mult 0)
        features = scale(features)
    return _score(features, name, num_classes, weight_decay)


def _caffe_decoder(variant, images, score_fr, features, layout, c, wd, up):
    """The Caffe FCN decoders: transposed convolutions, skips cropped to the upsampled scores,
    and the final crop to the input's size. Returns (B, H, W, C) scores."""
    crops = layout["crops"]
    if variant == "fcn32":
        x = _caffe_upsample(score_fr, "upscore32", layout, c, wd, up)
    else:
        x = _caffe_upsample(score_fr, "upscore2", layout, c, wd, up)
        pool4 = _caffe_skip(features[16], "score_pool4", layout, c, wd)
        pool4 = CaffeCrop(crops["score_pool4c"], name="score_pool4c")([pool4, x])
        x = keras.layers.Add(name="fuse_pool4")([x, pool4])
        if variant == "fcn16":
            x = _caffe_upsample(x, "upscore16", layout, c, wd, up)
        else:
            x = _caffe_upsample(x, "upscore_pool4", layout, c, wd, up)
            pool3 = _caffe_skip(features[8], "score_pool3", layout, c, wd)
            pool3 = CaffeCrop(crops["score_pool3c"], name="score_pool3c")([pool3, x])
            x = keras.layers.Add(name="fuse_pool3")([x, pool3])
            x = _caffe_upsample(x, "upscore8", layout, c, wd, up)
    return CaffeCrop(crops["score"], name="score")([x, images])  # (B, H, W, C)


def _check_args(variant, num_classes, weight_decay, dropout) -> None:
    if variant not in VARIANTS:
        raise ModelError(
            f"unknown model variant {variant!r}; expected one of {', '.join(VARIANTS)}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(
            f"model.num_classes = {num_classes!r} is not allowed; expected an int >= 2"
        )
    if not 0 <= weight_decay:
        raise ConfigError(f"train.weight_decay = {weight_decay!r} is not allowed; expected >= 0")
    if not 0 <= dropout < 1:
        raise ConfigError(f"model.dropout = {dropout!r} is not allowed; expected 0 <= dropout < 1")


def build_fcn(
    variant: str,
    num_classes: int = 21,
    backbone: str = "vgg16",
    backbone_weights: str = "imagenet",
    weight_decay: float = 1e-5,
    dropout: float = 0.5,
    train_upsampling: bool = False,
    widths=None,
    topology: str | None = "kfcn",
    layout: dict | None = None,
) -> keras.Model:
    """Build an FCN as a functional Keras model.

    Args:
        variant: 'fcn32', 'fcn16' or 'fcn8'.
        num_classes: classes including background.
        backbone: 'vgg16', 'resnet50' or 'mobilenetv2' (`kfcn.models.backbones`).
        backbone_weights: 'imagenet' (the backbone's ImageNet weights from `keras.applications`;
            for VGG16 fc1/fc2 are convolutionized into fc6/fc7), 'none' (random initialisation)
            or the path of a Keras weights file: VGG16 with the classifier top, ResNet-50 and
            MobileNetV2 without it.
        weight_decay: L2 strength on every kernel (biases are not decayed).
        dropout: rate of `drop6` and `drop7` (VGG16) or `head_drop` (the others).
        train_upsampling: learn the transposed convolutions; otherwise they stay fixed bilinear.
        widths: VGG16 only (`model.widths`): the filters of blocks 1-5, fc6 and fc7 as seven
            ints, 'small' (16, 32, 64, 128, 128, 256, 256) or None for VGG16's own. Any widths
            give the same layers, names and skips; pretrained weights need the default ones.
        topology: 'kfcn' (or None: "same" convolutions and exact 2x pooling: H and W multiples of 32) or
            'caffe' (VGG16 only: the published Caffe FCNs' net, for any H and W: Caffe's mean,
            conv1_1 padded by 100, ceil-mode pooling, fc6 unpadded, unpadded transposed
            convolutions and crops; see `caffe_layout`).
        layout: the 'caffe' topology's parameters where they differ from the FCN values
            (`caffe_layout`); the converter takes them from the Caffe file.

    Returns:
        Model mapping (B, H, W, 3) RGB images in 0-255 (H and W multiples of 32 for 'kfcn'), to
        (B, H, W, num_classes) float32 logits (float32 also under a mixed-precision policy).

    Raises:
        ModelError: unknown variant, or backbone weights that cannot be loaded.
        ConfigError: a bad number of classes, weight decay, dropout rate or widths.
    """
    _check_args(variant, num_classes, weight_decay, dropout)
    net = get_backbone(backbone)
    topology = topology or "kfcn"
    if topology not in TOPOLOGIES:
        raise ConfigError(
            f"model.topology = {topology!r} is not allowed; expected one of {', '.join(TOPOLOGIES)}"
        )
    if topology == "caffe" and not hasattr(net, "caffe_features"):
        raise ConfigError(
            f"model.topology = 'caffe' is not allowed with model.backbone = {backbone!r}; "
            "the Caffe FCNs are VGG16 nets: set model.backbone: vgg16"
        )
    check_widths_fit(backbone, backbone_weights, widths)
    # Only backbones of adjustable width (VGG16) take `widths`; the others were refused above.
    width_args = () if widths is None else (net.resolve_widths(widths),)
    if backbone_weights is None or not str(backbone_weights).strip():
        raise ConfigError(
            f"model.backbone_weights = {backbone_weights!r} is not allowed; expected 'imagenet', "
            f"'none' or a path to {net.WEIGHTS_HELP}"
        )
    # Read the weights first: a bad file then fails before the model (0.5 GB for VGG16) is built.
    pretrained = None
    weights = str(backbone_weights).strip()
    if weights.lower() == "imagenet":
        pretrained = net.pretrained_weights("imagenet")
    elif weights.lower() != "none":
        pretrained = net.pretrained_weights(weights)
    c, wd, up = num_classes, weight_decay, train_upsampling

    # --- backbone and its stride-32 head (VGG16: fc6/fc7; the others: fcn_head)
    images = keras.Input((None, None, 3), name="image")  # (B, H, W, 3) RGB 0-255
    if topology == "caffe":
        layout = caffe_layout(variant, layout)
        features = net.caffe_features(images, wd, *width_args, conv1_pad=layout["conv1_pad"])
        top = net.caffe_head(features[32], wd, dropout, *width_args)
    else:
        features = net.features(images, wd, *width_args)  # {8: (B, H/8, W/8, .), 16, 32}
        top = net.head(features[32], wd, dropout, *width_args)  # (B, H/32, W/32, channels)
    score_fr = _score(top, "score_fr", c, wd)  # (B, H/32, W/32, C)

    # --- decoder: skips from stride 16 (fcn16, fcn8) and stride 8 (fcn8)
    if topology == "caffe":
        x = _caffe_decoder(variant, images, score_fr, features, layout, c, wd, up)
    elif variant == "fcn32":
        x = _upsample(score_fr, 32, "upscore32", c, wd, up)  # (B, H, W, C)
    else:
        x = _upsample(score_fr, 2, "upscore2", c, wd, up)  # (B, H/16, W/16, C)
        pool4 = _score(features[16], "score_pool4", c, wd)
        x = keras.layers.Add(name="fuse_pool4")([x, pool4])
        if variant == "fcn16":
            x = _upsample(x, 16, "upscore16", c, wd, up)  # (B, H, W, C)
        else:
            x = _upsample(x, 2, "upscore_pool4", c, wd, up)  # (B, H/8, W/8, C)
            pool3 = _score(features[8], "score_pool3", c, wd)
            x = keras.layers.Add(name="fuse_pool3")([x, pool3])
            x = _upsample(x, 8, "upscore8", c, wd, up)  # (B, H, W, C)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    model = keras.Model(images, logits, name=variant)

    if pretrained is not None:
        for name, values in pretrained.items():
            model.get_layer(name).set_weights(values)
    return model


def build_fcn_from_config(variant: str, model_cfg: ModelConfig, weight_decay: float) -> keras.Model:
    """`build_fcn` with the values of a `ModelConfig` (freezing is applied by `apply_freeze`)."""
    return build_fcn(
        variant,
        num_classes=model_cfg.num_classes,
        backbone=model_cfg.backbone,
        backbone_weights=model_cfg.backbone_weights,
        weight_decay=weight_decay,
        dropout=model_cfg.dropout,
        train_upsampling=model_cfg.train_upsampling,
        widths=model_cfg.widths,
        topology=model_cfg.topology,
    )


def topology_of(model: keras.Model) -> str:
    """'caffe' for a model of the Caffe topology (its preprocessing is Caffe's), else 'kfcn'."""
    from kfcn.models.backbones.vgg16 import CaffePreprocess

    names = {layer.name for layer in model.layers}
    caffe = "preprocess" in names and isinstance(model.get_layer("preprocess"), CaffePreprocess)
    return "caffe" if caffe else "kfcn"


def layout_of(model: keras.Model) -> dict:
    """The `caffe_layout` a Caffe-topology model was built with, read from its layers."""
    layers = {layer.name: layer for layer in model.layers}
    pad = layers.get("block1_conv1_pad")
    upsampling, bias, crops = {}, [], {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            upsampling[layer.name] = [int(layer.kernel_size[0]), int(layer.strides[0])]
            if layer.use_bias:
                bias.append(layer.name)
        elif isinstance(layer, CaffeCrop):
            crops[layer.name] = list(layer.offset)
    return {
        "conv1_pad": int(pad.padding[0][0]) if pad is not None else 0,
        "upsampling": upsampling,
        "crops": crops,
        "deconv_bias": sorted(bias),
        "at_once": "scale_pool4" in layers,
    }


def stage_topology(variant: str, requested: str | None, source: keras.Model, where: str):
    """The topology and Caffe layout of a stage that starts from `source`'s weights: those of
    `source` (the Caffe layout only where `source` is the same variant; else the FCN values
    with its conv1_1 padding).

    Returns:
        `(topology, layout)` for `build_fcn`.

    Raises:
        ConfigError: `requested` (model.topology) is set and differs from the source's.
    """
    topology = topology_of(source)
    if requested is not None and requested != topology:
        raise ConfigError(
            f"model.topology = {requested!r}, but {where} is a model of the {topology!r} "
            f"topology; a stage keeps the topology of the model it starts from: set "
            f"model.topology: null (or {topology!r})"
        )
    if topology != "caffe":
        return topology, None
    layout = layout_of(source)
    if source.name != variant:
        layout = {"conv1_pad": layout["conv1_pad"]}
    return topology, layout


def num_classes_of(model: keras.Model) -> int:
    """The number of classes an FCN predicts (its output's last dimension)."""
    return int(model.output.shape[-1])


# The layers whose weights depend on the classes: the score layers and the upsampling between
# them (C -> C transposed convolutions). `reinit_head` leaves them as built.
HEAD_LAYERS = (
    "score_fr",
    "score_pool4",
    "score_pool3",
    "upscore2",
    "upscore_pool4",
    "upscore8",
    "upscore16",
    "upscore32",
)


def transfer_weights(
    source, target: keras.Model, where: str | None = None, reinit_head: bool = False
) -> list[str]:
    """Initialise `target` from a trained earlier stage: FCN-16s from FCN-32s, FCN-8s from FCN-16s.

    Every layer of `target` that has weights and a namesake in `source` takes that layer's weights
    (the backbone, fc6/fc7, score_fr and, for FCN-8s, score_pool4/upscore2); the new skip layers
    keep their zero initialisation.

    Args:
        source: a model, or the path of a model file saved by `kfcn.models.save_model`.
        target: the model to initialise, in place.
        where: how messages name a source given as a model (default "source model").
        reinit_head: leave the class-dependent layers (`HEAD_LAYERS`) as built, so that a model
            trained on other classes initialises everything else (fine-tuning on new classes).

    Returns:
        The names of the layers whose weights were copied.

    Raises:
        ModelError: the source cannot be loaded, predicts a different number of classes, or has a
            same-named layer with differently shaped weights.
    """
    where = where or "source model"
    if not isinstance(source, keras.Model):
        from kfcn.models.io import load_model  # io imports this module

        where = str(source)
        source, _ = load_model(source)
    src_net, dst_net = backbone_of(source), backbone_of(target)
    if src_net and dst_net and src_net != dst_net:
        raise ModelError(
            f"{where}: an FCN on {src_net} but the new model is on {dst_net}; "
            "set model.backbone to match the earlier stage"
        )
    src_c, dst_c = num_classes_of(source), num_classes_of(target)
    if src_c != dst_c and not reinit_head:
        raise ModelError(
            f"{where}: predicts {src_c} classes but the new model has {dst_c}; "
            "set model.num_classes to match the earlier stage"
        )
    copied = []
    for layer in target.layers:
        if not layer.weights or (reinit_head and layer.name in HEAD_LAYERS):
            continue
        try:
            src_layer = source.get_layer(layer.name)
        except ValueError:
            continue
        want = [tuple(w.shape) for w in layer.weights]
        got = [tuple(w.shape) for w in src_layer.weights]
        if want != got:
            raise ModelError(
                f"{where}: layer '{layer.name}' has weight shapes {got} but the new model needs "
                f"{want}; the models are not stages of the same FCN"
            )
        # Variable to variable: no NumPy copy of fc6's 0.4 GB kernel.
        for dst, src in zip(layer.weights, src_layer.weights, strict=True):
            dst.assign(src.value)
        copied.append(layer.name)
    return copied


def backbone_layers(model: keras.Model, stride: int | None = None) -> list[str]:
    """The names of the backbone layers with weights of an FCN up to its stride-`stride` features
    (all of the backbone when None): every such layer those features are computed from.

    Raises:
        ConfigError: the model's backbone is unknown or has no features at that stride.
    """
    name = backbone_of(model)
    if name is None:
        raise ConfigError(f"model.freeze: cannot tell the backbone of {model.name}")
    features = get_backbone(name).FEATURES
    if stride is None:
        stride = max(features)
    if stride not in features:
        raise ConfigError(
            f"model.freeze: {name} has no stride-{stride} features; expected "
            + ", ".join(f"backbone:stride{s}" for s in sorted(features))
        )
    end = model.get_layer(features[stride]).output
    # A sub-model from the input to those features holds exactly the layers they depend on.
    upstream = keras.Model(model.inputs, end)
    inside = {layer.name for layer in upstream.layers if layer.weights}
    return [layer.name for layer in model.layers if layer.name in inside]


def _pattern_layers(model: keras.Model, pattern: str, names: list[str]) -> list[str]:
    """The layer names a freeze pattern stands for: `backbone`, `backbone:strideN` or fnmatch."""
    if pattern == "backbone":
        return backbone_layers(model)
    if pattern.startswith("backbone:"):
        stride = pattern.split(":", 1)[1]
        if not (stride.startswith("stride") and stride[6:].isdigit()):
            raise ConfigError(
                f"model.freeze: pattern {pattern!r} is not allowed; expected backbone, "
                "backbone:strideN (N = 4, 8, 16 or 32) or layer-name patterns"
            )
        return backbone_layers(model, int(stride[6:]))
    return [name for name in names if fnmatch.fnmatchcase(name, pattern)]


def apply_freeze(model: keras.Model, patterns) -> list[str]:
    """Freeze (trainable=False) every layer that one of `patterns` names.

    A pattern is an fnmatch layer-name pattern (`block1_conv*`, `fc6`), `backbone` (the whole
    backbone) or `backbone:strideN` (the backbone up to its stride-N features, N = 4, 8, 16 or
    32): the last two mean the same part of the network on every backbone, so one config fits
    them all. Call it before `compile`: Keras fixes the set of trained weights when compiling.

    Returns:
        Names of the layers frozen, in model order.

    Raises:
        ConfigError: a pattern matches no layer (names the pattern and lists the layer names).
    """
    names = [layer.name for layer in model.layers]
    chosen: set[str] = set()
    for pattern in patterns:
        matched = _pattern_layers(model, pattern, names)
        if not matched:
            raise ConfigError(
                f"model.freeze: pattern {pattern!r} matches no layer of {model.name}; "
                f"layers: {', '.join(names)}"
            )
        chosen.update(matched)
    frozen = []
    for layer in model.layers:
        if layer.name in chosen:
            layer.trainable = False
            frozen.append(layer.name)
    return frozen
