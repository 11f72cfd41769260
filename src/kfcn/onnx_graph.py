"""Rewrites of the ONNX graph tf2onnx converts from kfcn's serving function (`kfcn.export`).

tf2onnx translates TF's ops one by one; these passes turn what ONNX Runtime runs slowly or
copies needlessly into fewer, faster nodes that compute the same values: the weights bound as
initializers in ONNX's layout (`bind_weights`), the fixed bilinear upsampling as `Resize`
cropped to TF's "same" size (`_as_resize`), the crop to the image's size inside the last
upsampling (`crop_in_upsampling`), and the image's padding, mean and channel order in the
layout of the first convolution (`fold_input`). A graph that is not as a pass expects is left
as it is. `onnx` is the imported module (the `onnx` extra), passed in by `kfcn.export`.
"""

from __future__ import annotations

import numpy as np

from kfcn.models.fcn import bilinear_kernel

SAME_SLICE = "same_slice"
"""Name (after the layer's prefix) of the Slice that crops an upsampling's Resize to TF's
"same" size (`_as_resize`), where `crop_in_upsampling` finds it."""


def bind_weights(onnx, graph, weights: dict[str, np.ndarray], paddings: dict[str, str]) -> None:
    """Turn the weight inputs of a converted graph into initializers, in ONNX's layout.

    tf2onnx sees the weights as inputs, so it leaves a `Transpose` (TF's HWIO -> ONNX's OIHW)
    on each; those are applied here, once, to the arrays. A `ConvTranspose` that is the fixed
    bilinear upsampling (`kfcn.models.fcn.bilinear_kernel`) becomes a `Resize` (see
    `_as_resize`); one whose kernel otherwise mixes no channels (learned upsampling, every
    off-diagonal slice zero) becomes a per-channel one (`group` = channels): the same sums
    without the zero terms. ONNX Runtime's transposed convolution was a quarter of its time on
    the FCN-8s; its `Resize` does the same interpolation several times faster.
    `paddings` (weight input name -> "same" or "valid") names the Keras padding of each
    transposed convolution's kernel: a "same" one is cropped by tf2onnx with a Slice and a Pad
    computed from shapes at run time, which `_as_resize`'s own crop then replaces.
    Nodes whose outputs nothing reads any more are dropped; only arrays the graph reads are
    bound.
    """
    inputs = set(weights)  # the graph inputs that are weights
    origin = {name: name for name in weights}  # array -> the weight input it came from
    readers = _readers(graph.node)
    unread = {name: len(nodes) for name, nodes in readers.items()}  # to free arrays early
    kept, replaced = [], set()
    for node in graph.node:
        if id(node) in replaced:
            continue
        if node.op_type == "Transpose" and node.input[0] in weights:
            perm = next(list(a.ints) for a in node.attribute if a.name == "perm")
            weights[node.output[0]] = np.ascontiguousarray(weights[node.input[0]].transpose(perm))
            origin[node.output[0]] = origin[node.input[0]]
            unread[node.input[0]] -= 1
            if not unread[node.input[0]]:
                del weights[node.input[0]]
            continue
        if node.op_type == "ConvTranspose" and node.input[1] in weights:
            crop = None
            if paddings.get(origin[node.input[1]]) == "same":
                crop = _same_crop(node, readers)
            resize = _as_resize(onnx, node, weights, crop[1].output[0] if crop else None)
            if resize:
                kept.extend(resize)
                replaced.update(id(n) for n in crop or ())
                continue
            _per_channel(onnx, node, weights)
        kept.append(node)
    del graph.node[:]
    graph.node.extend(_live(kept, {o.name for o in graph.output}))
    images = [i for i in graph.input if i.name not in inputs]
    del graph.input[:]
    graph.input.extend(images)
    used = {name for node in graph.node for name in node.input}
    for name in [name for name in weights if name in used]:
        graph.initializer.append(onnx.numpy_helper.from_array(weights.pop(name), name))


def _readers(nodes) -> dict[str, list]:
    """Tensor name -> the nodes that read it."""
    readers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _only_reader(readers: dict[str, list], name: str, op_type: str, skip_shapes: bool = False):
    """The one node that reads `name`, when it is an `op_type` (with `skip_shapes`, not
    counting Shape nodes, which read only its shape), else None."""
    nodes = [n for n in readers.get(name, []) if not (skip_shapes and n.op_type == "Shape")]
    return nodes[0] if len(nodes) == 1 and nodes[0].op_type == op_type else None


