"""Fit an image into one fixed size, and bring a prediction back to the image's own size.

A fixed-size model (a TFLite file, or any model under `kfcn evaluate --size HxW`) sees every image
through `fit_image`: resized bilinearly, keeping its aspect ratio, until it touches the target on
one side, then padded on the bottom and right to the target by `kfcn.padding.pad_image_to` (the
ImageNet mean colour). The same function fits the training images of the `resize_pad`
augmentation (`fit_label` fits their labels: NEAREST, padded with IGNORE_LABEL) and the int8
calibration images of `kfcn export`, so a quantized model is calibrated on what it is later shown.

`unfit_probabilities` undoes the fitting on a prediction: it crops the resized region and resizes
the class probabilities bilinearly back to the image's size; the class is their argmax.
"""

from __future__ import annotations

import tensorflow as tf

from kfcn.padding import pad_image_to, pad_label_to

FITTING = "resize_pad"
"""The name of this fitting, written into fixed-size exports' metadata."""


def fitted_size(hw: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """(h', w') of an (h, w) image resized into `size` keeping its aspect ratio.

    The geometry of `tf.image.resize_with_pad`: the side that limits the scale fills the target,
    the other is rounded down (and at least 1).

    Args:
        hw: (2,) int (h, w).
        size: the target (H, W).

    Returns:
        (2,) int32 (h', w').
    """
    hw = tf.cast(tf.convert_to_tensor(hw), tf.float64)
    target = tf.constant(size, tf.float64)
    ratio = tf.reduce_max(hw / target)
    out = tf.minimum(tf.floor(hw / ratio), target)
    return tf.cast(tf.maximum(out, 1.0), tf.int32)


def fit_image(image: tf.Tensor, size: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor]:
    """Resize an image into `size` keeping its aspect ratio, then pad it to `size`.

    Args:
        image: (h, w, 3) RGB in 0-255, any real or integer dtype.
        size: (H, W).

    Returns:
        `(fitted, hw)`: float32 (H, W, 3), the resized image at the top left and the ImageNet
        mean colour below and to the right; and `hw`, the resized (h', w') for
        `unfit_probabilities`.
    """
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    hw = fitted_size(tf.shape(image)[:2], size)
    resized = tf.image.resize(image, hw, method="bilinear")  # (h', w', 3)
    fitted = pad_image_to(resized, size[0], size[1])  # (H, W, 3)
    fitted.set_shape([size[0], size[1], 3])
    return fitted, hw


def fit_label(label: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """`label` (h, w) fitted like its image by `fit_image`: NEAREST, padded with IGNORE_LABEL.

    Returns:
        (H, W) with the label's dtype.
    """
    label = tf.convert_to_tensor(label)
    hw = fitted_size(tf.shape(label), size)
    resized = tf.image.resize(label[..., None], hw, method="nearest")[..., 0]  # (h', w')
    fitted = pad_label_to(tf.cast(resized, label.dtype), size[0], size[1])
    fitted.set_shape(list(size))
    return fitted


def fit_uint8(image, size: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor]:
    """`fit_image` rounded to uint8, the input of a fixed-size export.

    Returns:
        (H, W, 3) uint8 and the resized (h', w').
    """
    fitted, hw = fit_image(image, size)
    return tf.cast(tf.clip_by_value(tf.round(fitted), 0, 255), tf.uint8), hw


def unfit_probabilities(probabilities, hw, image_hw: tuple[int, int]) -> tf.Tensor:
    """Bring (H, W, C) class probabilities of a fitted image back to the image's (h, w).

    Args:
        probabilities: (H, W, C) of the fitted image.
        hw: the resized (h', w') that `fit_image` returned.
        image_hw: the image's own (h, w).

    Returns:
        float32 (h, w, C): the (h', w') region, resized bilinearly.
    """
    probabilities = tf.cast(tf.convert_to_tensor(probabilities), tf.float32)
    hw = tf.convert_to_tensor(hw, tf.int32)
    region = tf.slice(probabilities, [0, 0, 0], tf.concat([hw, [-1]], axis=0))
    return tf.image.resize(region, image_hw, method="bilinear")  # (h, w, C)
