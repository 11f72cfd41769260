"""Pad images to a multiple of 32 for the FCN models, and crop the logits back.

kfcn's FCN models need a height and width divisible by 32 (five 2x poolings, then exact
2x/8x/16x/32x upsampling); the Caffe topology takes any size. A model declares which through its
preprocessing layer (`input_multiple`), and `input_multiple(model)` is the one place that reads
it: every padding here pads to that multiple (1 = no padding). Every caller — validation during training, `evaluate`, `predict`, export — goes through
these functions, so users never meet that constraint:

* images are padded on the bottom and right with the ImageNet mean colour, which the model's
  preprocessing turns into exact zeros (the same value convolution padding uses);
* labels are padded with `IGNORE_LABEL`, so padded pixels are never scored;
* logits are cropped back to the original size.

Each image is padded to *its own* next multiple of 32, never to a batch maximum: how much padding an
image gets changes the network's output near its border, so padding to a batch maximum would make a
prediction depend on what else is in the batch.

`pad_image`, `pad_label` and `crop_to` are graph-friendly (dynamic shapes, usable inside `tf.data`
and `tf.function`); `predict_logits`, `predict_classes` and `batches_by_padded_size` run a model
eagerly on NumPy images of any size.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from kfcn.palette import IGNORE_LABEL

MULTIPLE = 32
"""Height and width of every model input must be a multiple of this (the total stride)."""

IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
"""Per-channel ImageNet mean (R, G, B) that VGG16's preprocessing subtracts."""


def input_multiple(model) -> int:
    """What `model` declares about its input: H and W must be multiples of this (1 = any size).

    The declaration is the `input_multiple` of the model's `preprocess` layer (32 for kfcn's
    topology, 1 for the Caffe one); a model without one (a stand-in) gets `MULTIPLE`.
    """
    try:
        layer = model.get_layer("preprocess")
    except (AttributeError, ValueError):
        return MULTIPLE
    return int(getattr(layer, "input_multiple", MULTIPLE))


