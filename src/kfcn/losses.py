"""Segmentation losses that ignore IGNORE_LABEL pixels: cross-entropy, focal, Dice, Lovasz-softmax.

Only IGNORE_LABEL (255) is ignored. Any other label outside [0, num_classes) is a data error that
these losses cannot see: its one-hot row is all zeros, so the pixel would count as valid with a
zero loss. `kfcn.data.pipeline.train_dataset(num_classes=...)` stops training on such a label,
naming the value, the split and the record.

`SegmentationLoss` (what `kfcn train` compiles, from `train.loss` and friends) gives one replica
and R replicas the same value and gradients:

* pixel losses (cross-entropy, focal) are summed over the counted pixels (valid, and kept by
  hard-pixel mining when it is on), each weighted by its true class's weight, and divided by the
  number of counted pixels of the whole global batch (weights scale pixels, they do not change the
  denominator);
* Dice and Lovasz-softmax are computed per image and averaged over the images of the global
  batch;
* hard-pixel mining (OHEM) selects per image.
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


DICE_SMOOTH = 1.0
"""Added to the numerator and denominator of each class's Dice ratio (a class absent from an image
and not predicted there scores 1, not 0/0)."""


def _dense(labels: tf.Tensor, logits: tf.Tensor, num_classes: int):
    """(labels (B, H, W) int32 with 0 at ignored pixels, valid (B, H, W) float32,
    one-hot (B, H, W, C) float32 zero at ignored pixels, probabilities (B, H, W, C) float32,
    log-probabilities (B, H, W, C) float32)."""
    labels = tf.convert_to_tensor(labels)
    logits = tf.cast(logits, tf.float32)  # (B, H, W, C); bf16/fp16 softmax loses too much
    if labels.shape.rank == logits.shape.rank:
        labels = tf.squeeze(labels, axis=-1)
    labels = tf.cast(labels, tf.int32)  # (B, H, W)
    valid = tf.not_equal(labels, IGNORE_LABEL)
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    validf = tf.cast(valid, tf.float32)  # (B, H, W)
    one_hot = tf.one_hot(safe, num_classes, dtype=tf.float32) * validf[..., None]
    log_probs = tf.nn.log_softmax(logits)  # (B, H, W, C)
    return safe, validf, one_hot, tf.exp(log_probs), log_probs


def ohem_mask(true_prob: tf.Tensor, valid: tf.Tensor, threshold: float, min_kept: int) -> tf.Tensor:
    """Pixels that hard-pixel mining keeps, per image.

    A valid pixel is kept when its true-class probability is below `threshold`, or when it is
    among the `min_kept` valid pixels of its image with the lowest true-class probability
    (ties with the last of them are kept too).

    Args:
        true_prob: (B, H, W) float32 probability of each pixel's true class.
        valid: (B, H, W) float32, 1 where the label is not IGNORE_LABEL.
        threshold: in (0, 1).
        min_kept: >= 0.

    Returns:
        (B, H, W) float32, 1 where kept (never at an ignored pixel).
    """
    true_prob = tf.stop_gradient(true_prob)
    keep = true_prob < threshold
    if min_kept > 0:
        b = tf.shape(true_prob)[0]
        flat = tf.reshape(tf.where(valid > 0, true_prob, 2.0), (b, -1))  # ignored sort last
        n_valid = tf.cast(tf.reduce_sum(tf.reshape(valid, (b, -1)), axis=1), tf.int32)  # (B,)
        k = tf.minimum(tf.minimum(n_valid, min_kept), tf.shape(flat)[1])  # (B,)
        ascending = tf.sort(flat, axis=1)
        kth = tf.gather(ascending, tf.maximum(k - 1, 0), axis=1, batch_dims=1)  # (B,)
        kth = tf.where(k > 0, kth, -1.0)  # no valid pixel: nothing to keep
        keep = keep | (true_prob <= kth[:, None, None])
    return tf.cast(keep, tf.float32) * valid


def dice_per_image(one_hot: tf.Tensor, probs: tf.Tensor, valid: tf.Tensor, weights) -> tf.Tensor:
    """1 - the class-weighted mean over all classes of soft Dice, per image, over valid pixels.

    Dice of class c in an image: (2 sum(p_c g_c) + s) / (sum(p_c) + sum(g_c) + s), sums over the
    image's valid pixels, s = DICE_SMOOTH. Returns (B,) float32.
    """
    probs = probs * valid[..., None]  # ignored pixels take no part
    inter = tf.reduce_sum(probs * one_hot, axis=(1, 2))  # (B, C)
    total = tf.reduce_sum(probs, axis=(1, 2)) + tf.reduce_sum(one_hot, axis=(1, 2))  # (B, C)
    dice = (2.0 * inter + DICE_SMOOTH) / (total + DICE_SMOOTH)  # (B, C)
    return 1.0 - tf.reduce_sum(dice * weights, axis=-1) / tf.reduce_sum(weights)


def lovasz_per_image(one_hot: tf.Tensor, probs: tf.Tensor, valid: tf.Tensor, weights) -> tf.Tensor:
    """Lovasz-softmax (Berman et al. 2018) per image: the class-weighted mean, over the classes
    present in the image's valid labels, of the Lovasz extension of the Jaccard loss applied to
    the errors |g_c - p_c| of the valid pixels. An image without valid pixels scores 0.

    Ignored pixels enter with error 0 and no foreground: sorted last, they change neither the
    value nor (being masked) the gradient. Returns (B,) float32.
    """
    b, c = tf.shape(probs)[0], tf.shape(probs)[-1]
    fg = tf.transpose(tf.reshape(one_hot, (b, -1, c)), (0, 2, 1))  # (B, C, N)
    p = tf.transpose(tf.reshape(probs, (b, -1, c)), (0, 2, 1))  # (B, C, N)
    errors = tf.abs(fg - p) * tf.reshape(valid, (b, 1, -1))  # (B, C, N)
    order = tf.argsort(tf.stop_gradient(errors), axis=-1, direction="DESCENDING", stable=True)
    errors_sorted = tf.gather(errors, order, axis=-1, batch_dims=2)  # (B, C, N)
    fg_sorted = tf.gather(fg, order, axis=-1, batch_dims=2)
    gts = tf.reduce_sum(fg_sorted, axis=-1, keepdims=True)  # (B, C, 1)
    intersection = gts - tf.cumsum(fg_sorted, axis=-1)
    union = gts + tf.cumsum(1.0 - fg_sorted, axis=-1)
    jaccard = 1.0 - intersection / union  # (B, C, N); union >= 1 from the first pixel on
    grad = tf.concat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], axis=-1)
    per_class = tf.reduce_sum(errors_sorted * tf.stop_gradient(grad), axis=-1)  # (B, C)
    present = tf.cast(gts[..., 0] > 0, tf.float32) * weights  # (B, C)
    return tf.math.divide_no_nan(tf.reduce_sum(per_class * present, -1), tf.reduce_sum(present, -1))


@keras.saving.register_keras_serializable(package="kfcn")
class SegmentationLoss(keras.losses.Loss):
    """`train.loss` as a Keras loss: cross_entropy, focal, dice, lovasz or cross_entropy+dice,
    with class weights and optional hard-pixel mining; see the module docstring for how each is
    normalised so that the value does not depend on how the global batch is split.

    Args:
        num_classes: C.
        loss: one of `kfcn.config.LOSS_NAMES`.
        class_weights: C weights >= 0, or None for all 1.
        focal_gamma: the focal loss's exponent: -(1 - p_t)^gamma log p_t.
        ohem_threshold: hard-pixel mining of the pixel losses (see `ohem_mask`), None = off.
        ohem_min_kept: the fewest pixels mining keeps per image.
    """

    def __init__(
        self,
        num_classes: int,
        loss: str = "cross_entropy",
        class_weights=None,
        focal_gamma: float = 2.0,
        ohem_threshold: float | None = None,
        ohem_min_kept: int = 0,
        name: str = "segmentation_loss",
        reduction="sum_over_batch_size",
        **kwargs,
    ):
        super().__init__(name=name, reduction=reduction, **kwargs)
        parts = loss.split("+")
        if not parts or any(p not in ("cross_entropy", "focal", "dice", "lovasz") for p in parts):
            raise ValueError(f"unknown loss {loss!r}")
        self.num_classes = int(num_classes)
        self.loss = loss
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.focal_gamma = float(focal_gamma)
        self.ohem_threshold = None if ohem_threshold is None else float(ohem_threshold)
        self.ohem_min_kept = int(ohem_min_kept)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "loss": self.loss,
            "class_weights": self.class_weights,
            "focal_gamma": self.focal_gamma,
            "ohem_threshold": self.ohem_threshold,
            "ohem_min_kept": self.ohem_min_kept,
        }

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        safe, valid, one_hot, probs, log_probs = _dense(y_true, y_pred, self.num_classes)
        weights = tf.constant(self.class_weights or [1.0] * self.num_classes, tf.float32)  # (C,)
        # "sum_over_batch_size" divides the sum of what is returned by B*H*W, and Keras then by R
        # for R replicas (whose gradients are summed): scale by B*H*W * R / (global count).
        total = tf.cast(tf.size(valid), tf.float32)
        out = tf.zeros_like(valid)  # (B, H, W)
        parts = self.loss.split("+")
        if "cross_entropy" in parts or "focal" in parts:
            out += self._pixel_term(safe, valid, one_hot, probs, log_probs, weights) * total
        image_terms = []
        if "dice" in parts:
            image_terms.append(dice_per_image(one_hot, probs, valid, weights))
        if "lovasz" in parts:
            image_terms.append(lovasz_per_image(one_hot, probs, valid, weights))
        if image_terms:
            per_image = tf.add_n(image_terms)  # (B,)
            b = tf.shape(valid)[0]
            images, replicas = _global_count(tf.cast(b, tf.float32))
            pixels = total / tf.cast(b, tf.float32)  # H*W
            scale = total * replicas / (images * pixels)
            out += per_image[:, None, None] * scale * tf.ones_like(valid)
        return out

    def _pixel_term(self, safe, valid, one_hot, probs, log_probs, weights) -> tf.Tensor:
        """Per-pixel weighted CE or focal loss of the counted pixels, times R / global count."""
        log_true = tf.reduce_sum(one_hot * log_probs, axis=-1)  # (B, H, W); 0 where ignored
        pixel = -log_true
        if self.loss == "focal":
            true_prob = tf.reduce_sum(one_hot * probs, axis=-1)
            pixel = pixel * tf.pow(1.0 - true_prob, self.focal_gamma)
        counted = valid
        if self.ohem_threshold is not None:
            true_prob = tf.reduce_sum(one_hot * probs, axis=-1)
            counted = ohem_mask(true_prob, valid, self.ohem_threshold, self.ohem_min_kept)
        pixel = tf.where(counted > 0, pixel * tf.gather(weights, safe), tf.zeros_like(pixel))
        count, replicas = _global_count(tf.reduce_sum(counted))
        return pixel * tf.math.divide_no_nan(replicas, count)  # (B, H, W)


def make_loss(train_cfg, num_classes: int, class_weights=None) -> keras.losses.Loss:
    """The loss `kfcn train` compiles: today's `MaskedSparseCrossEntropy` for the default
    (plain cross-entropy, no weights, no mining), else a `SegmentationLoss`."""
    plain = train_cfg.loss == "cross_entropy" and train_cfg.ohem_threshold is None
    if plain and class_weights is None:
        return MaskedSparseCrossEntropy()
    return SegmentationLoss(
        num_classes,
        train_cfg.loss,
        class_weights,
        focal_gamma=train_cfg.focal_gamma,
        ohem_threshold=train_cfg.ohem_threshold,
        ohem_min_kept=train_cfg.ohem_min_kept,
    )
