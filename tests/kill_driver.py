"""Runs `kfcn` with a SIGKILL at a chosen moment of training, for the resume tests.

    python -m tests.kill_driver MOMENT EPOCH -- kfcn arguments...

MOMENT is where the process kills itself during (1-based) epoch EPOCH:
  mid-epoch    after the epoch's first step
  validation   as the epoch's validation starts
  checkpoint   with the epoch's weights file written, before it is renamed into place
  best         with the epoch's best model written, before it is renamed into place
  none         no kill
With KFCN_TEST_CPUS=N in the environment, the process splits its CPU into N logical devices
before kfcn is imported (`--strategy mirrored` then runs N replicas).
Every run through the driver also makes each epoch's val mean IoU a new best (the score plus the
optimizer step), so that every epoch saves a best model; uninterrupted reference runs go through
the driver too, with MOMENT none.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(moment: str, epoch: int) -> None:
    from kfcn import callbacks

    validation_init = callbacks.Validation.__init__

    def rising_validation(self, score_fn, best=-1.0):
        def rising_score(model):
            scores = score_fn(model)
            return {**scores, "mean_iou": scores["mean_iou"] + int(model.optimizer.iterations)}

        validation_init(self, rising_score, best)

    callbacks.Validation.__init__ = rising_validation

    if moment == "mid-epoch":
        original = callbacks.StopOnNonFinite.on_train_batch_end

        def on_train_batch_end(self, batch, logs=None):
            original(self, batch, logs)
            if self.epoch + 1 == epoch and batch == 0:
                _kill()

        callbacks.StopOnNonFinite.on_train_batch_end = on_train_batch_end
    elif moment == "validation":
        original = callbacks.Validation.on_epoch_end

        def on_epoch_end(self, index, logs=None):
            if index + 1 == epoch:
                _kill()
            original(self, index, logs)

        callbacks.Validation.on_epoch_end = on_epoch_end
    elif moment in ("checkpoint", "best"):
        target = f"epoch-{epoch:04d}.weights.h5" if moment == "checkpoint" else None
        target = target or f"best-epoch-{epoch:04d}.keras"
        replace = os.replace

        def killing_replace(src, dst, *args, **kwargs):
            if Path(dst).name == target:
                _kill()
            return replace(src, dst, *args, **kwargs)

        os.replace = killing_replace
    elif moment != "none":
        raise SystemExit(f"unknown moment {moment!r}")


def split_cpu(count: int) -> None:
    """N logical CPU devices, configured before TensorFlow initialises its devices."""
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration() for _ in range(count)],
    )


if __name__ == "__main__":
    moment, epoch, separator, *args = sys.argv[1:]
    assert separator == "--"
    if os.environ.get("KFCN_TEST_CPUS"):
        split_cpu(int(os.environ["KFCN_TEST_CPUS"]))
    install(moment, int(epoch))
    from kfcn.cli import main

    sys.argv = ["kfcn", *args]
    main()
