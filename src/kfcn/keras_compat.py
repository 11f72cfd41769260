"""Work-arounds for Keras 3 (TensorFlow backend) under MultiWorkerMirroredStrategy.

Both are narrow and only change behaviour in multi-worker runs:

* `fit` builds metric and optimizer variables from a first real batch that it averages across
  replicas; under MultiWorkerMirroredStrategy that reduction fails. `build_for_fit` builds them
  from shapes alone, inside the strategy scope, and switches that step off for this model.
* The per-step logs are averaged across workers with `strategy.reduce("MEAN", v, axis=0)`,
  which fails for scalars (every loss and metric). `patch_multiworker_reduce` reduces scalars
  with `axis=None` instead.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def build_for_fit(model: keras.Model, input_shape: tuple, label_shape: tuple) -> None:
    """Create optimizer and metric variables of a compiled `model` from shapes (batch of 1)."""
    batch = (tf.zeros((1, *input_shape)), tf.zeros((1, *label_shape), tf.int32))
    model._symbolic_build(data_batch=batch)
    model.optimizer.build(model.trainable_variables)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def patch_multiworker_reduce() -> None:
    """Make the per-step log reduction work for scalars under MultiWorkerMirroredStrategy."""
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_kfcn_patched", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        multi_worker = tf_trainer._collective_all_reduce_multi_worker(strategy)
        if multi_worker and reduction in ("auto", "mean"):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._kfcn_patched = True
    tf_trainer.reduce_per_replica = reduce_per_replica
