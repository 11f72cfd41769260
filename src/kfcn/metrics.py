"""Segmentation metrics, all derived from one confusion matrix over the valid pixels.

`cm[i, j]` counts pixels of true class i predicted as class j. A pixel is valid when its label is
in [0, num_classes): IGNORE_LABEL (255) is never scored, and neither is any other out-of-range
label. From the matrix:

    pixel_accuracy  sum(diag) / sum(cm)
    mean_accuracy   mean of diag / row over the classes present in the labels (row > 0)
    per_class_iou   diag / (row + col - diag); NaN where that union is 0
    mean_iou        mean of per_class_iou over the classes with a non-zero union
    fw_iou          sum of (row / total) * IoU over the classes with a non-zero union

The same formulas run in numpy (`scores`, `ConfusionMatrix`: evaluation, validation, tests) and
in TensorFlow (`PixelAccuracy`, `MeanIoU`: the streaming metrics `model.fit` logs).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kfcn.palette import IGNORE_LABEL

# ------------------------------------------------------------------------------------------ numpy


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix of `preds` against `labels` over the valid pixels.

    Args:
        labels: integer class indices of any shape, IGNORE_LABEL where not scored.
        preds: predicted class indices, same shape, in [0, num_classes).
        num_classes: number of classes n.

    Returns:
        (n, n) int64 array, rows = true class, columns = predicted class.
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    preds = np.asarray(preds).reshape(-1).astype(np.int64)
    if labels.shape != preds.shape:
        raise ValueError(f"labels and preds differ in size: {labels.size} vs {preds.size}")
    valid = (labels != IGNORE_LABEL) & (labels >= 0) & (labels < num_classes)
    pred = preds[valid]
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(
            f"predictions must lie in [0, {num_classes}); got {pred.min()}..{pred.max()}"
        )
    counts = np.bincount(num_classes * labels[valid] + pred, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def scores(cm: np.ndarray) -> dict:
    """The summary metrics of a confusion matrix (see the module docstring).

    Returns:
        dict with float `pixel_accuracy`, `mean_accuracy`, `mean_iou`, `fw_iou` (NaN for an empty
        matrix) and `per_class_iou`, a float64 (n,) array, NaN where a class's union is 0.
    """
    cm = np.asarray(cm, dtype=np.float64)
    diag = np.diag(cm)
    rows = cm.sum(axis=1)  # pixels of each true class
    cols = cm.sum(axis=0)  # pixels predicted as each class
    union = rows + cols - diag
    total = cm.sum()
    present = rows > 0
    scored = union > 0
    per_class_iou = np.full(len(cm), np.nan)
    per_class_iou[scored] = diag[scored] / union[scored]

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else float("nan")

    return {
        "pixel_accuracy": float(diag.sum() / total) if total else float("nan"),
        "mean_accuracy": mean(diag[present] / rows[present]),
        "mean_iou": mean(per_class_iou[scored]),
        "fw_iou": float((rows[scored] / total * per_class_iou[scored]).sum())
        if total
        else float("nan"),
        "per_class_iou": per_class_iou,
    }


def background_baseline(cm: np.ndarray) -> np.ndarray:
    """The confusion matrix of predicting class 0 (background) for every scored pixel.

    Its scores are the floor a segmentation model must clearly beat on the same data.
    """
    cm = np.asarray(cm)
    baseline = np.zeros_like(cm)
    baseline[:, 0] = cm.sum(axis=1)
    return baseline


class ConfusionMatrix:
    """Accumulates a confusion matrix over many images (numpy, for evaluation)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, labels: np.ndarray, preds: np.ndarray) -> None:
        """Add one image's (or batch's) labels and predicted classes."""
        self.matrix += confusion_matrix(labels, preds, self.num_classes)

    def scores(self) -> dict:
        """`scores` of the matrix so far."""
        return scores(self.matrix)


# ------------------------------------------------------------------------------------- TensorFlow


