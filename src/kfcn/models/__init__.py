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
from kfcn.models.io import load_model, make_info, model_info, save_model
from kfcn.models.vgg import VGGPreprocess, convert_vgg16_weights, imagenet_backbone_weights

__all__ = [
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
    "save_model",
    "transfer_weights",
]
