"""FCN-32s, FCN-16s and FCN-8s on VGG16 (Shelhamer, Long & Darrell, 2016), stage transfer and
freezing.

    images (B, H, W, 3) RGB 0-255 --VGG16--> block3_pool (H/8), block4_pool (H/16), block5_pool (H/32)
    block5_pool -> fc6 -> fc7 -> score_fr                                   (B, H/32, W/32, C)
    fcn32: score_fr --upscore32 (x32)--------------------------------------> (B, H, W, C)
    fcn16: score_fr --upscore2 (x2)--> + score_pool4 = fuse_pool4 --upscore16 (x16)--> (B, H, W, C)
    fcn8:  fuse_pool4 --upscore_pool4 (x2)--> + score_pool3 = fuse_pool3 --upscore8 (x8)--> ...

Layer names are stable so a trained stage initialises the next one by name (`transfer_weights`).
H and W must be multiples of 32; `kfcn.padding` pads any image to that and crops the logits back.
"""

from __future__ import annotations

import fnmatch

import keras
import numpy as np

from kfcn.config import STAGES, ModelConfig
from kfcn.errors import ConfigError, ModelError
from kfcn.models.vgg import (
    fully_convolutional_head,
    imagenet_backbone_weights,
    set_backbone_weights,
    vgg16_features,
)

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
    backbone_weights: str = "imagenet",
    weight_decay: float = 1e-5,
    dropout: float = 0.5,
    train_upsampling: bool = False,
) -> keras.Model:
    """Build an FCN as a functional Keras model.

    Args:
        variant: 'fcn32', 'fcn16' or 'fcn8'.
        num_classes: classes including background.
        backbone_weights: 'imagenet' (VGG16 ImageNet weights, fc1/fc2 convolutionized into
            fc6/fc7), 'none' (random initialisation) or the path of a Keras VGG16 weights file
            with the classifier top.
        weight_decay: L2 strength on every kernel (biases are not decayed).
        dropout: rate of `drop6` and `drop7`.
        train_upsampling: learn the transposed convolutions; otherwise they stay fixed bilinear.

    Returns:
        Model mapping (B, H, W, 3) RGB images in 0-255, H and W multiples of 32, to
        (B, H, W, num_classes) float32 logits (float32 also under a mixed-precision policy).

    Raises:
        ModelError: unknown variant, or backbone weights that cannot be loaded.
        ConfigError: a bad number of classes, weight decay or dropout rate.
    """
    _check_args(variant, num_classes, weight_decay, dropout)
    if backbone_weights is None or not str(backbone_weights).strip():
        raise ConfigError(
            f"model.backbone_weights = {backbone_weights!r} is not allowed; expected 'imagenet', "
            "'none' or a path to a Keras VGG16 weights file"
        )
    # Read the weights first: a bad file then fails before the 0.5 GB model is built.
    pretrained = None
    weights = str(backbone_weights).strip()
    if weights.lower() == "imagenet":
        pretrained = imagenet_backbone_weights("imagenet")
    elif weights.lower() != "none":
        pretrained = imagenet_backbone_weights(weights)
    c, wd, up = num_classes, weight_decay, train_upsampling

    # --- backbone: VGG16 convolutions and convolutionized fc6/fc7
    images = keras.Input((None, None, 3), name="image")  # (B, H, W, 3) RGB 0-255
    features = vgg16_features(images, wd)
    fc7 = fully_convolutional_head(features["block5_pool"], wd, dropout)  # (B, H/32, W/32, 4096)
    score_fr = _score(fc7, "score_fr", c, wd)  # (B, H/32, W/32, C)

    # --- decoder: skips from pool4 (fcn16, fcn8) and pool3 (fcn8)
    if variant == "fcn32":
        x = _upsample(score_fr, 32, "upscore32", c, wd, up)  # (B, H, W, C)
    else:
        x = _upsample(score_fr, 2, "upscore2", c, wd, up)  # (B, H/16, W/16, C)
        pool4 = _score(features["block4_pool"], "score_pool4", c, wd)
        x = keras.layers.Add(name="fuse_pool4")([x, pool4])
        if variant == "fcn16":
            x = _upsample(x, 16, "upscore16", c, wd, up)  # (B, H, W, C)
        else:
            x = _upsample(x, 2, "upscore_pool4", c, wd, up)  # (B, H/8, W/8, C)
            pool3 = _score(features["block3_pool"], "score_pool3", c, wd)
            x = keras.layers.Add(name="fuse_pool3")([x, pool3])
            x = _upsample(x, 8, "upscore8", c, wd, up)  # (B, H, W, C)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    model = keras.Model(images, logits, name=variant)

    if pretrained is not None:
        set_backbone_weights(model, pretrained)
    return model


def build_fcn_from_config(variant: str, model_cfg: ModelConfig, weight_decay: float) -> keras.Model:
    """`build_fcn` with the values of a `ModelConfig` (freezing is applied by `apply_freeze`)."""
    return build_fcn(
        variant,
        num_classes=model_cfg.num_classes,
        backbone_weights=model_cfg.backbone_weights,
        weight_decay=weight_decay,
        dropout=model_cfg.dropout,
        train_upsampling=model_cfg.train_upsampling,
    )


def num_classes_of(model: keras.Model) -> int:
    """The number of classes an FCN predicts (its output's last dimension)."""
    return int(model.output.shape[-1])


def transfer_weights(source, target: keras.Model) -> list[str]:
    """Initialise `target` from a trained earlier stage: FCN-16s from FCN-32s, FCN-8s from FCN-16s.

    Every layer of `target` that has weights and a namesake in `source` takes that layer's weights
    (the backbone, fc6/fc7, score_fr and, for FCN-8s, score_pool4/upscore2); the new skip layers
    keep their zero initialisation.

    Args:
        source: a model, or the path of a model file saved by `kfcn.models.save_model`.
        target: the model to initialise, in place.

    Returns:
        The names of the layers whose weights were copied.

    Raises:
        ModelError: the source cannot be loaded, predicts a different number of classes, or has a
            same-named layer with differently shaped weights.
    """
    where = "source model"
    if not isinstance(source, keras.Model):
        from kfcn.models.io import load_model  # io imports this module

        where = str(source)
        source, _ = load_model(source)
    src_c, dst_c = num_classes_of(source), num_classes_of(target)
    if src_c != dst_c:
        raise ModelError(
            f"{where}: predicts {src_c} classes but the new model has {dst_c}; "
            "set model.num_classes to match the earlier stage"
        )
    copied = []
    for layer in target.layers:
        if not layer.weights:
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


def apply_freeze(model: keras.Model, patterns) -> list[str]:
    """Freeze (trainable=False) every layer whose name matches one of the fnmatch `patterns`.

    Call it before `compile`: Keras fixes the set of trained weights when compiling.

    Returns:
        Names of the layers frozen, in model order.

    Raises:
        ConfigError: a pattern matches no layer (names the pattern and lists the layer names).
    """
    names = [layer.name for layer in model.layers]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise ConfigError(
                f"model.freeze: pattern {pattern!r} matches no layer of {model.name}; "
                f"layers: {', '.join(names)}"
            )
    frozen = []
    for layer in model.layers:
        if any(fnmatch.fnmatchcase(layer.name, p) for p in patterns):
            layer.trainable = False
            frozen.append(layer.name)
    return frozen
