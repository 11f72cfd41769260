"""What the backbones share: weight decay on Keras-application layers, the FCN head that scores a
backbone without fc6/fc7, and loading `keras.applications` weights with one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kfcn.errors import ModelError


def l2(weight_decay: float):
    """An L2 regularizer of strength `weight_decay`, or None when it is zero."""
    return keras.regularizers.L2(weight_decay) if weight_decay > 0 else None


def synchronize_bn(layers) -> None:
    """Make every batch normalization of `layers` compute its training statistics over the
    global batch (all replicas together), so R replicas normalise as one replica at R times the
    batch. `keras.applications` builds them unsynchronized; the flag is part of the layer's config.
    """
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


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


@keras.saving.register_keras_serializable(package="kfcn")
class GlobalBatchDropout(keras.layers.Layer):
    """Dropout whose masks do not depend on how the global batch is split across replicas.

    Keras' `Dropout` draws one mask per replica from the same seed, so R replicas at batch b
    drop other units than one replica at batch R*b. This layer draws the mask of the whole
    global batch on every replica (the seed state advances the same way on all of them) and
    keeps its own replica's rows, so example j of a global batch gets the same mask however the
    batch is split. Outside training it is the identity.

    Args:
        rate: the fraction of units dropped, in [0, 1).
        seed: seed of the layer's seed generator.
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"Argument `rate` must be in [0, 1). Received: rate={rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        seed = tf.cast(self.seed_generator.next(), tf.int64)  # (2,)
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        replica = context.replica_id_in_sync_group if context is not None else 0
        shape = tf.shape(inputs)  # (b, h, w, c)
        batch = shape[0]
        noise = tf.random.stateless_uniform(tf.concat([[batch * replicas], shape[1:]], 0), seed)
        noise = noise[replica * batch : (replica + 1) * batch]  # (b, h, w, c): this replica's rows
        scale = tf.cast(1.0 / (1.0 - self.rate), inputs.dtype)
        return tf.where(noise >= self.rate, inputs * scale, tf.zeros_like(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


class Float32Preprocess(keras.layers.Layer):
    """Base of the backbones' preprocessing layers: shape-preserving, and always float32 (even
    under a mixed-precision policy) so the arithmetic on 0-255 pixels is exact; the first
    convolution casts afterwards.

    `input_multiple` is what the model declares about its input: its height and width must be
    multiples of it (`kfcn.padding` pads every image to that)."""

    input_multiple = 32

    def __init__(self, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)  # fixed to float32 by __init__
        return config


def application_features(application, preprocess, images, weight_decay: float, features: dict):
    """A `keras.applications` network (no top) on `preprocess(images)`, its stride features.

    Built on our tensor, the application's layers join the FCN's graph with their Keras names, so
    ImageNet weights, stage transfer and freeze patterns all work by layer name.

    Args:
        application: e.g. `keras.applications.ResNet50`.
        preprocess: the backbone's preprocessing layer (named "preprocess").
        images: (B, H, W, 3) RGB 0-255.
        weight_decay: L2 strength put on every kernel.
        features: stride -> name of the layer whose output is that stride's features.

    Returns:
        Feature maps by stride.
    """
    x = preprocess(images)
    app = application(include_top=False, weights=None, input_tensor=x)
    add_weight_decay(app.layers, weight_decay)
    synchronize_bn(app.layers)
    return {stride: app.get_layer(name).output for stride, name in features.items()}


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
    # Statistics over the global batch, as one replica would compute them (see synchronize_bn).
    x = keras.layers.BatchNormalization(epsilon=1e-5, synchronized=True, name="head_bn")(x)
    x = keras.layers.ReLU(name="head_relu")(x)
    return GlobalBatchDropout(dropout, name="head_drop")(x)  # (B, h, w, C // 4)


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
