"""FCN models on VGG16: builders, ImageNet weight conversion, stage transfer, freezing, and files."""

from kfcn.models.fcn import (
    VARIANTS,
    BilinearUpsampling,
    apply_freeze,
    bilinear_kernel,
    build_fcn,
    build_fcn_from_config,
    transfer_weights,
)
from kfcn.models.io import (
    PRECISIONS,
    load_model,
    make_info,
    model_info,
    model_precision,
    save_model,
    with_precision,
)
from kfcn.models.vgg import VGGPreprocess, convert_vgg16_weights, imagenet_backbone_weights

__all__ = [
    "PRECISIONS",
    "VARIANTS",
    "BilinearUpsampling",
    "VGGPreprocess",
    "apply_freeze",
    "bilinear_kernel",
    "build_fcn",
    "build_fcn_from_config",
    "convert_vgg16_weights",
    "imagenet_backbone_weights",
    "load_model",
    "make_info",
    "model_info",
    "model_precision",
    "save_model",
    "transfer_weights",
    "with_precision",
]
