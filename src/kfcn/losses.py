"""Softmax cross-entropy that ignores IGNORE_LABEL pixels.

Only IGNORE_LABEL (255) is ignored. Any other label outside [0, num_classes) is a data error:
TensorFlow rejects it on CPU and yields NaN on GPU, which training's non-finite-loss guard reports.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kfcn.palette import IGNORE_LABEL


def _pixel_losses(labels: tf.Tensor, logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-pixel cross-entropy (0 at ignored pixels) and the valid-pixel mask, in float32."""
    labels = tf.convert_to_tensor(labels)
    logits = tf.cast(logits, tf.float32)  # (B, H, W, C); bf16/fp16 softmax loses too much
    if labels.shape.rank == logits.shape.rank:
        labels = tf.squeeze(labels, axis=-1)  # (B, H, W, 1) -> (B, H, W)
    # Keras hands y_true over as floats; class indices up to 255 are exact in float32.
    labels = tf.cast(labels, tf.int32)  # (B, H, W)
    valid = tf.not_equal(labels, IGNORE_LABEL)  # (B, H, W)
    # Ignored pixels get class 0 so the op sees in-range labels; their loss is masked out after.
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    # log-softmax picked by a one-hot mask rather than sparse_softmax_cross_entropy_with_logits,
    # which has no deterministic GPU kernel (op determinism would reject it).
    one_hot = tf.one_hot(safe, tf.shape(logits)[-1], dtype=tf.float32)  # (B, H, W, C)
    ce = -tf.reduce_sum(one_hot * tf.nn.log_softmax(logits), axis=-1)  # (B, H, W)
    ce = tf.where(valid, ce, tf.zeros_like(ce))  # (B, H, W); where() keeps their gradient at 0
    return ce, tf.cast(valid, tf.float32)


def masked_sparse_ce(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean softmax cross-entropy over the pixels whose label is not IGNORE_LABEL.

    Use `MaskedSparseCrossEntropy` in `model.compile`: Keras scales a loss object's result for
    tf.distribute, but not a scalar returned by a plain function.

    Args:
        labels: (B, H, W) or (B, H, W, 1) class indices, IGNORE_LABEL where not scored.
        logits: (B, H, W, C) unnormalised scores, any float dtype (computed in float32).

    Returns:
        float32 scalar; 0 when no pixel is valid.
    """
    ce, valid = _pixel_losses(labels, logits)
    return tf.math.divide_no_nan(tf.reduce_sum(ce), tf.reduce_sum(valid))


@keras.saving.register_keras_serializable(package="kfcn")
class MaskedSparseCrossEntropy(keras.losses.Loss):
    """`masked_sparse_ce` as a Keras loss, for `model.compile(loss=MaskedSparseCrossEntropy())`.

    With the default reduction "sum_over_batch_size" the loss is the mean over the valid pixels of
    the *global* batch (0 when there are none): under tf.distribute each replica divides its sum by
    the valid-pixel count of all replicas together, so a replica holding a mostly ignored crop
    weighs by its pixels, and the gradient does not depend on how the batch is split. With
    reduction "none" it returns the (B, H, W) per-pixel losses weighted as explained in `call`.
    """

    def __init__(self, name: str = "masked_sparse_ce", reduction="sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        ce, valid = _pixel_losses(y_true, y_pred)
        # "sum_over_batch_size" divides this replica's sum by its B*H*W, and Keras then scales by
        # 1/R for R replicas (the gradients are summed across replicas). Weighting every pixel by
        # B*H*W * R / (valid pixels of all replicas) turns the sum into the global valid mean.
        total = tf.cast(tf.size(ce), tf.float32)
        valid_count, replicas = _global_count(tf.reduce_sum(valid))
        return ce * tf.math.divide_no_nan(total * replicas, valid_count)  # (B, H, W)


def _global_count(count: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(`count` summed over the replicas in sync, their number), both float32 scalars.

    Outside a replica context (e.g. a loss computed in cross-replica code) it is the local count.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return count, tf.constant(1.0)
    total = context.all_reduce("SUM", tf.stop_gradient(count))
    return total, tf.constant(float(context.num_replicas_in_sync))
