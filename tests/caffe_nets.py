"""Random-weight Caffe FCNs of the published layout (fcn.berkeleyvision.org's voc-fcn*s nets),
written through `kfcn.caffeproto`: a `.caffemodel` (the blobs, with or without the layer
parameters, in the `layer` or the legacy `layers` list) and its deploy prototxt for OpenCV.

The transposed-convolution kernels are random, not bilinear, so a converter that assumed
bilinear upsampling (or read the kernels transposed) would be caught.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from kfcn import caffeproto

BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
TINY_WIDTHS = (4, 6, 8, 8, 8, 16, 16)
DECONVS = {
    "fcn32": [("upscore", 64, 32)],
    "fcn16": [("upscore2", 4, 2), ("upscore16", 32, 16)],
    "fcn8": [("upscore2", 4, 2), ("upscore_pool4", 4, 2), ("upscore8", 16, 8)],
}
CROP_OFFSETS = {
    "fcn32": {"score": 19},
    "fcn16": {"score_pool4c": 5, "score": 27},
    "fcn8": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
}
V1_CODES = {"Convolution": 4, "Deconvolution": 39, "Pooling": 17, "ReLU": 18, "Dropout": 6}


@dataclass
class CaffeNet:
    caffemodel: Path  # in the form asked for
    prototxt: Path  # the deploy net
    reference: Path  # the same weights as Caffe saves them (layers with parameters), for OpenCV
    variant: str
    at_once: bool
    num_classes: int
    widths: tuple[int, ...]


def _blob(layer, array: np.ndarray) -> None:
    caffeproto.set_blob(layer.blobs.add(), array)


def _net(variant, widths, classes, at_once, deconv_bias, rng) -> caffeproto.NetParameter:
    """The deploy net with its blobs (input 'data', output 'score')."""
    net = caffeproto.NetParameter(name=f"{variant}-random")
    data = net.layer.add(name="data", type="Input", top=["data"])
    data.input_param.shape.add(dim=[1, 3, 64, 64])

    def conv(name, bottom, out, kernel, pad, relu=True, in_ch=None):
        layer = net.layer.add(name=name, type="Convolution", bottom=[bottom], top=[name])
        p = layer.convolution_param
        p.num_output, p.kernel_size[:], p.pad[:] = out, [kernel], [pad]
        fan_in = in_ch * kernel * kernel
        _blob(layer, rng.normal(0, np.sqrt(2 / fan_in), (out, in_ch, kernel, kernel)))
        _blob(layer, rng.normal(0, 0.1, out))
        if relu:
            net.layer.add(name=f"relu_{name}", type="ReLU", bottom=[name], top=[name])
        return name

    def deconv(name, bottom, kernel, stride, bias):
        layer = net.layer.add(name=name, type="Deconvolution", bottom=[bottom], top=[name])
        p = layer.convolution_param
        p.num_output, p.kernel_size[:], p.stride[:], p.bias_term = classes, [kernel], [stride], bias
        _blob(layer, rng.normal(0, 1 / kernel, (classes, classes, kernel, kernel)))
        if bias:
            _blob(layer, rng.normal(0, 0.5, classes))
        return name

    def crop(name, bottom, reference):
        layer = net.layer.add(name=name, type="Crop", bottom=[bottom, reference], top=[name])
        layer.crop_param.axis = 2
        layer.crop_param.offset[:] = [CROP_OFFSETS[variant][name]]
        return name

    def score(name, bottom, in_ch, scale=None):
        if scale is not None:
            scale_name = name.replace("score", "scale")
            layer = net.layer.add(name=scale_name, type="Scale", bottom=[bottom], top=[scale_name])
            _blob(layer, scale * rng.uniform(0.5, 2.0, in_ch))
            bottom = scale_name
        # Score kernels scaled so each score map has unit spread, like a trained net's.
        return conv(name, bottom, classes, 1, 0, relu=False, in_ch=in_ch)

    x, channels = "data", 3
    for (block, convs), width in zip(BLOCKS, widths[:5], strict=True):
        for i in range(1, convs + 1):
            pad = 100 if (block, i) == (1, 1) else 1
            x = conv(f"conv{block}_{i}", x, width, 3, pad, in_ch=channels)
            channels = width
        layer = net.layer.add(name=f"pool{block}", type="Pooling", bottom=[x], top=[f"pool{block}"])
        layer.pooling_param.kernel_size, layer.pooling_param.stride = 2, 2
        x = f"pool{block}"
    x = conv("fc6", x, widths[5], 7, 0, in_ch=channels)
    net.layer.add(name="drop6", type="Dropout", bottom=[x], top=[x])
    x = conv("fc7", x, widths[6], 1, 0, in_ch=widths[5])
    net.layer.add(name="drop7", type="Dropout", bottom=[x], top=[x])
    x = score("score_fr", x, widths[6])
    ups = DECONVS[variant]
    x = deconv(ups[0][0], x, ups[0][1], ups[0][2], deconv_bias)
    # At-once factors near 1 (the published 0.01 and 0.0001 go with trained score kernels): the
    # skips must matter for the comparison to test them.
    skips = [("score_pool4", "pool4", widths[3], 1.0), ("score_pool3", "pool3", widths[2], 0.5)]
    for (name, kernel, stride), (skip, pool, in_ch, factor) in zip(ups[1:], skips, strict=False):
        s = score(skip, pool, in_ch, factor if at_once else None)
        s = crop(f"{skip}c", s, x)
        fuse = f"fuse_{pool}"
        net.layer.add(name=fuse, type="Eltwise", bottom=[x, s], top=[fuse])
        x = deconv(name, fuse, kernel, stride, deconv_bias)
    crop("score", x, "data")
    return net


def _strip(net) -> caffeproto.NetParameter:
    """Names, types and blobs only (as some tools write caffemodels): no layer parameters."""
    bare = caffeproto.NetParameter(name=net.name)
    for layer in net.layer:
        if layer.blobs:
            bare.layer.add(name=layer.name, type=layer.type, blobs=layer.blobs)
    return bare


def _legacy(net) -> caffeproto.NetParameter:
    """The blobs in the legacy `layers` list (V1LayerParameter), blob shapes as num, channels,
    height, width."""
    old = caffeproto.NetParameter(name=net.name)
    for layer in net.layer:
        if not layer.blobs:
            continue
        v1 = old.layers.add(name=layer.name, type=V1_CODES[layer.type])
        for blob in layer.blobs:
            dims = [1] * (4 - len(blob.shape.dim)) + list(blob.shape.dim)
            v1.blobs.add(
                num=dims[0], channels=dims[1], height=dims[2], width=dims[3], data=blob.data
            )
    return old


def write_caffe_net(
    folder: Path,
    variant: str,
    at_once: bool = False,
    widths: tuple[int, ...] = TINY_WIDTHS,
    classes: int = 5,
    deconv_bias: bool = False,
    form: str = "full",
    seed: int = 0,
) -> CaffeNet:
    """Write `NAME.caffemodel` and `NAME.prototxt` (the deploy net, for OpenCV) into `folder`.

    Args:
        form: the caffemodel's form: 'full' (layers with their parameters, as Caffe saves),
            'bare' (names, types and blobs only) or 'legacy' (bare, in the V1 `layers` list).
    """
    rng = np.random.default_rng(seed)
    net = _net(variant, widths, classes, at_once, deconv_bias, rng)
    name = f"{variant}{'-atonce' if at_once else ''}-{form}"
    prototxt, caffemodel = folder / f"{name}.prototxt", folder / f"{name}.caffemodel"
    deploy = caffeproto.NetParameter()
    deploy.CopyFrom(net)
    for layer in deploy.layer:
        del layer.blobs[:]
    prototxt.write_text(text_format.MessageToString(deploy))
    stored = {"full": lambda n: n, "bare": _strip, "legacy": _legacy}[form](net)
    caffemodel.write_bytes(stored.SerializeToString())
    reference = caffemodel
    if form != "full":
        reference = folder / f"{name}-reference.caffemodel"
        reference.write_bytes(net.SerializeToString())
    return CaffeNet(caffemodel, prototxt, reference, variant, at_once, classes, widths)


def opencv_scores(net: CaffeNet, image: np.ndarray) -> np.ndarray:
    """OpenCV's forward of the Caffe net on an (H, W, 3) RGB image: (H, W, C) scores.

    Caffe's preprocessing as the FCN's deploy scripts do it: RGB -> BGR, minus the BGR mean.
    """
    import cv2

    mean = np.array((104.00699, 116.66877, 122.67892), np.float32)
    blob = (image[..., ::-1].astype(np.float32) - mean).transpose(2, 0, 1)[None]  # (1, 3, H, W)
    cv_net = cv2.dnn.readNetFromCaffe(str(net.prototxt), str(net.reference))
    cv_net.setInput(np.ascontiguousarray(blob))
    out = cv_net.forward("score")  # (1, C, H, W)
    return out[0].transpose(1, 2, 0)
