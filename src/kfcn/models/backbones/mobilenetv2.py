"""The MobileNetV2 backbone (Sandler et al. 2018, width 1.0), as `keras.applications.MobileNetV2`
builds it.

Preprocessing is Keras's "tf" mode: pixels scaled to [-1, 1] (`MobileNetPreprocess`). The
stride-8 and stride-16 features are the last inverted-residual block at that stride (`block_5_add`,
32 channels; `block_12_add`, 96 channels); the stride-32 map is the final 1x1 convolution's
(`out_relu`, 1280 channels), scored through `fcn_head` as for ResNet-50.
"""

from __future__ import annotations

import keras

from kfcn.models.backbones.common import (
    Float32Preprocess,
    application_features,
    application_weights,
    fcn_head,
)

NAME = "mobilenetv2"
LABEL = "MobileNetV2"
WEIGHTS_HELP = "a Keras MobileNetV2 (alpha 1.0) weights file without the classifier top"
FEATURES = {4: "block_2_add", 8: "block_5_add", 16: "block_12_add", 32: "out_relu"}
_WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


@keras.saving.register_keras_serializable(package="kfcn")
class MobileNetPreprocess(Float32Preprocess):
    """MobileNetV2's input preprocessing: x / 127.5 - 1.

    Input (B, H, W, 3) RGB in 0-255; output (B, H, W, 3) float32 in [-1, 1]. Like
    `VGGPreprocess` it always computes in float32; the first convolution casts afterwards.
    """

    def call(self, images):
        images = keras.ops.cast(images, "float32")  # (B, H, W, 3) RGB
        return images / 127.5 - 1.0


def features(images, weight_decay: float) -> dict:
    """Preprocessing and MobileNetV2 (no classifier) on `images` (B, H, W, 3) RGB 0-255.

    Returns:
        Feature maps by stride: 4 (B, H/4, W/4, 24), 8 (32), 16 (96), 32 (1280 channels).
    """
    preprocess = MobileNetPreprocess(name="preprocess")  # (B, H, W, 3) in [-1, 1]
    return application_features(
        keras.applications.MobileNetV2, preprocess, images, weight_decay, FEATURES
    )


def head(x, weight_decay: float, dropout: float):
    """`fcn_head` on the stride-32 features: (B, h, w, 1280) -> (B, h, w, 320)."""
    return fcn_head(x, weight_decay, dropout)


def pretrained_weights(weights: str) -> dict:
    """MobileNetV2 weights by layer name from 'imagenet' or a Keras weights file (no top)."""
    return application_weights(keras.applications.MobileNetV2, LABEL, weights, _WEIGHTS_FILE)