def padded_size(size: tf.Tensor | int, multiple: int = MULTIPLE) -> tf.Tensor | int:
    """The smallest multiple of `multiple` that is >= `size` (and >= `multiple`)."""
    if isinstance(size, (int, np.integer)):
        return max(1, -(-int(size) // multiple)) * multiple
    size = tf.convert_to_tensor(size)
    return tf.maximum((size + multiple - 1) // multiple, 1) * multiple


def _bottom_right(rank: int, axis_h: int, pad_h: tf.Tensor, pad_w: tf.Tensor) -> tf.Tensor:
    """A `tf.pad` paddings matrix that pads axes `axis_h` and `axis_h + 1` at their end."""
    rows = []
    for axis in range(rank):
        if axis == axis_h:
            rows.append(tf.stack([0, pad_h]))
        elif axis == axis_h + 1:
            rows.append(tf.stack([0, pad_w]))
        else:
            rows.append(tf.constant([0, 0], tf.int32))
    return tf.stack(rows)  # (rank, 2)


def pad_image_to(image: tf.Tensor, height, width) -> tf.Tensor:
    """Pad an RGB image (or a batch) on the bottom and right to at least (height, width).

    The one owner of image padding: `pad_image`, the training crops (`kfcn.data.augment`) and
    the fitting to a fixed size (`kfcn.fitting`) all pad here, with the ImageNet mean colour,
    which the model's preprocessing turns into exact zeros.

    Args:
        image: (H, W, 3) or (B, H, W, 3) RGB in 0-255, any real or integer dtype.
        height: the least output height (int or int32 scalar tensor).
        width: the least output width.

    Returns:
        float32 (..., max(H, height), max(W, width), 3); the original pixels unchanged.
    """
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    rank = image.shape.rank
    if rank not in (3, 4):
        raise ValueError(f"pad_image_to expects (H, W, 3) or (B, H, W, 3); got {image.shape}")
    shape = tf.shape(image)
    pad_h = tf.maximum(tf.cast(height, tf.int32) - shape[rank - 3], 0)
    pad_w = tf.maximum(tf.cast(width, tf.int32) - shape[rank - 2], 0)
    paddings = _bottom_right(rank, rank - 3, pad_h, pad_w)
    # Each channel padded with its own mean value: the original pixels stay bit-identical (no
    # mean added and subtracted), and the graph stays plain for converters such as tf2onnx (a
    # split, three pads and a concat; a select against a padded mask cost ONNX Runtime two
    # full-image multiplications).
    channels = tf.split(image, 3, axis=-1)  # 3 x (..., H, W, 1)
    padded = [
        tf.pad(channel, paddings, constant_values=mean)
        for channel, mean in zip(channels, IMAGENET_MEAN_RGB, strict=True)
    ]
    return tf.concat(padded, axis=-1)  # (..., H', W', 3)


def pad_label_to(label: tf.Tensor, height, width) -> tf.Tensor:
    """Pad a label map (or a batch) with `IGNORE_LABEL` on the bottom and right to at least
    (height, width); the one owner of label padding (see `pad_image_to`).

    Args:
        label: (H, W) or (B, H, W) integer class indices.

    Returns:
        (..., max(H, height), max(W, width)) with the same dtype.
    """
    label = tf.convert_to_tensor(label)
    rank = label.shape.rank
    if rank not in (2, 3):
        raise ValueError(f"pad_label_to expects (H, W) or (B, H, W); got shape {label.shape}")
    shape = tf.shape(label)
    pad_h = tf.maximum(tf.cast(height, tf.int32) - shape[rank - 2], 0)
    pad_w = tf.maximum(tf.cast(width, tf.int32) - shape[rank - 1], 0)
    paddings = _bottom_right(rank, rank - 2, pad_h, pad_w)
    return tf.pad(label, paddings, constant_values=tf.cast(IGNORE_LABEL, label.dtype))


def pad_image(image: tf.Tensor, multiple: int = MULTIPLE) -> tuple[tf.Tensor, tf.Tensor]:
    """Pad an RGB image (or a batch of same-sized ones) to the next multiple of 32.

    Args:
        image: (H, W, 3) or (B, H, W, 3) RGB in 0-255, any real or integer dtype.
        multiple: pad to a multiple of this instead (`input_multiple(model)`).

    Returns:
        `(padded, hw)`: padded float32 (..., H', W', 3) with H', W' the next multiples of 32, the
        new pixels on the bottom/right set to the ImageNet mean colour; and `hw`, the original
        (H, W) as an int32 tensor, for `crop_to`.
    """
    image = tf.convert_to_tensor(image)
    rank = image.shape.rank
    if rank not in (3, 4):
        raise ValueError(f"pad_image expects (H, W, 3) or (B, H, W, 3); got shape {image.shape}")
    hw = tf.shape(image)[rank - 3 : rank - 1]  # (2,) int32
    return pad_image_to(image, padded_size(hw[0], multiple), padded_size(hw[1], multiple)), hw


def pad_label(label: tf.Tensor, multiple: int = MULTIPLE) -> tf.Tensor:
    """Pad a label map (or a batch of same-sized ones) with `IGNORE_LABEL` to a multiple of 32
    (or of `multiple`).

    Args:
        label: (H, W) or (B, H, W) integer class indices.

    Returns:
        (..., H', W') with the same dtype; the new bottom/right pixels are `IGNORE_LABEL`.
    """
    label = tf.convert_to_tensor(label)
    rank = label.shape.rank
    if rank not in (2, 3):
        raise ValueError(f"pad_label expects (H, W) or (B, H, W); got shape {label.shape}")
    shape = tf.shape(label)
    height, width = padded_size(shape[rank - 2], multiple), padded_size(shape[rank - 1], multiple)
    return pad_label_to(label, height, width)


def crop_to(logits: tf.Tensor, hw: tf.Tensor) -> tf.Tensor:
    """Crop (..., H', W', C) logits back to the original (H, W) returned by `pad_image`.

    One `tf.slice` with explicit begin and size (not a strided slice with an ellipsis, which
    tf2onnx turns into an ONNX Slice with repeated axes that ONNX Runtime rejects).
    """
    logits = tf.convert_to_tensor(logits)
    hw = tf.convert_to_tensor(hw, tf.int32)
    rank = logits.shape.rank
    lead = [-1] * (rank - 3)
    size = tf.concat([tf.constant(lead, tf.int32), hw, tf.constant([-1], tf.int32)], axis=0)
    return tf.slice(logits, tf.zeros([rank], tf.int32), size)


_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""model -> its graph function (see `_forward`)."""


def _forward(model):
    """`model`'s inference call as a graph function, traced once per model and then reused.

    A graph call skips Keras's per-layer Python dispatch of an eager call and gives bit-identical
    output. The input signature leaves batch, height and width open, so images of any size share
    one trace. The function reaches the model through a weak reference: a strong one would keep every
    model ever run (about 0.5 GB each) alive through this cache.
    """
    forward = _FORWARD.get(model)
    if forward is None:
        model_ref = weakref.ref(model)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def forward(images):  # (B, H', W', 3), H' and W' multiples of 32
            logits = model_ref()(images, training=False)  # (B, H', W', C)
            return tf.cast(logits, tf.float32)

        _FORWARD[model] = forward
    return forward


def predict_logits(model, image) -> np.ndarray:
    """Run an FCN model on one image of any size.

    Args:
        model: a model from `kfcn.models.build_fcn` or `kfcn.models.load_model`.
        image: (H, W, 3) RGB in 0-255 (NumPy array or tensor, any real or integer dtype).

    Returns:
        (H, W, C) float32 NumPy logits for the original pixels.
    """
    padded, hw = pad_image(image, input_multiple(model))
    if padded.shape.rank != 3:
        raise ValueError(f"predict_logits expects one (H, W, 3) image; got shape {padded.shape}")
    logits = _forward(model)(padded[tf.newaxis])[0]  # (H', W', C)
    return np.asarray(crop_to(logits, hw))


def predict_logits_batch(model, images) -> np.ndarray:
    """Run an FCN model on a batch of same-sized images in one call.

    Args:
        model: a model from `kfcn.models.build_fcn` or `kfcn.models.load_model`.
        images: (B, H, W, 3) RGB in 0-255 (NumPy array or tensor, any real or integer dtype).

    Returns:
        (B, H, W, C) float32 NumPy logits for the original pixels. On CPU a batched call may
        round differently from single-image calls in the last bit (see `predict_classes`).
    """
    padded, hw = pad_image(images, input_multiple(model))
    if padded.shape.rank != 4:
        raise ValueError(
            f"predict_logits_batch expects (B, H, W, 3) images; got shape {padded.shape}"
        )
    return np.asarray(crop_to(_forward(model)(padded), hw))  # (B, H, W, C)


def predict_classes(model, images: Sequence) -> list[np.ndarray]:
    """Predicted class indices for images that share a padded size, in one model call.

    Each image is padded to its own next multiple of 32 (as in `predict_logits`), the padded
    images are stacked into one batch, and each image's logits are cropped back before the argmax.
    On CPU a batched call may round the logits differently from a single-image call in the last
    bit (about 1e-7), which changes a class only where two logits tie to that precision.

    Args:
        model: a model from `kfcn.models.build_fcn` or `kfcn.models.load_model`.
        images: (H_i, W_i, 3) RGB images in 0-255 whose `padded_size`s are all equal.

    Returns:
        One (H_i, W_i) uint8 array of class indices (argmax of the logits) per image.

    Raises:
        ValueError: the images' padded sizes differ, or the model has more than 256 classes.
    """
    multiple = input_multiple(model)
    padded = [pad_image(image, multiple) for image in images]
    shapes = {tuple(p.shape) for p, _ in padded}
    if len(shapes) != 1 or padded[0][0].shape.rank != 3:
        raise ValueError(
            f"predict_classes expects (H, W, 3) images of one padded size; got {shapes}"
        )
    logits = _forward(model)(tf.stack([p for p, _ in padded]))  # (B, H', W', C)
    if logits.shape[-1] > 256:
        raise ValueError(
            f"class indices must fit in uint8; the model has {logits.shape[-1]} classes"
        )
    classes = tf.argmax(logits, axis=-1, output_type=tf.int32)  # (B, H', W')
    classes = classes.numpy().astype(np.uint8)
    out = []
    for i, (_, hw) in enumerate(padded):
        h, w = hw.numpy()
        out.append(classes[i, :h, :w])  # (H_i, W_i)
    return out


def batches_by_padded_size(
    items: Iterable, batch_size: int, image_of=lambda item: item, multiple: int = MULTIPLE
) -> Iterator:
    """Group a stream of items into batches whose images share a padded size.

    Items are held back until `batch_size` of one padded size have arrived; whatever is left is
    yielded at the end. With `batch_size` 1 every item is yielded at once, in order.

    Args:
        items: any iterable; `image_of(item)` is its (H, W, 3) image.
        batch_size: the most items per batch (>= 1).
        image_of: maps an item to its image.
        multiple: what the images are padded to (`input_multiple` of the model).

    Yields:
        Lists of 1 to `batch_size` items.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    buckets: dict[tuple[int, int], list] = {}
    for item in items:
        h, w = np.shape(image_of(item))[:2]
        key = (padded_size(h, multiple), padded_size(w, multiple))
        bucket = buckets.setdefault(key, [])
        bucket.append(item)
        if len(bucket) == batch_size:
            yield buckets.pop(key)
    yield from buckets.values()
