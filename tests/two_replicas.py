"""Checks that need two replicas, run in a fresh process with two logical CPU devices:

    python -m tests.two_replicas loss-gradients|metrics

Each check raises (exit status 1) when it fails.
"""

from __future__ import annotations

import sys

import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kfcn import metrics  # noqa: E402
from kfcn.losses import MaskedSparseCrossEntropy, masked_sparse_ce  # noqa: E402
from kfcn.palette import IGNORE_LABEL  # noqa: E402

# One strategy for every check: two MirroredStrategy objects in one process mix up collectives.
MIRRORED = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _one_step(strategy, weights, x, y, loss=None) -> list[np.ndarray]:
    """Weights after one SGD(lr=1) step on the global batch (x, y) under `strategy`."""
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input(x.shape[1:]), keras.layers.Conv2D(3, 3, padding="same")]
        )
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss or MaskedSparseCrossEntropy())
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))
    model.fit(ds, epochs=1, verbose=0, shuffle=False)
    return model.get_weights()


def loss_gradients() -> None:
    """Two replicas with global batch 4 step exactly like one replica with batch 4, although
    replica 0's crops are mostly ignored and replica 1's are not."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 3, (4, 8, 8)).astype(np.int32)
    y[:2, :, :7] = IGNORE_LABEL  # replica 0: 1 valid column in 8
    start = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(3, 3, padding="same")])
    weights = start.get_weights()
    single = _one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), weights, x, y)
    assert MIRRORED.num_replicas_in_sync == 2
    mirrored = _one_step(MIRRORED, weights, x, y)
    for a, b, w in zip(single, mirrored, weights, strict=True):
        assert np.abs(a - w).max() > 1e-3  # the step moved the weights
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def fit_metrics() -> None:
    """Under two replicas, each epoch's logged metrics are those of that epoch's images alone."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 6, 6, 3)).astype(np.float32)
    y = rng.integers(0, 4, (8, 6, 6)).astype(np.int32)
    y[:, 0] = IGNORE_LABEL
    y[::2, 1:3] = IGNORE_LABEL  # replicas see different numbers of valid pixels
    strategy = MIRRORED
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 1)])
        model.compile(
            optimizer=keras.optimizers.SGD(0.0),
            loss=MaskedSparseCrossEntropy(),
            metrics=[metrics.PixelAccuracy(4), metrics.MeanIoU(4)],
        )
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2).repeat()
    # Epoch 1 sees batches 0-1 (images 0-3), epoch 2 batches 2-3 (images 4-7).
    history = model.fit(ds, epochs=2, steps_per_epoch=2, shuffle=False, verbose=0).history
    logits = model.predict(x, verbose=0)
    for epoch, part in enumerate((slice(0, 4), slice(4, 8))):
        expected = metrics.scores(metrics.confusion_matrix(y[part], logits[part].argmax(-1), 4))
        np.testing.assert_allclose(history["mean_iou"][epoch], expected["mean_iou"], rtol=1e-5)
        np.testing.assert_allclose(
            history["pixel_accuracy"][epoch], expected["pixel_accuracy"], rtol=1e-5
        )
        # The loss of a step is the valid-pixel mean of its global batch.
        starts = range(part.start, part.stop, 2)
        batch_losses = [float(masked_sparse_ce(y[i : i + 2], logits[i : i + 2])) for i in starts]
        np.testing.assert_allclose(history["loss"][epoch], np.mean(batch_losses), rtol=1e-5)


def seg_losses() -> None:
    """A pixel loss with hard-pixel mining, a per-image loss and their sum (all weighted) step
    two replicas with global batch 4 like one replica with batch 4, replica 0's crops mostly
    ignored."""
    from kfcn.losses import SegmentationLoss

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 3, (4, 8, 8)).astype(np.int32)
    y[:2, :, :6] = IGNORE_LABEL
    start = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(3, 3, padding="same")])
    weights = start.get_weights()
    settings = [("focal", 0.6), ("lovasz", None), ("cross_entropy+dice", None)]
    for name, threshold in settings:
        loss = SegmentationLoss(3, name, [0.5, 1.0, 2.0], ohem_threshold=threshold, ohem_min_kept=5)
        single = _one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), weights, x, y, loss)
        mirrored = _one_step(MIRRORED, weights, x, y, loss)
        for a, b, w in zip(single, mirrored, weights, strict=True):
            assert np.abs(a - w).max() > 1e-4, name  # the step moved the weights
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=name)


CHECKS = {"loss-gradients": loss_gradients, "metrics": fit_metrics, "seg-losses": seg_losses}

if __name__ == "__main__":
    for name in sys.argv[1:]:
        CHECKS[name]()
        print(f"{name}: ok")
