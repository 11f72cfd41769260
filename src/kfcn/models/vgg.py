"""Compatibility import: the VGG16 backbone lives in `kfcn.models.backbones.vgg16`."""

from kfcn.models.backbones.vgg16 import (  # noqa: F401
    BLOCKS,
    CONV_LAYERS,
    VGGPreprocess,
    convert_vgg16_weights,
    fully_convolutional_head,
    imagenet_backbone_weights,
    set_backbone_weights,
    vgg16_features,
)
