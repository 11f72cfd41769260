"""`kfcn.models.load_model` reads files faster than Keras and gives exactly Keras's model."""

import gc
import zipfile

import keras
import numpy as np
import pytest

from kfcn.models import io as model_io

from .tiny_model import tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    yield from tiny_model(tmp_path_factory)


def _same_model(a: keras.Model, b: keras.Model, config: bool = True) -> None:
    if config:
        assert a.get_config() == b.get_config()  # the layers' own initializers are back
    assert [v.path for v in a.weights] == [v.path for v in b.weights]
    for va, vb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(va.numpy(), vb.numpy(), err_msg=va.path)


def test_fast_load_equals_keras_load(saved):
    path, model, _ = saved
    fast = model_io._fast_load(path)
    assert fast is not None  # the fast path read the file, not the Keras fallback
    reference = keras.saving.load_model(path, compile=False, safe_mode=True)
    _same_model(fast, reference)
    _same_model(fast, model, config=False)  # a built model's config has tuples for lists
    # Initializers still work after loading: a clone draws fresh (bilinear, zero) weights.
    up = fast.get_layer("upscore2")
    kernel = up.kernel_initializer(up.kernel.shape)
    np.testing.assert_array_equal(np.asarray(kernel), up.kernel.numpy())
    del fast, reference
    gc.collect()


def test_compressed_weights_load_through_keras(tmp_path):
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(2, 3, padding="same", name="conv")(inputs)
    small = keras.Model(inputs, outputs)
    small.get_layer("conv").set_weights([np.full((3, 3, 3, 2), 0.25), np.array([1.0, -1.0])])
    stored, deflated = tmp_path / "stored.keras", tmp_path / "deflated.keras"
    small.save(stored)
    with zipfile.ZipFile(stored) as zin, zipfile.ZipFile(deflated, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, zin.read(item), compress_type=zipfile.ZIP_DEFLATED)
    assert model_io._fast_load(deflated) is None  # compressed: the fast path declines
    _same_model(model_io._fast_load(stored), keras.saving.load_model(deflated))
