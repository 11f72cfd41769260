"""What the backbones share: weight decay on Keras-application layers, the FCN head that scores a
backbone without fc6/fc7, and loading `keras.applications` weights with one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np

from kfcn.errors import ModelError


def l2(weight_decay: float):
    """An L2 regularizer of strength `weight_decay`, or None when it is zero."""
    return keras.regularizers.L2(weight_decay) if weight_decay > 0 else None


def add_weight_decay(layers, weight_decay: float) -> None:
    """Put L2 `weight_decay` on the kernel of every convolution and dense layer in `layers`.

    `keras.applications` builds its layers without regularizers. Setting the regularizer on the
    layer makes it part of the layer's config (so a saved model keeps it); setting it on the
    already-created variable makes Keras add the penalty to the loss now.
    """
    reg = l2(weight_decay)
    if reg is None:
        return
    for layer in layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            layer.depthwise_regularizer = reg
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            layer.kernel_regularizer = reg
        else:
            continue
        layer.kernel.regularizer = reg


def fcn_head(x, weight_decay: float, dropout: float):
    """torchvision's `FCNHead` without its last 1x1 convolution (that is kfcn's `score_fr`):
    3x3 convolution to a quarter of the channels (no bias), batch norm, ReLU, dropout.

    Args:
        x: (B, h, w, C) stride-32 backbone features.

    Returns:
        (B, h, w, C // 4) features for `score_fr`.
    """
    channels = int(x.shape[-1]) // 4
    x = keras.layers.Conv2D(
        channels,
        3,
        padding="same",
        use_bias=False,
        kernel_regularizer=l2(weight_decay),
        name="head_conv",
    )(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, name="head_bn")(x)
    x = keras.layers.ReLU(name="head_relu")(x)
    return keras.layers.Dropout(dropout, name="head_drop")(x)  # (B, h, w, C // 4)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(":") if text else type(exc).__name__


def application_weights(factory, label: str, weights: str, file_hint: str) -> dict:
    """The weights, by layer name, of `factory(include_top=False, weights=weights)`.

    Args:
        factory: a `keras.applications` constructor (ResNet50, MobileNetV2).
        label: the network's name in messages.
        weights: 'imagenet' (Keras downloads the file on first use) or the path of a weights
            file for the network without its classifier top.
        file_hint: the name of the official Keras weights file, for messages.

    Raises:
        ModelError: the weights cannot be downloaded, or the file is missing, unreadable or not
            weights of this network.
    """
    if weights == "imagenet":
        try:
            app = factory(include_top=False, weights="imagenet", input_shape=(None, None, 3))
        except Exception as exc:  # the download can fail in many ways (network, proxy, disk)
            raise ModelError(
                f"cannot get the ImageNet {label} weights (Keras downloads them to "
                f"~/.keras/models on first use): {_first_line(exc)}; download {file_hint} and "
                "pass its path as model.backbone_weights"
            ) from None
    else:
        path = Path(weights).expanduser()
        expected = (
            f"expected 'imagenet', 'none' or a Keras {label} weights file without the classifier "
            f"top (such as {file_hint})"
        )
        if not path.is_file():
            raise ModelError(f"{weights}: backbone weights file not found; {expected}")
        if not os.access(path, os.R_OK):
            raise ModelError(f"{weights}: backbone weights file is not readable")
        try:
            app = factory(include_top=False, weights=str(path), input_shape=(None, None, 3))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(
                f"{weights}: cannot load as {label} weights ({_first_line(exc)}); {expected}"
            ) from None
    out: dict[str, list[np.ndarray]] = {
        layer.name: layer.get_weights() for layer in app.layers if layer.weights
    }
    del app
    return out