def _live(nodes: list, outputs: set[str]) -> list:
    """`nodes` (in topological order) without those whose outputs nothing reads."""
    needed, live = set(outputs), []
    for node in reversed(nodes):
        if any(name in needed for name in node.output):
            live.append(node)
            needed.update(node.input)
    return live[::-1]


def _same_crop(node, readers: dict[str, list]):
    """(Slice, Pad): how tf2onnx crops `node`'s output (a ConvTranspose of TF's "same" padding)
    to TF's size: a Slice, the only reader besides the Shape nodes that compute its bounds,
    then a Pad (of zero width) reading only that. None when the graph is not so."""
    crop = _only_reader(readers, node.output[0], "Slice", skip_shapes=True)
    pad = crop and _only_reader(readers, crop.output[0], "Pad")
    return (crop, pad) if pad else None


def crop_in_upsampling(onnx, graph) -> None:
    """Crop the logits to the image's size in the last upsampling's own Slice, channels last.

    `_segment` crops the padded logits to the image: after the last upsampling (`_as_resize`'s
    "same" Slice, NCHW) tf2onnx writes a Transpose to NHWC and a Slice from zero to the image's
    size, which the padded logits always hold. Those bounds (plus the Resize's offset f) go to
    the upsampling's Slice. When nothing else reads that Resize, the Transpose moves before it,
    to its (f x smaller) input: ONNX Runtime's channels-last Resize interpolates several times
    faster, and its Slice writes the cropped NHWC logits, two full-size copies fewer (the same
    interpolation of the same values). Otherwise the Transpose writes the cropped tensor. A
    graph not so is left as it is.
    """
    constants = _Constants(onnx, graph)
    readers = _readers(graph.node)
    upsampling = [n for n in graph.node if n.name.endswith(f"/{SAME_SLICE}")]
    if not upsampling:
        return
    same = upsampling[-1]
    if same.op_type != "Slice" or len(same.input) != 4 or same.input[1] not in constants:
        return
    transpose = _only_reader(readers, same.output[0], "Transpose")
    crop = transpose and _only_reader(readers, transpose.output[0], "Slice")
    if not crop or _attributes(onnx, transpose).get("perm") != [0, 2, 3, 1] or len(crop.input) != 3:
        return
    starts = constants.get(crop.input[1])
    if starts is None or np.any(starts):
        return
    writer = {name: node for node in graph.node for name in node.output}
    resize = writer.get(same.input[0])
    channels_last = (
        resize is not None
        and resize.op_type == "Resize"
        and readers[resize.output[0]] == [same]
        and len(resize.input) == 3
        and resize.input[2] in constants
    )
    offset = constants.get(same.input[1])  # (2,): f, f
    prefix = same.name
    extra = {
        f"{prefix}/crop_from": np.array([1], np.int64),  # H, W in the NHWC bounds
        f"{prefix}/crop_to": np.array([3], np.int64),
        f"{prefix}/crop_offset": offset.astype(np.int64),
    }
    graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in extra.items())
    hw, hw64, ends = (f"{prefix}/crop_{key}" for key in ("hw", "hw64", "ends"))
    make = onnx.helper.make_node
    bounds = [
        make("Slice", [crop.input[2], *list(extra)[:2]], [hw], name=hw),
        make("Cast", [hw], [hw64], name=hw64, to=onnx.TensorProto.INT64),
        make("Add", [hw64, f"{prefix}/crop_offset"], [ends], name=ends),
    ]
    same.input[2] = ends
    dropped = [crop]
    if channels_last:
        scales = constants.get(resize.input[2])  # (4,): 1, 1, f, f
        nhwc = {
            f"{prefix}/nhwc_scales": scales[[0, 2, 3, 1]],
            f"{prefix}/nhwc_axes": np.array([1, 2], np.int64),
        }
        graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in nhwc.items())
        nhwc_input = f"{prefix}/nhwc"
        bounds.insert(
            0,
            make("Transpose", [resize.input[0]], [nhwc_input], name=nhwc_input, perm=[0, 2, 3, 1]),
        )
        resize.input[0], resize.input[2] = nhwc_input, f"{prefix}/nhwc_scales"
        same.input[3], same.output[0] = f"{prefix}/nhwc_axes", crop.output[0]
        dropped.append(transpose)
        at_node = resize
    else:
        transpose.output[0] = crop.output[0]
        at_node = same
    nodes = [n for n in graph.node if all(n is not d for d in dropped)]
    at = next(i for i, n in enumerate(nodes) if n is at_node)
    ordered = _in_order(nodes[:at] + bounds + nodes[at:], graph)
    del graph.node[:]
    graph.node.extend(ordered)


