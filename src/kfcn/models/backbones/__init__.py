"""Backbones as plug-ins: one module per network, each with the same small interface.

A backbone module defines
    NAME, LABEL          its `model.backbone` value and its name in messages;
    WEIGHTS_HELP         what a local weights file for it must be;
    FEATURES             {stride: name of the layer that outputs that stride's features};
    features(images, weight_decay) -> {4: ..., 8: ..., 16: ..., 32: ...}
                         preprocessing (a layer stored in the model file) and the network;
    head(x32, weight_decay, dropout)
                         what `score_fr` scores: fc6/fc7 for VGG16, `fcn_head` otherwise;
    pretrained_weights(weights) -> {layer name: weights}
                         ImageNet weights from `keras.applications` or a local file.
A backbone of adjustable width (VGG16) also defines `resolve_widths(model.widths)` and takes the
resolved widths as a last argument of `features` and `head`.
`kfcn.models.fcn` builds FCN-32s/16s/8s from the strides alone. Adding a backbone is one new
module and one line in BACKBONES.
"""

from __future__ import annotations

from types import ModuleType

from kfcn.config import BACKBONE_NAMES
from kfcn.errors import ConfigError
from kfcn.models.backbones import mobilenetv2, resnet50, vgg16

BACKBONES: dict[str, ModuleType] = {
    vgg16.NAME: vgg16,
    resnet50.NAME: resnet50,
    mobilenetv2.NAME: mobilenetv2,
}
if tuple(BACKBONES) != BACKBONE_NAMES:  # config.py validates model.backbone against that list
    raise ImportError(f"kfcn.config.BACKBONE_NAMES must list {tuple(BACKBONES)}")


def get_backbone(name: str) -> ModuleType:
    """The backbone module called `name`.

    Raises:
        ConfigError: an unknown name (lists the valid ones).
    """
    if name not in BACKBONES:
        raise ConfigError(
            f"model.backbone = {name!r} is not allowed; expected one of {', '.join(BACKBONES)}"
        )
    return BACKBONES[name]


def backbone_of(model) -> str | None:
    """The name of the backbone an FCN `model` is built on (found by its layer names), or None."""
    names = {layer.name for layer in model.layers}
    for name, module in BACKBONES.items():
        if all(layer in names for layer in module.FEATURES.values()):
            return name
    return None
