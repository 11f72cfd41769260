"""The ignore-255 cross-entropy against numpy, as a function and as a Keras loss."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kfcn.losses import MaskedSparseCrossEntropy, masked_sparse_ce
from kfcn.palette import IGNORE_LABEL
from tests.fresh_process import run_two_replicas


def numpy_loss(labels: np.ndarray, logits: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    valid = labels != IGNORE_LABEL
    picked = np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return float(-picked[valid].mean())


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (2, 6, 7)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = IGNORE_LABEL
    logits = (3 * rng.normal(size=(2, 6, 7, 5))).astype(np.float32)
    return labels, logits


def test_function_equals_numpy(batch):
    labels, logits = batch
    expected = numpy_loss(labels, logits)
    assert float(masked_sparse_ce(labels, logits)) == pytest.approx(expected, rel=1e-5)
    assert float(masked_sparse_ce(labels[..., None], logits)) == pytest.approx(expected, rel=1e-5)


def test_loss_object_returns_the_valid_pixel_mean(batch):
    labels, logits = batch
    loss = MaskedSparseCrossEntropy()
    expected = numpy_loss(labels, logits)
    assert float(loss(labels, logits)) == pytest.approx(expected, rel=1e-5)
    assert float(loss(labels[..., None].astype(np.float32), logits)) == pytest.approx(
        expected, rel=1e-5
    )


def test_all_ignored_gives_zero_and_finite_gradients(batch):
    _, logits = batch
    labels = np.full(logits.shape[:-1], IGNORE_LABEL, np.int32)
    logits = tf.Variable(logits)
    for fn in (masked_sparse_ce, MaskedSparseCrossEntropy()):
        with tf.GradientTape() as tape:
            value = fn(labels, logits)
        grad = tape.gradient(value, logits)
        assert float(value) == 0.0
        assert np.isfinite(grad.numpy()).all() and not grad.numpy().any()


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_low_precision_logits_are_computed_in_float32(batch, dtype):
    labels, logits = batch
    low = tf.cast(logits, dtype)
    expected = numpy_loss(labels, tf.cast(low, tf.float32).numpy())
    for fn in (masked_sparse_ce, MaskedSparseCrossEntropy()):
        value = fn(labels, low)
        assert value.dtype == tf.float32
        assert float(value) == pytest.approx(expected, rel=1e-5)


def test_compiled_model_reports_the_masked_mean(batch):
    labels, _ = batch
    x = np.random.default_rng(1).normal(size=(2, 6, 7, 3)).astype(np.float32)
    model = keras.Sequential([keras.Input((6, 7, 3)), keras.layers.Conv2D(5, 1)])
    model.compile(loss=MaskedSparseCrossEntropy())
    reported = model.evaluate(x, labels, batch_size=2, verbose=0)
    expected = numpy_loss(labels, model.predict(x, verbose=0))
    assert reported == pytest.approx(expected, rel=1e-5)


def test_loss_serializes():
    loss = MaskedSparseCrossEntropy(name="seg_loss")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(clone, MaskedSparseCrossEntropy) and clone.name == "seg_loss"


def test_two_replicas_step_like_one_replica_with_the_same_global_batch():
    """The loss is normalised by the valid pixels of the global batch, so a replica holding mostly
    ignored crops does not weigh as much as a full one (a fresh process: tests/two_replicas.py)."""
    result = run_two_replicas("loss-gradients")
    assert result.returncode == 0 and "loss-gradients: ok" in result.stdout, result.stderr[-3000:]