def tf_confusion_matrix(
    labels: tf.Tensor, logits_or_preds: tf.Tensor, num_classes: int
) -> tf.Tensor:
    """`confusion_matrix` in TensorFlow ops (graph- and XLA-friendly).

    Args:
        labels: (B, H, W) or (B, H, W, 1) class indices, IGNORE_LABEL where not scored; any
            numeric dtype (Keras passes floats).
        logits_or_preds: (B, H, W, C) float logits (argmax is taken) or (B, H, W) integer
            predicted classes.
        num_classes: number of classes n.

    Returns:
        (n, n) int64 tensor, rows = true class.
    """
    preds = tf.convert_to_tensor(logits_or_preds)
    if preds.dtype.is_floating:
        if preds.shape[-1] is not None and preds.shape[-1] != num_classes:
            raise ValueError(f"logits have {preds.shape[-1]} channels; expected {num_classes}")
        preds = tf.argmax(preds, axis=-1, output_type=tf.int32)  # (B, H, W)
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank is not None and labels.shape.rank == preds.shape.rank + 1:
        labels = tf.squeeze(labels, axis=-1)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    preds = tf.reshape(tf.cast(preds, tf.int32), [-1])
    valid = (labels != IGNORE_LABEL) & (labels >= 0) & (labels < num_classes)
    # Invalid pixels get bin -1, which the segment sum drops. (tf.math.bincount would need a
    # data-dependent output size, which XLA cannot compile.)
    index = tf.where(valid, num_classes * labels + preds, -1)  # (P,)
    counts = tf.math.unsorted_segment_sum(tf.ones_like(index), index, num_classes**2)
    counts = tf.cast(counts, tf.int64)  # int32 is exact per batch; the epoch sum needs int64
    return tf.reshape(counts, [num_classes, num_classes])


class _ConfusionMatrixMetric(keras.metrics.Metric):
    """A Keras metric holding the epoch's confusion matrix; subclasses read one score from it."""

    def __init__(self, num_classes: int, name: str | None = None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = num_classes
        # int64: a VOC epoch has ~10^9 pixels, more than int32 or float32 count exactly.
        self.matrix = self.add_variable(
            shape=(num_classes, num_classes),
            initializer="zeros",
            dtype="int64",
            aggregation="sum",
            name="confusion_matrix",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add a batch: y_true (B, H, W) with IGNORE_LABEL, y_pred (B, H, W, C) logits."""
        del sample_weight  # every valid pixel counts once, as in evaluation
        self.matrix.assign_add(tf_confusion_matrix(y_true, y_pred, self.num_classes))

    def reset_state(self):
        self.matrix.assign(tf.zeros_like(self.matrix))

    def _parts(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """diag, rows, cols, total of the matrix, as float64."""
        cm = tf.cast(tf.convert_to_tensor(self.matrix), tf.float64)
        diag = tf.linalg.diag_part(cm)
        return diag, tf.reduce_sum(cm, axis=1), tf.reduce_sum(cm, axis=0), tf.reduce_sum(cm)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="kfcn")
class PixelAccuracy(_ConfusionMatrixMetric):
    """Streaming pixel accuracy over the valid pixels (equals `scores(cm)['pixel_accuracy']`).

    Reads 0 before any valid pixel has been seen.
    """

    def __init__(self, num_classes: int, name: str = "pixel_accuracy", dtype=None):
        super().__init__(num_classes, name=name, dtype=dtype)

    def result(self):
        diag, _, _, total = self._parts()
        return tf.cast(tf.math.divide_no_nan(tf.reduce_sum(diag), total), self.dtype)


@keras.saving.register_keras_serializable(package="kfcn")
class MeanIoU(_ConfusionMatrixMetric):
    """Streaming mean IoU over the classes with a non-zero union (equals `scores(cm)['mean_iou']`).

    Reads 0 before any valid pixel has been seen.
    """

    def __init__(self, num_classes: int, name: str = "mean_iou", dtype=None):
        super().__init__(num_classes, name=name, dtype=dtype)

    def result(self):
        diag, rows, cols, _ = self._parts()
        union = rows + cols - diag
        scored = tf.cast(union > 0, tf.float64)
        iou = tf.math.divide_no_nan(diag, union)  # 0 where the union is 0, excluded below
        mean = tf.math.divide_no_nan(tf.reduce_sum(iou * scored), tf.reduce_sum(scored))
        return tf.cast(mean, self.dtype)
