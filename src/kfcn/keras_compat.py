"""The one owner of Keras internals kfcn relies on, and the check that they are there.

kfcn uses a few private Keras 3 APIs that have no public equivalent (`PRIVATE_APIS`); they can
change in any Keras release, so setup.cfg declares the Keras versions kfcn is tested with
(`KERAS_VERSIONS`), and `check_keras` (run when this module is imported) stops with one line
naming the Keras version and the missing API rather than an AttributeError deep in a command.

* Loading: `kfcn.models.io` reads a model's weights in place with Keras's own HDF5 store
  (`saving_lib.H5IOStore`, `saving_lib._load_state`) and deserializes inside
  `saving_lib.ObjectSharingScope`, as `keras.saving.load_model` does.
* Multi-worker training (both work-arounds change behaviour only there):
  `fit` builds metric and optimizer variables from a first real batch that it averages across
  replicas; under MultiWorkerMirroredStrategy that reduction fails. `build_for_fit` builds them
  from shapes alone, inside the strategy scope, and switches that step off for this model.
  The per-step logs are averaged across workers with `strategy.reduce("MEAN", v, axis=0)`,
  which fails for scalars (every loss and metric). `patch_multiworker_reduce` reduces scalars
  with `axis=None` instead.
"""

from __future__ import annotations

import importlib

import keras
import tensorflow as tf

from kfcn.errors import KfcnError

KERAS_VERSIONS = ">=3.12,<3.16"
"""The Keras versions kfcn is tested with, as in setup.cfg's install_requires."""

PRIVATE_APIS = (
    ("keras.src.saving.saving_lib", "H5IOStore._get_h5_file"),
    ("keras.src.saving.saving_lib", "_load_state"),
    ("keras.src.saving.saving_lib", "ObjectSharingScope"),
    ("keras.src.backend.tensorflow.trainer", "reduce_per_replica"),
    ("keras.src.backend.tensorflow.trainer", "_collective_all_reduce_multi_worker"),
    ("keras", "Model._symbolic_build"),
    ("keras", "Model._maybe_symbolic_build"),
)
"""(module, attribute path) of every private Keras API kfcn uses."""


def check_keras() -> None:
    """Check that the installed Keras has every API in `PRIVATE_APIS`.

    Raises:
        KfcnError: one line naming the Keras version, the first missing API and the tested
            versions.
    """
    for module_name, path in PRIVATE_APIS:
        try:
            found = importlib.import_module(module_name)
            for name in path.split("."):
                found = getattr(found, name)
        except (ImportError, AttributeError):
            raise KfcnError(
                f"Keras {keras.__version__} has no {module_name}.{path}, which kfcn needs; kfcn "
                f"is tested with keras{KERAS_VERSIONS}: pip install 'keras{KERAS_VERSIONS}'"
            ) from None


check_keras()

from keras.src.backend.tensorflow import trainer as tf_trainer  # noqa: E402  (checked above)
from keras.src.saving import saving_lib  # noqa: E402, F401  (used by kfcn.models.io)


def build_for_fit(model: keras.Model, input_shape: tuple, label_shape: tuple) -> None:
    """Create optimizer and metric variables of a compiled `model` from shapes (batch of 1)."""
    batch = (tf.zeros((1, *input_shape)), tf.zeros((1, *label_shape), tf.int32))
    model._symbolic_build(data_batch=batch)
    model.optimizer.build(model.trainable_variables)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def patch_multiworker_reduce() -> None:
    """Make the per-step log reduction work for scalars under MultiWorkerMirroredStrategy."""
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
