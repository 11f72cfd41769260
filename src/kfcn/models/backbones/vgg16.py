"""The VGG16 backbone of the FCNs: preprocessing, convolution blocks, convolutionized fc6/fc7, and
the conversion of ImageNet VGG16 weights (with the classifier top) into it.

Layer names follow `keras.applications.VGG16` (`block1_conv1` ... `block5_pool`) so its weights
load by name; fc6/fc7 are the classifier's fc1/fc2 turned into convolutions, as in the FCN paper.
The stride-32 head is fc6/fc7 (`head`); the stride-16 and stride-8 skips are pool4 and pool3.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import keras
import numpy as np

from kfcn.config import VGG16_WIDTHS, WIDTH_NAMES, WIDTHS_ALLOWED, is_width_list
from kfcn.errors import ConfigError, ModelError
from kfcn.models.backbones.common import Float32Preprocess, GlobalBatchDropout
from kfcn.models.backbones.common import l2 as _l2
from kfcn.padding import IMAGENET_MEAN_RGB

NAME = "vgg16"
LABEL = "VGG16"
WEIGHTS_HELP = "a Keras VGG16 weights file with the classifier top"
# The layer that outputs each stride's features (what `features` returns, by stride).
FEATURES = {4: "block2_pool", 8: "block3_pool", 16: "block4_pool", 32: "block5_pool"}

# (block, number of 3x3 convolutions, filters) as in VGG16.
BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
CONV_LAYERS = tuple(f"block{b}_conv{i}" for b, n, _ in BLOCKS for i in range(1, n + 1))

# Random initialisation (`backbone_weights: none`) is He normal, as for VGG trained from scratch
# (torchvision draws its VGG the same way): Keras's default Glorot halves the signal's variance at
# each ReLU layer, and a 16-layer VGG without normalisation then learns slowly. Measured on the
# demo's recipe (the small network, 360 steps): FCN-8s val mean IoU 45.2 % from Glorot, 92.7 % from He.
INITIALIZER = "he_normal"

# `model.widths`: the filters of blocks 1-5, then of fc6 and fc7. The same layers, names, strides
# and skips at any width; only the default widths match the ImageNet weights.
WIDTHS = VGG16_WIDTHS  # VGG16's own (64, 128, 256, 512, 512, 4096, 4096): 134 M weights
# "small": 1/4 of VGG16's convolution widths and 1/16 of fc6/fc7's: 2.7 M weights in an FCN-8s
# (134 M at VGG16's widths), ~20x fewer operations per pixel. It trains from scratch in minutes
# on a CPU; the test suite and the demo use it.
NAMED_WIDTHS = {"small": (16, 32, 64, 128, 128, 256, 256)}
if tuple(NAMED_WIDTHS) != WIDTH_NAMES:  # config.py validates model.widths against that list
    raise ImportError(f"kfcn.config.WIDTH_NAMES must list {tuple(NAMED_WIDTHS)}")


def resolve_widths(widths) -> tuple[int, ...]:
    """The seven widths that `model.widths` stands for: None -> VGG16's, a name -> its preset,
    a sequence of seven positive ints -> itself.

    Raises:
        ConfigError: anything else (names the value and the valid forms).
    """
    if widths is None:
        return WIDTHS
    if isinstance(widths, str) and widths in NAMED_WIDTHS:
        return NAMED_WIDTHS[widths]
    if is_width_list(widths):
        return tuple(widths)
    raise ConfigError(f"model.widths = {widths!r} is not allowed; expected {WIDTHS_ALLOWED}")


def to_bgr(images):
    """(..., 3) RGB -> BGR, as a gather of channels (2, 1, 0).

    Not `flip`: in an int8 TFLite file whose input needs no padding, the calibrated range of
    the flip's REVERSE_V2 came out as its values and the mean subtraction's together
    ([-123.7, 255] for 0-255 pixels), so its output got another scale than its input, and
    REVERSE_V2's int8 kernel copies bytes without rescaling: every pixel reached the network
    as about 1.5 * v - 123. A gather (GATHER) keeps its input's scale.
    """
    return keras.ops.take(images, [2, 1, 0], axis=-1)


@keras.saving.register_keras_serializable(package="kfcn")
class VGGPreprocess(Float32Preprocess):
    """VGG16's input preprocessing: RGB -> BGR, then subtract the ImageNet mean (BGR order).

    Input (B, H, W, 3) RGB in 0-255; output (B, H, W, 3) float32, zero-mean BGR. It always computes
    in float32 (even under a mixed-precision policy) so the mean subtraction is exact; the first
    convolution casts afterwards.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mean_bgr = tuple(reversed(IMAGENET_MEAN_RGB))

    def call(self, images):
        images = keras.ops.cast(images, "float32")  # (B, H, W, 3) RGB
        return to_bgr(images) - keras.ops.convert_to_tensor(self.mean_bgr, "float32")


CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)
"""The per-channel mean (B, G, R) the published Caffe FCNs subtract."""


@keras.saving.register_keras_serializable(package="kfcn")
class CaffePreprocess(Float32Preprocess):
    """The Caffe FCNs' input preprocessing: RGB -> BGR, then subtract their BGR mean (no scaling).

    Input (B, H, W, 3) RGB in 0-255; output (B, H, W, 3) float32. A model with this layer takes
    any input size (`input_multiple` 1): its convolutions pad and its pooling rounds up as in
    Caffe, and crops bring the scores back to the input's size.
    """

    input_multiple = 1

    def call(self, images):
        images = keras.ops.cast(images, "float32")  # (B, H, W, 3) RGB
        return to_bgr(images) - keras.ops.convert_to_tensor(CAFFE_MEAN_BGR, "float32")


def vgg16_features(
    images, weight_decay: float, widths=WIDTHS, caffe_conv1_pad: int | None = None
) -> dict:
    """Apply preprocessing and the 13 VGG16 convolutions to `images` (B, H, W, 3) RGB 0-255.

    Args:
        widths: filters per block (the first five of `model.widths`); VGG16's by default.
        caffe_conv1_pad: None for kfcn's topology (H, W multiples of 32, "same" convolutions,
            exact 2x pooling); else the Caffe FCN's (`CaffePreprocess`, this zero padding before
            `block1_conv1`, max pooling that rounds up as Caffe's ceil mode does).

    Returns:
        The pooled feature maps by layer name: `block3_pool` (B, H/8, W/8, 256), `block4_pool`
        (B, H/16, W/16, 512) and `block5_pool` (B, H/32, W/32, 512) at the default widths
        (kfcn's topology; Caffe's are larger by the padding, rounded up).
    """
    caffe = caffe_conv1_pad is not None
    x = (CaffePreprocess if caffe else VGGPreprocess)(name="preprocess")(images)
    if caffe and caffe_conv1_pad:
        x = keras.layers.ZeroPadding2D(caffe_conv1_pad, name="block1_conv1_pad")(x)
    pooled = {}
    for (block, convs, _), filters in zip(BLOCKS, widths[:5], strict=True):
        for i in range(1, convs + 1):
            x = keras.layers.Conv2D(
                filters,
                3,
                padding="valid" if caffe and (block, i) == (1, 1) else "same",
                activation="relu",
                kernel_initializer=INITIALIZER,
                kernel_regularizer=_l2(weight_decay),
                name=f"block{block}_conv{i}",
            )(x)
        # 2x2 windows at stride 2 with "same" padding at the bottom/right: ceil(h / 2) outputs,
        # the last one over the one remaining row, which is Caffe's ceil-mode pooling.
        x = keras.layers.MaxPooling2D(
            2, strides=2, padding="same" if caffe else "valid", name=f"block{block}_pool"
        )(x)
        pooled[f"block{block}_pool"] = x
    return pooled


def fully_convolutional_head(
    pool5, weight_decay: float, dropout: float, widths=(4096, 4096), caffe: bool = False
):
    """fc6 (7x7 conv, 4096) and fc7 (1x1 conv, 4096), each with ReLU and dropout.

    Args:
        pool5: (B, h, w, 512) `block5_pool` features.
        widths: the filters of fc6 and fc7 (VGG16's 4096 by default).
        caffe: fc6 without padding, as in the Caffe FCNs ((h - 6, w - 6) outputs).

    Returns:
        (B, h, w, 4096) fc7 features after dropout.
    """
    fc6_width, fc7_width = widths
    x = keras.layers.Conv2D(
        fc6_width,
        7,
        padding="valid" if caffe else "same",
        activation="relu",
        kernel_initializer=INITIALIZER,
        kernel_regularizer=_l2(weight_decay),
        name="fc6",
    )(pool5)
    x = GlobalBatchDropout(dropout, name="drop6")(x)
    x = keras.layers.Conv2D(
        fc7_width,
        1,
        activation="relu",
        kernel_initializer=INITIALIZER,
        kernel_regularizer=_l2(weight_decay),
        name="fc7",
    )(x)
    return GlobalBatchDropout(dropout, name="drop7")(x)  # (B, h, w, 4096)


