"""Paired image/label transforms for training.

Every op takes an image and its label together and applies the same geometry to both: images
are resampled bilinearly, labels with NEAREST (class indices must never be blended), and label
padding is always IGNORE_LABEL so padded pixels are never scored. All ops are pure TensorFlow and
draw their randomness from stateless ops with an explicit `seed` (a shape-[2] integer tensor), so a
pipeline that derives per-example seeds from one number is reproducible.

Images come in as (H, W, 3) of any numeric dtype and leave as float32 in 0-255; labels are (H, W)
integers and keep their dtype.
"""

from __future__ import annotations

import tensorflow as tf

from kfcn.fitting import fit_image, fit_label
from kfcn.padding import pad_image_to, pad_label_to


def random_scale(
    image: tf.Tensor, label: tf.Tensor, scale_min: float, scale_max: float, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Rescale image and label by one factor drawn uniformly from [scale_min, scale_max].

    Args:
        image: (H, W, 3) image.
        label: (H, W) class indices.
        scale_min: smallest factor.
        scale_max: largest factor.
        seed: shape-[2] integer seed of the stateless draw.

    Returns:
        The float32 image (h, w, 3), resized bilinearly, and the label (h, w), resized NEAREST,
        where (h, w) = round((H, W) * factor).
    """
    image, label = tf.cast(image, tf.float32), tf.convert_to_tensor(label)
    if scale_min == scale_max == 1.0:
        return image, label  # resampling at the same size would be an exact copy anyway
    factor = tf.random.stateless_uniform([], seed, minval=scale_min, maxval=scale_max)
    size = tf.cast(tf.shape(image)[:2], tf.float32) * factor
    size = tf.maximum(tf.cast(tf.round(size), tf.int32), 1)  # (2,) new (h, w)
    image = tf.image.resize(image, size, method="bilinear")  # (h, w, 3) float32
    label = tf.image.resize(label[..., None], size, method="nearest")[..., 0]  # (h, w)
    return image, label


def random_crop_or_pad(
    image: tf.Tensor, label: tf.Tensor, size: int, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pad up to `size` where the image is smaller, then take one random size x size window.

    Padding goes on the bottom and right edges, as in `kfcn.padding`: the image gets the ImageNet
    mean colour (0 after the model's centring), the label IGNORE_LABEL.

    Args:
        image: (H, W, 3) image.
        label: (H, W) class indices.
        size: side of the square crop.
        seed: shape-[2] integer seed of the window position.

    Returns:
        The float32 image (size, size, 3) and the label (size, size).
    """
    image, label = tf.cast(image, tf.float32), tf.convert_to_tensor(label)
    image, label = pad_image_to(image, size, size), pad_label_to(label, size, size)
    limit = tf.shape(label) - size  # (2,) largest top-left corner, >= 0 after padding
    draw = tf.random.stateless_uniform([2], seed)  # (2,) in [0, 1)
    offset = tf.cast(draw * tf.cast(limit + 1, tf.float32), tf.int32)
    offset = tf.minimum(offset, limit)  # guards float rounding at the top of the range
    image = tf.slice(image, [offset[0], offset[1], 0], [size, size, 3])
    label = tf.slice(label, offset, [size, size])
    image.set_shape([size, size, 3])
    label.set_shape([size, size])
    return image, label


def random_flip(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirror image and label left-right together with probability 1/2.

    Args:
        image: (H, W, 3) image.
        label: (H, W) class indices.
        seed: shape-[2] integer seed of the coin.

    Returns:
        The float32 image (H, W, 3) and the label (H, W).
    """
    image, label = tf.cast(image, tf.float32), tf.convert_to_tensor(label)
    flip = tf.random.stateless_uniform([], seed) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    label = tf.cond(flip, lambda: tf.reverse(label, axis=[1]), lambda: label)
    return image, label


def resize_pad(image: tf.Tensor, label: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Fit image and label into size x size keeping the aspect ratio (`kfcn.fitting`).

    The one fitting that fixed-size inference and int8 calibration use too: the image is
    resized bilinearly until one side fills `size` (the geometry of `tf.image.resize_with_pad`),
    then padded on the bottom and right with the ImageNet mean colour, 0 after the model's
    centring, as in `kfcn.padding`; the label is resized NEAREST and padded with IGNORE_LABEL.

    Args:
        image: (H, W, 3) image.
        label: (H, W) class indices.
        size: side of the square output.

    Returns:
        The float32 image (size, size, 3) and the label (size, size).
    """
    image, _ = fit_image(image, (size, size))
    return image, fit_label(label, (size, size))
