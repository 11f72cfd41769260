"""kfcn: fully convolutional networks for semantic segmentation on Pascal VOC.

`import kfcn` is light (no TensorFlow), yet it makes every `.keras` file kfcn writes loadable
with plain `keras.models.load_model(path, safe_mode=True)`: kfcn's layers, loss and metrics are
registered with Keras as soon as Keras is imported (at once, if it already is).
"""

import sys

__version__ = "0.1.0"


def _register_keras_objects(*_) -> None:
    """Register the custom objects of kfcn's model files (layers, loss, metrics) with Keras."""
    import kfcn.models  # noqa: F401  (importing it registers them)


if "keras" in sys.modules:
    _register_keras_objects()
else:
    import wrapt

    wrapt.register_post_import_hook(_register_keras_objects, "keras")