def _imagenet_vgg16(weights: str):
    """`keras.applications.VGG16` with its classifier top, loaded from `weights` ('imagenet' or a
    file path). Raises ModelError with one line when the weights cannot be had."""
    if weights == "imagenet":
        try:
            return keras.applications.VGG16(include_top=True, weights="imagenet")
        except Exception as exc:  # the download can fail in many ways (network, proxy, disk)
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(
                "cannot get the ImageNet VGG16 weights (Keras downloads them to ~/.keras/models on "
                f"first use): {reason}; download vgg16_weights_tf_dim_ordering_tf_kernels.h5 and "
                "pass its path as model.backbone_weights"
            ) from None
    path = Path(weights).expanduser()
    expected = (
        "expected 'imagenet', 'none' or a Keras VGG16 weights file with the classifier top "
        "(vgg16_weights_tf_dim_ordering_tf_kernels.h5, not the _notop file)"
    )
    if not path.is_file():
        raise ModelError(f"{weights}: backbone weights file not found; {expected}")
    if not os.access(path, os.R_OK):
        raise ModelError(f"{weights}: backbone weights file is not readable")
    try:
        return keras.applications.VGG16(include_top=True, weights=str(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = (
            str(exc).strip().splitlines()[0].rstrip(":") if str(exc).strip() else type(exc).__name__
        )
        raise ModelError(
            f"{weights}: cannot load as VGG16 weights ({reason}); {expected}"
        ) from None


def convert_vgg16_weights(vgg16) -> dict[str, list[np.ndarray]]:
    """The weights of an ImageNet VGG16 (with top) in the FCN layout, by FCN layer name.

    The 13 convolutions are copied; fc1 (25088, 4096) becomes the 7x7 fc6 kernel (7, 7, 512, 4096)
    — Keras flattened `block5_pool` channels-last, so row (i*7 + j)*512 + c is kernel[i, j, c] —
    and fc2 (4096, 4096) becomes the 1x1 fc7 kernel. The 1000-class `predictions` layer is dropped.
    """
    out = {name: vgg16.get_layer(name).get_weights() for name in CONV_LAYERS}
    fc1_kernel, fc1_bias = vgg16.get_layer("fc1").get_weights()
    fc2_kernel, fc2_bias = vgg16.get_layer("fc2").get_weights()
    out["fc6"] = [fc1_kernel.reshape(7, 7, 512, 4096), fc1_bias]
    out["fc7"] = [fc2_kernel.reshape(1, 1, 4096, 4096), fc2_bias]
    return out


def imagenet_backbone_weights(weights: str) -> dict[str, list[np.ndarray]]:
    """Read ImageNet VGG16 weights and convert them to the FCN layout (`convert_vgg16_weights`).

    Args:
        weights: 'imagenet' (Keras downloads the file on first use) or the path of a Keras VGG16
            weights file with the classifier top — anything
            `keras.applications.VGG16(include_top=True, weights=path)` accepts, such as the
            official vgg16_weights_tf_dim_ordering_tf_kernels.h5.

    Raises:
        ModelError: the file is missing, unreadable or not VGG16-with-top weights.
    """
    vgg16 = _imagenet_vgg16(weights)
    converted = convert_vgg16_weights(vgg16)
    # ~0.5 GB, no longer needed; a Keras model holds reference cycles, so only the collector
    # frees it before the FCN is built (measured: 3.9 GB peak RSS to build FCN-32s without it).
    del vgg16
    gc.collect()
    return converted


# --- the backbone interface (see kfcn.models.backbones)


def features(images, weight_decay: float, widths=WIDTHS) -> dict:
    """Preprocessing and the VGG16 convolutions on `images` (B, H, W, 3) RGB 0-255.

    Args:
        widths: the seven `model.widths` (`resolve_widths`); VGG16's by default.

    Returns:
        Feature maps by stride: 4 (B, H/4, W/4, 128), 8 (256), 16 (512) and 32 (512 channels)
        at the default widths (blocks 2-5's widths otherwise).
    """
    pooled = vgg16_features(images, weight_decay, widths)
    return {stride: pooled[name] for stride, name in FEATURES.items()}


def head(x, weight_decay: float, dropout: float, widths=WIDTHS):
    """fc6/fc7 on the stride-32 features: (B, h, w, 512) -> (B, h, w, 4096) at the default
    widths (the last two of `widths` otherwise)."""
    return fully_convolutional_head(x, weight_decay, dropout, widths[5:])


def caffe_features(images, weight_decay: float, widths=WIDTHS, conv1_pad: int = 100) -> dict:
    """`features` in the Caffe FCNs' topology (see `vgg16_features`): any input size."""
    pooled = vgg16_features(images, weight_decay, widths, caffe_conv1_pad=conv1_pad)
    return {stride: pooled[name] for stride, name in FEATURES.items()}


def caffe_head(x, weight_decay: float, dropout: float, widths=WIDTHS):
    """`head` in the Caffe FCNs' topology: fc6 without padding."""
    return fully_convolutional_head(x, weight_decay, dropout, widths[5:], caffe=True)


pretrained_weights = imagenet_backbone_weights


def set_backbone_weights(model, converted: dict[str, list[np.ndarray]]) -> list[str]:
    """Set the layers of an FCN `model` from `imagenet_backbone_weights` output; returns their names."""
    for name, values in converted.items():
        model.get_layer(name).set_weights(values)
    return list(converted)
