"""FCN models on VGG16, ResNet-50 or MobileNetV2: builders, ImageNet weights, stage transfer,
freezing, and files."""

# The loss and metrics are imported for their registration: the .keras files kfcn writes carry
# their compile settings, and must load wherever kfcn.models (or kfcn) was imported.
from kfcn import losses as _losses  # noqa: F401
from kfcn import metrics as _metrics  # noqa: F401
from kfcn.models.backbones import BACKBONES, backbone_of, get_backbone
from kfcn.models.backbones.mobilenetv2 import MobileNetPreprocess
from kfcn.models.backbones.vgg16 import (
    CaffePreprocess,
    VGGPreprocess,
    convert_vgg16_weights,
    imagenet_backbone_weights,
)
from kfcn.models.fcn import (
    TOPOLOGIES,
    VARIANTS,
    BilinearUpsampling,
    CaffeCrop,
    ChannelScale,
    apply_freeze,
    backbone_layers,
    bilinear_kernel,
    build_fcn,
    build_fcn_from_config,
    caffe_layout,
    layout_of,
    stage_topology,
    topology_of,
    transfer_weights,
)
from kfcn.models.io import load_model, make_info, model_info, save_model

__all__ = [
    "BACKBONES",
    "TOPOLOGIES",
    "VARIANTS",
    "BilinearUpsampling",
    "CaffeCrop",
    "CaffePreprocess",
    "ChannelScale",
    "MobileNetPreprocess",
    "VGGPreprocess",
    "apply_freeze",
    "backbone_layers",
    "backbone_of",
    "bilinear_kernel",
    "build_fcn",
    "build_fcn_from_config",
    "caffe_layout",
    "convert_vgg16_weights",
    "get_backbone",
    "imagenet_backbone_weights",
    "load_model",
    "make_info",
    "model_info",
    "save_model",
    "stage_topology",
    "topology_of",
    "layout_of",
    "transfer_weights",
]
