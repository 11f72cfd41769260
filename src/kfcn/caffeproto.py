"""The few messages of Caffe's `caffe.proto` that an FCN's `.caffemodel` needs, built at runtime.

A `.caffemodel` is one serialized `NetParameter`. Its messages are described here by their field
names, types and numbers (those of `caffe.proto`), turned into a descriptor with protobuf's
`descriptor_pb2` and into message classes with `message_factory`: no Caffe install, no generated
code. Fields the FCNs do not use are left out; protobuf skips them when parsing.

Two choices keep a 540 MB file fast and small to read:

* `BlobProto.data` (a packed `repeated float` in Caffe) is declared `repeated bytes`: a packed
  field is one length-delimited record on the wire, exactly like a `bytes` field, so each blob's
  floats arrive as one byte string that `blob_array` views with `np.frombuffer`, instead of
  millions of Python floats. (Repeated, because a writer may split a packed field into chunks.)
* The file is parsed from a memory map, not from a copy of its bytes in memory.

Both Caffe's `layer` list (field 100) and the legacy `layers` list (field 2, `V1LayerParameter`,
whose `type` is an enum) are read; `net_layers` presents both as `Layer` records.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto
OPTIONAL, REPEATED = F.LABEL_OPTIONAL, F.LABEL_REPEATED
TYPES = {
    "int32": F.TYPE_INT32,
    "int64": F.TYPE_INT64,
    "uint32": F.TYPE_UINT32,
    "float": F.TYPE_FLOAT,
    "bool": F.TYPE_BOOL,
    "string": F.TYPE_STRING,
    "bytes": F.TYPE_BYTES,
}

# message -> (field name, number, label, type or message name, default); numbers from caffe.proto.
MESSAGES: dict[str, list[tuple]] = {
    "BlobShape": [("dim", 1, REPEATED, "int64", None)],
    "BlobProto": [
        ("num", 1, OPTIONAL, "int32", None),
        ("channels", 2, OPTIONAL, "int32", None),
        ("height", 3, OPTIONAL, "int32", None),
        ("width", 4, OPTIONAL, "int32", None),
        ("data", 5, REPEATED, "bytes", None),  # packed float32 on the wire
        ("shape", 7, OPTIONAL, "BlobShape", None),
        ("double_data", 8, REPEATED, "bytes", None),  # packed float64 on the wire
    ],
    "ConvolutionParameter": [
        ("num_output", 1, OPTIONAL, "uint32", None),
        ("bias_term", 2, OPTIONAL, "bool", "true"),
        ("pad", 3, REPEATED, "uint32", None),
        ("kernel_size", 4, REPEATED, "uint32", None),
        ("group", 5, OPTIONAL, "uint32", "1"),
        ("stride", 6, REPEATED, "uint32", None),
        ("pad_h", 9, OPTIONAL, "uint32", None),
        ("pad_w", 10, OPTIONAL, "uint32", None),
        ("kernel_h", 11, OPTIONAL, "uint32", None),
        ("kernel_w", 12, OPTIONAL, "uint32", None),
        ("stride_h", 13, OPTIONAL, "uint32", None),
        ("stride_w", 14, OPTIONAL, "uint32", None),
        ("dilation", 18, REPEATED, "uint32", None),
    ],
    "PoolingParameter": [
        ("pool", 1, OPTIONAL, "int32", None),  # enum: MAX = 0, AVE = 1, STOCHASTIC = 2
        ("kernel_size", 2, OPTIONAL, "uint32", None),
        ("stride", 3, OPTIONAL, "uint32", "1"),
        ("pad", 4, OPTIONAL, "uint32", None),
        ("kernel_h", 5, OPTIONAL, "uint32", None),
        ("kernel_w", 6, OPTIONAL, "uint32", None),
        ("stride_h", 7, OPTIONAL, "uint32", None),
        ("stride_w", 8, OPTIONAL, "uint32", None),
        ("pad_h", 9, OPTIONAL, "uint32", None),
        ("pad_w", 10, OPTIONAL, "uint32", None),
        ("global_pooling", 12, OPTIONAL, "bool", None),
        ("round_mode", 13, OPTIONAL, "int32", None),  # enum: CEIL = 0, FLOOR = 1
    ],
    "CropParameter": [
        ("axis", 1, OPTIONAL, "int32", "2"),
        ("offset", 2, REPEATED, "uint32", None),
    ],
    "ScaleParameter": [
        ("axis", 1, OPTIONAL, "int32", "1"),
        ("num_axes", 2, OPTIONAL, "int32", "1"),
        ("bias_term", 4, OPTIONAL, "bool", None),
    ],
    "InputParameter": [("shape", 1, REPEATED, "BlobShape", None)],
    "LayerParameter": [
        ("name", 1, OPTIONAL, "string", None),
        ("type", 2, OPTIONAL, "string", None),
        ("bottom", 3, REPEATED, "string", None),
        ("top", 4, REPEATED, "string", None),
        ("blobs", 7, REPEATED, "BlobProto", None),
        ("convolution_param", 106, OPTIONAL, "ConvolutionParameter", None),
        ("pooling_param", 121, OPTIONAL, "PoolingParameter", None),
        ("scale_param", 142, OPTIONAL, "ScaleParameter", None),
        ("input_param", 143, OPTIONAL, "InputParameter", None),
        ("crop_param", 144, OPTIONAL, "CropParameter", None),
    ],
    "V1LayerParameter": [
        ("bottom", 2, REPEATED, "string", None),
        ("top", 3, REPEATED, "string", None),
        ("name", 4, OPTIONAL, "string", None),
        ("type", 5, OPTIONAL, "int32", None),  # enum LayerType, see V1_TYPES
        ("blobs", 6, REPEATED, "BlobProto", None),
        ("convolution_param", 10, OPTIONAL, "ConvolutionParameter", None),
        ("pooling_param", 19, OPTIONAL, "PoolingParameter", None),
    ],
    "NetParameter": [
        ("name", 1, OPTIONAL, "string", None),
        ("layers", 2, REPEATED, "V1LayerParameter", None),
        ("input", 3, REPEATED, "string", None),
        ("input_dim", 4, REPEATED, "int32", None),
        ("input_shape", 8, REPEATED, "BlobShape", None),
        ("layer", 100, REPEATED, "LayerParameter", None),
    ],
}

# The V1 `LayerType` enum values of the layer types an FCN holds (caffe.proto's numbers).
V1_TYPES = {
    3: "Concat",
    4: "Convolution",
    5: "Data",
    6: "Dropout",
    14: "InnerProduct",
    17: "Pooling",
    18: "ReLU",
    20: "Softmax",
    21: "SoftmaxWithLoss",
    22: "Split",
    25: "Eltwise",
    39: "Deconvolution",
}

PACKAGE = "caffe"


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="kfcn_caffe.proto", package=PACKAGE)
    proto.syntax = "proto2"
    for message, fields in MESSAGES.items():
        desc = proto.message_type.add(name=message)
        for name, number, label, kind, default in fields:
            f = desc.field.add(name=name, number=number, label=label)
            if kind in TYPES:
                f.type = TYPES[kind]
            else:
                f.type = F.TYPE_MESSAGE
                f.type_name = f".{PACKAGE}.{kind}"
            if default is not None:
                f.default_value = default
    return proto


def _message_classes() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in MESSAGES
    }


CLASSES = _message_classes()
NetParameter = CLASSES["NetParameter"]
LayerParameter = CLASSES["LayerParameter"]
BlobProto = CLASSES["BlobProto"]


@dataclass
class Layer:
    """One layer of a net, from either list: its name, type name, inputs, outputs, blobs (as
    float32 arrays in Caffe's shape) and parameter messages (None where the file has none)."""

    name: str
    type: str
    bottom: list[str]
    top: list[str]
    blobs: list[np.ndarray] = field(default_factory=list)
    convolution: object | None = None
    pooling: object | None = None
    crop: object | None = None
    scale: object | None = None


def blob_array(blob) -> np.ndarray:
    """A `BlobProto`'s values as a float32 array of its shape (`shape`, else the legacy
    num/channels/height/width). The array views the message's bytes where it can (no copy).

    Raises:
        ValueError: the value count does not match the shape.
    """
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        legacy = (blob.num, blob.channels, blob.height, blob.width)
        shape = tuple(int(d) for d in legacy) if any(legacy) else ()
    if blob.data:
        raw = blob.data[0] if len(blob.data) == 1 else b"".join(blob.data)
        values = np.frombuffer(raw, dtype="<f4")
    elif blob.double_data:
        values = np.frombuffer(b"".join(blob.double_data), dtype="<f8").astype(np.float32)
    else:
        values = np.zeros(0, np.float32)
    if int(np.prod(shape)) != values.size:
        raise ValueError(f"a blob of shape {shape} holds {values.size} values")
    return values.reshape(shape)


def _param(layer, name: str):
    """A copy of the layer's parameter message `name` (None when absent). A copy, so that no
    reference into the parsed net keeps its memory (all of the file's floats) alive."""
    if not layer.HasField(name):
        return None
    param = getattr(layer, name)
    copy = type(param)()
    copy.CopyFrom(param)
    return copy


def net_layers(net) -> list[Layer]:
    """The layers of a parsed `NetParameter`: its `layer` list, then its legacy `layers` list.

    The records hold no reference into `net`: once the caller drops `net`, only the blobs' arrays
    remain in memory.
    """
    out = []
    for layer in net.layer:
        out.append(
            Layer(
                layer.name,
                layer.type,
                list(layer.bottom),
                list(layer.top),
                [blob_array(b) for b in layer.blobs],
                _param(layer, "convolution_param"),
                _param(layer, "pooling_param"),
                _param(layer, "crop_param"),
                _param(layer, "scale_param"),
            )
        )
    for layer in net.layers:
        out.append(
            Layer(
                layer.name,
                V1_TYPES.get(layer.type, f"V1 type {layer.type}"),
                list(layer.bottom),
                list(layer.top),
                [blob_array(b) for b in layer.blobs],
                _param(layer, "convolution_param"),
                _param(layer, "pooling_param"),
            )
        )
    return out


def read_net(path: str | Path):
    """Parse a `.caffemodel` (or any binary `NetParameter`) from a memory map of the file.

    Raises:
        OSError: the file cannot be read.
        google.protobuf.message.DecodeError: the bytes are no `NetParameter`.
    """
    net = NetParameter()
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return net
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            net.ParseFromString(memoryview(mapped))
    return net


def set_blob(blob, array: np.ndarray) -> None:
    """Fill a `BlobProto` with `array` (float32, its shape), as Caffe writes blobs."""
    array = np.ascontiguousarray(array, dtype="<f4")
    del blob.shape.dim[:]
    blob.shape.dim.extend(int(d) for d in array.shape)
    del blob.data[:]
    blob.data.append(array.tobytes())
