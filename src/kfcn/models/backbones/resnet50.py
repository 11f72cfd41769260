"""The ResNet-50 backbone (He et al. 2016), as `keras.applications.ResNet50` builds it.

Preprocessing is Keras's "caffe" mode for ResNet50 — RGB -> BGR, minus the ImageNet mean — which
is exactly VGG16's, so the same `VGGPreprocess` layer serves both. The stride-8, 16 and 32 features
are the outputs of stages conv3, conv4 and conv5 (512, 1024 and 2048 channels); the stride-32 map
is scored through `fcn_head`, as torchvision's `fcn_resnet50` does.
"""

from __future__ import annotations

import keras

from kfcn.models.backbones.common import application_features, application_weights, fcn_head
from kfcn.models.backbones.vgg16 import VGGPreprocess

NAME = "resnet50"
LABEL = "ResNet-50"
WEIGHTS_HELP = "a Keras ResNet-50 weights file without the classifier top"
FEATURES = {
    4: "conv2_block3_out",
    8: "conv3_block4_out",
    16: "conv4_block6_out",
    32: "conv5_block3_out",
}
_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


def features(images, weight_decay: float) -> dict:
    """Preprocessing and ResNet-50 (no classifier) on `images` (B, H, W, 3) RGB 0-255.

    Returns:
        Feature maps by stride: 4 (B, H/4, W/4, 256), 8 (512), 16 (1024), 32 (2048 channels).
    """
    preprocess = VGGPreprocess(name="preprocess")  # (B, H, W, 3) zero-mean BGR
    return application_features(
        keras.applications.ResNet50, preprocess, images, weight_decay, FEATURES
    )


def head(x, weight_decay: float, dropout: float):
    """`fcn_head` on the stride-32 features: (B, h, w, 2048) -> (B, h, w, 512)."""
    return fcn_head(x, weight_decay, dropout)


def pretrained_weights(weights: str) -> dict:
    """ResNet-50 weights by layer name from 'imagenet' or a Keras weights file (no top)."""
    return application_weights(keras.applications.ResNet50, LABEL, weights, _WEIGHTS_FILE)
