"""One confusion matrix, four metrics: numpy, TensorFlow and the streaming Keras metrics agree."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kfcn import metrics
from kfcn.palette import IGNORE_LABEL
from tests.fresh_process import run_two_replicas

# 4 classes: 0 and 1 in the labels, 2 only predicted, 3 nowhere; the two 255 pixels would add
# predictions of 2 and 3 if they were counted.
LABELS = np.array([[0, 0, 0, 0, 1], [1, 1, 255, 255, 1]], np.uint8)
PREDS = np.array([[0, 0, 1, 2, 1], [1, 0, 2, 3, 1]], np.int64)
CM = np.array([[2, 1, 1, 0], [1, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


def test_confusion_matrix_counts_valid_pixels_only():
    np.testing.assert_array_equal(metrics.confusion_matrix(LABELS, PREDS, 4), CM)


def test_scores_by_hand():
    s = metrics.scores(CM)
    # diag (2, 3, 0, 0); rows (4, 4, 0, 0); cols (3, 4, 1, 0); unions (5, 5, 1, 0).
    assert s["pixel_accuracy"] == pytest.approx(5 / 8)
    assert s["mean_accuracy"] == pytest.approx((2 / 4 + 3 / 4) / 2)  # classes 0, 1 only
    assert s["mean_iou"] == pytest.approx((2 / 5 + 3 / 5 + 0) / 3)  # class 3: empty union
    assert s["fw_iou"] == pytest.approx(4 / 8 * 2 / 5 + 4 / 8 * 3 / 5)
    np.testing.assert_allclose(s["per_class_iou"], [0.4, 0.6, 0.0, np.nan])


def test_scores_of_empty_matrix_are_nan():
    s = metrics.scores(np.zeros((3, 3), np.int64))
    assert all(math.isnan(s[k]) for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"))


def test_accumulator_sums_updates():
    cm = metrics.ConfusionMatrix(4)
    cm.update(LABELS[0], PREDS[0])
    cm.update(LABELS[1], PREDS[1])
    np.testing.assert_array_equal(cm.matrix, CM)
    assert cm.scores()["mean_iou"] == pytest.approx(metrics.scores(CM)["mean_iou"])


def test_out_of_range_prediction_is_rejected():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        metrics.confusion_matrix(LABELS, PREDS + 2, 4)


def random_batch(rng, shape=(2, 6, 7), num_classes=5):
    labels = rng.integers(0, num_classes, shape).astype(np.uint8)
    labels[rng.random(shape) < 0.2] = IGNORE_LABEL
    logits = rng.normal(size=shape + (num_classes,)).astype(np.float32)
    return labels, logits


def test_tf_confusion_matrix_equals_numpy():
    labels, logits = random_batch(np.random.default_rng(0))
    expected = metrics.confusion_matrix(labels, logits.argmax(-1), 5)
    np.testing.assert_array_equal(metrics.tf_confusion_matrix(labels, logits, 5), expected)
    preds = logits.argmax(-1).astype(np.int32)
    np.testing.assert_array_equal(metrics.tf_confusion_matrix(labels, preds, 5), expected)
    as_keras = labels[..., None].astype(
        np.float32
    )  # Keras hands y_true over as (B, H, W, 1) floats
    np.testing.assert_array_equal(metrics.tf_confusion_matrix(as_keras, logits, 5), expected)
    jitted = tf.function(metrics.tf_confusion_matrix, jit_compile=True)
    np.testing.assert_array_equal(jitted(labels, logits, 5), expected)


def test_streaming_metrics_equal_numpy_over_all_updates():
    rng = np.random.default_rng(1)
    batches = [random_batch(rng) for _ in range(3)]
    miou, acc = metrics.MeanIoU(5), metrics.PixelAccuracy(5)
    for labels, logits in batches:
        miou.update_state(labels, logits)
        acc.update_state(labels, logits)
    all_labels = np.concatenate([b[0] for b in batches])
    all_preds = np.concatenate([b[1].argmax(-1) for b in batches])
    expected = metrics.scores(metrics.confusion_matrix(all_labels, all_preds, 5))
    assert float(miou.result()) == pytest.approx(expected["mean_iou"], rel=1e-6)
    assert float(acc.result()) == pytest.approx(expected["pixel_accuracy"], rel=1e-6)
    miou.reset_state()
    assert float(miou.result()) == 0.0
    assert not np.asarray(miou.matrix).any()


def test_streaming_metrics_serialize():
    for metric in (metrics.MeanIoU(7, name="miou"), metrics.PixelAccuracy(7)):
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
        assert type(clone) is type(metric)
        assert clone.num_classes == 7 and clone.name == metric.name


def test_fit_under_two_replicas_resets_metrics_each_epoch():
    """MirroredStrategy on two logical CPUs (a fresh process): see tests/two_replicas.py."""
    result = run_two_replicas("metrics")
    assert result.returncode == 0 and "metrics: ok" in result.stdout, result.stderr[-3000:]


def test_background_baseline_scores_an_all_background_prediction():
    labels = np.array([[0, 0, 1], [2, 2, 255]])
    preds = np.array([[1, 0, 1], [2, 0, 0]])
    cm = metrics.confusion_matrix(labels, preds, 3)
    base = metrics.background_baseline(cm)
    zeros = np.zeros_like(preds)
    np.testing.assert_array_equal(base, metrics.confusion_matrix(labels, zeros, 3))
    got = metrics.scores(base)
    assert got["pixel_accuracy"] == pytest.approx(2 / 5)
    assert got["mean_iou"] == pytest.approx((2 / 5) / 3)  # only class 0 has an intersection