def _in_order(nodes: list, graph) -> list:
    """`nodes` in an order where each comes after the writers of its inputs, otherwise as
    given (a node waits only until its inputs are written)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered, waiting = [], list(nodes)
    while waiting:
        ready = [n for n in waiting if all(name in known for name in n.input)]
        if not ready:
            raise ValueError(f"ONNX graph has a cycle or an unwritten input at {waiting[0].name}")
        for node in ready:
            ordered.append(node)
            known.update(node.output)
        done = {id(n) for n in ready}
        waiting = [n for n in waiting if id(n) not in done]
    return ordered


def _attributes(onnx, node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _bilinear_factor(onnx, node, kernel: np.ndarray) -> int | None:
    """f when `node` (ConvTranspose, kernel (C, C, 2f, 2f)) is the bilinear x`f` upsampling of
    each channel with stride f and no padding of its own (f even), else None."""
    attrs = _attributes(onnx, node)
    channels, outputs, k_h, k_w = kernel.shape
    factor = k_h // 2
    plain = (
        len(node.input) == 2  # no bias
        and attrs.get("group", 1) == 1
        and channels == outputs
        and k_h == k_w == 2 * factor
        and factor % 2 == 0
        and list(attrs.get("strides", [])) == [factor, factor]
        and not any(attrs.get("pads", []))
        and not any(attrs.get("output_padding", []))
        and "output_shape" not in attrs
        and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        and all(d == 1 for d in attrs.get("dilations", []))
    )
    if not plain:
        return None
    expected = np.zeros_like(kernel)
    expected[np.arange(channels), np.arange(channels)] = bilinear_kernel(k_h, 1)[:, :, 0, 0]
    # A kernel converted from another framework may differ in the last bit of float32.
    return factor if np.allclose(kernel, expected, rtol=0, atol=1e-6) else None


def _as_resize(onnx, node, weights: dict[str, np.ndarray], same: str | None = None) -> list | None:
    """`node` (bilinear ConvTranspose, x`f`) as Pad -> Resize -> Slice nodes, or None.

    The transposed convolution places input pixel j at output coordinate j*f + f - 1/2 and
    interpolates linearly between neighbours, with zeros beyond the border: that is `Resize`
    (linear, half-pixel centres) of the input with one row and column of zeros around it,
    whose (n + 2) * f outputs hold the transposed convolution's (n + 1) * f from f/2 on. The
    same sums, so the same values up to float rounding.

    With `same` (a tensor name), a second Slice writes it: TF's "same" output, the n * f
    values from f/2 on of the transposed convolution's, that is from f on of the Resize's.
    The first Slice (the transposed convolution's own output) stays for readers of its shape
    (`_live` drops it when there are none).
    """
    factor = _bilinear_factor(onnx, node, weights[node.input[1]])
    if factor is None:
        return None
    prefix, half = node.name or node.output[0], factor // 2
    constants = {
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),  # N, C, H, W: begins, then ends
        "scales": np.array([1, 1, factor, factor], np.float32),
        "starts": np.array([half, half], np.int64),
        "ends": np.array([-half, -half], np.int64),
        "same_starts": np.array([factor, factor], np.int64),
        "same_ends": np.array([-factor, -factor], np.int64),
        "axes": np.array([2, 3], np.int64),
    }
    names = {key: f"{prefix}/resize_{key}" for key in constants}
    for key, value in constants.items():
        weights[names[key]] = value
    padded, resized = f"{prefix}/zero_border", f"{prefix}/resized"
    make = onnx.helper.make_node
    nodes = [
        make("Pad", [node.input[0], names["pads"]], [padded], name=padded),
        make(
            "Resize",
            [padded, "", names["scales"]],
            [resized],
            name=resized,
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
        make(
            "Slice",
            [resized, names["starts"], names["ends"], names["axes"]],
            list(node.output),
            name=f"{prefix}/slice",
        ),
    ]
    if same:
        bounds = [names["same_starts"], names["same_ends"], names["axes"]]
        nodes.append(make("Slice", [resized, *bounds], [same], name=f"{prefix}/{SAME_SLICE}"))
    return nodes


def _per_channel(onnx, node, weights: dict[str, np.ndarray]) -> None:
    """Make `node` (ConvTranspose, kernel (C, C, kh, kw)) per-channel when it mixes no channels."""
    kernel = weights[node.input[1]]  # (C_in, C_out, kh, kw)
    channels = kernel.shape[0]
    if _attributes(onnx, node).get("group", 1) != 1 or kernel.shape[1] != channels or channels == 1:
        return
    diagonal = kernel[np.arange(channels), np.arange(channels)]  # (C, kh, kw)
    off = kernel.copy()
    off[np.arange(channels), np.arange(channels)] = 0
    if np.any(off):
        return
    name = node.input[1] + "_per_channel"
    weights[name] = np.ascontiguousarray(diagonal[:, np.newaxis])  # (C, 1, kh, kw)
    node.input[1] = name
    kept = [a for a in node.attribute if a.name != "group"]
    del node.attribute[:]
    node.attribute.extend([*kept, onnx.helper.make_attribute("group", channels)])


INPUT_FOLD = "input_fold"
"""Name prefix of the nodes `fold_input` writes."""


def fold_input(onnx, graph) -> None:
    """Preprocess the image in the first convolution's layout, in fewer passes over it.

    tf2onnx writes the serving function's preprocessing as TF computes it, channels last: the
    image cast to float, split into its channels, each padded with its mean
    (`kfcn.padding.pad_image_to`), concatenated, a batch axis, RGB -> BGR (a Gather), the mean
    subtracted (the backbone's preprocessing layer) and a Transpose to NCHW for the first
    convolution: eight full-size copies, and a subtraction broadcast over an innermost axis of
    3, which ONNX Runtime runs slowly. When the means subtracted are those padded with, this
    computes the same values: the uint8 image transposed to (3, H, W), cast, minus the mean
    (3, 1, 1), padded with zeros (mean - mean is exactly zero, every other value is the same
    subtraction) and given its batch axis; the channel order goes into the first
    convolution's kernel (its input channels permuted: the same products, summed in another
    order). A graph not so is left as it is.
    """
    found = _input_chain(onnx, graph)
    if found is None:
        return
    constants = {i.name: i for i in graph.initializer}
    to_array, from_array = onnx.numpy_helper.to_array, onnx.numpy_helper.from_array
    kernel = constants[found["conv"].input[1]]
    weights = to_array(kernel)
    permuted = np.empty_like(weights)
    permuted[:, found["order"]] = weights  # input channel j reads image channel order[j]
    kernel.CopyFrom(from_array(permuted, kernel.name))
    keys = "chw float mean centred pads_order pads zero padded batch".split()
    names = {key: f"{INPUT_FOLD}/{key}" for key in keys}
    graph.initializer.extend(
        [
            from_array(found["mean"].reshape(3, 1, 1), names["mean"]),
            from_array(np.array([2, 0, 1, 5, 3, 4], np.int64), names["pads_order"]),  # HWC -> CHW
            from_array(np.array(0, np.float32), names["zero"]),
            from_array(np.array([0], np.int64), names["batch"]),
        ]
    )
    image, pads = found["cast"].input[0], found["pads"]
    make = onnx.helper.make_node
    nodes = [
        make("Transpose", [image], [names["chw"]], name=names["chw"], perm=[2, 0, 1]),
        make(
            "Cast", [names["chw"]], [names["float"]], name=names["float"], to=onnx.TensorProto.FLOAT
        ),
        make("Sub", [names["float"], names["mean"]], [names["centred"]], name=names["centred"]),
        make("Gather", [pads, names["pads_order"]], [names["pads"]], name=names["pads"], axis=0),
        make(
            "Pad",
            [names["centred"], names["pads"], names["zero"]],
            [names["padded"]],
            name=names["padded"],
            mode="constant",
        ),
        make(
            "Unsqueeze",
            [names["padded"], names["batch"]],
            [found["conv"].input[0]],
            name=names["batch"],
        ),
    ]
    replaced = {id(n) for n in found["replaced"]}
    cast_out = found["cast"].output[0]
    kept = []
    for node in graph.node:
        if node is found["concat"]:
            kept.extend(nodes)  # where every input (the image, the paddings) is computed
        if id(node) in replaced:
            continue
        if node.op_type == "Shape" and node.input[0] == cast_out:
            node.input[0] = image  # the same shape, without the full-size cast
        kept.append(node)
    del graph.node[:]
    graph.node.extend(_live(kept, {o.name for o in graph.output}))
    used = {name for node in graph.node for name in node.input}
    for index in reversed(range(len(graph.initializer))):  # by index: no array comparisons
        if graph.initializer[index].name not in used:
            del graph.initializer[index]


class _Constants:
    """Initializer name -> its array, converted when asked for: a model's weights are not
    copied out of the graph to read a few small constants."""

    def __init__(self, onnx, graph):
        self._protos = {i.name: i for i in graph.initializer}
        self._to_array = onnx.numpy_helper.to_array

    def __contains__(self, name: str) -> bool:
        return name in self._protos

    def get(self, name: str, default=None):
        proto = self._protos.get(name)
        return default if proto is None else self._to_array(proto)


def _input_chain(onnx, graph) -> dict | None:
    """The nodes `fold_input` replaces, and what it needs to know of them, or None.

    image -> Cast (float) -> Split (3 channels, last axis) -> Pad each (the same paddings,
    constant c_i) -> Concat (last axis) -> Unsqueeze (axis 0) -> [Slice of all of the batch
    axis] -> [Gather of the channels, a permutation] -> Sub (c permuted so) -> Transpose
    (NHWC -> NCHW) -> Conv (a kernel of its own), each the only reader of the one before.
    """
    if len(graph.input) != 1:
        return None
    constants = _Constants(onnx, graph)
    readers = _readers(graph.node)

    def axis(node, default=0) -> int:
        return _attributes(onnx, node).get("axis", default)

    cast = _only_reader(readers, graph.input[0].name, "Cast", skip_shapes=True)
    if cast is None or _attributes(onnx, cast).get("to") != onnx.TensorProto.FLOAT:
        return None
    split = _only_reader(readers, cast.output[0], "Split", skip_shapes=True)
    if split is None or axis(split) not in (-1, 2) or len(split.output) != 3:
        return None
    if (
        len(split.input) > 1
        and split.input[1]
        and list(constants.get(split.input[1], [])) != [1, 1, 1]
    ):
        return None
    pads = [_only_reader(readers, name, "Pad") for name in split.output]
    if not all(pads) or len({p.input[1] for p in pads}) != 1 or len(pads[0].input) != 3:
        return None
    if any(_attributes(onnx, p).get("mode", b"constant") != b"constant" for p in pads):
        return None
    values = [constants.get(p.input[2]) for p in pads]
    if any(v is None or v.size != 1 for v in values):
        return None
    mean = np.array([v.item() for v in values], np.float32)
    concat = _only_reader(readers, pads[0].output[0], "Concat")
    if (
        concat is None
        or list(concat.input) != [p.output[0] for p in pads]
        or axis(concat) not in (-1, 2)
    ):
        return None
    replaced, order = [split, *pads, concat], np.arange(3)
    node, batched = concat, False
    while True:
        following = readers.get(node.output[0], [])
        if len(following) != 1:
            return None
        node = following[0]
        replaced.append(node)
        if node.op_type == "Unsqueeze" and not batched:
            if list(constants.get(node.input[1], [])) != [0]:
                return None
            batched = True
        elif node.op_type == "Slice" and batched:
            if not _slices_all_of_the_batch(node, constants):
                return None
        elif node.op_type == "Gather" and batched:
            indices = constants.get(node.input[1])
            if (
                axis(node) not in (-1, 3)
                or indices is None
                or sorted(indices.tolist()) != [0, 1, 2]
            ):
                return None
            order = order[indices]
        elif node.op_type == "Sub" and batched:
            subtracted = constants.get(node.input[1])
            if subtracted is None or subtracted.shape != (3,):
                return None
            if not np.array_equal(subtracted.astype(np.float32), mean[order]):
                return None
            break
        else:
            return None
    transpose = _only_reader(readers, node.output[0], "Transpose")
    if transpose is None or _attributes(onnx, transpose).get("perm") != [0, 3, 1, 2]:
        return None
    replaced.append(transpose)
    conv = _only_reader(readers, transpose.output[0], "Conv")
    if conv is None or conv.input[1] not in constants or len(readers[conv.input[1]]) != 1:
        return None
    if _attributes(onnx, conv).get("group", 1) != 1:
        return None
    return {
        "cast": cast,
        "pads": pads[0].input[1],
        "concat": concat,
        "mean": mean,
        "order": order,
        "conv": conv,
        "replaced": replaced,
    }


def _slices_all_of_the_batch(node, constants: _Constants) -> bool:
    """Whether a Slice (after the batch axis of 1 was added) takes all of axis 0 and no other."""
    starts, ends = constants.get(node.input[1]), constants.get(node.input[2])
    axes = constants.get(node.input[3]) if len(node.input) > 3 and node.input[3] else np.array([0])
    steps = constants.get(node.input[4]) if len(node.input) > 4 and node.input[4] else np.array([1])
    if any(v is None for v in (starts, ends, axes, steps)):
        return False
    return list(axes) == [0] and list(starts) == [0] and list(steps) == [1] and int(ends[0]) >= 1
