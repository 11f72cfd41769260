"""A small segmentation network trained in a few seconds on the synthetic shapes of
`tests/shards.py`, for tests that compare predictions at different precisions or after
quantization: a random network's logits nearly tie everywhere, a trained one's do not.

It has the FCN models' input and output layers (`preprocess`, float32 `logits`) and a stride-2
encoder/decoder in between, takes any size that is a multiple of 2 (kfcn pads to 32), and is
saved with kfcn's model information, so `evaluate`, `predict` and `export` take it like an FCN.
"""

from __future__ import annotations

import functools
from pathlib import Path

import keras
import numpy as np

from kfcn.losses import MaskedSparseCrossEntropy
from kfcn.models import make_info, save_model
from kfcn.models.vgg import VGGPreprocess

from .shards import make_sample

NUM_CLASSES = 4
SIZE = (48, 64)


def build_toy(num_classes: int = NUM_CLASSES) -> keras.Model:
    """(B, H, W, 3) RGB 0-255 -> (B, H, W, num_classes) float32 logits."""
    images = keras.Input((None, None, 3), name="image")
    x = VGGPreprocess(name="preprocess")(images)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    skip = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(skip)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.Conv2DTranspose(16, 4, strides=2, padding="same", name="up")(x)
    x = keras.layers.Add(name="fuse")([x, skip])
    x = keras.layers.Conv2D(num_classes, 1, name="score")(x)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(images, logits, name="toy")


def toy_samples(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` (H, W, 3) uint8 images with noise and their (H, W) labels (255 = ignore)."""
    rng = np.random.default_rng(seed)
    pairs = [make_sample(rng, SIZE, NUM_CLASSES) for _ in range(n)]
    images = np.stack([p[0] for p in pairs]).astype(np.float32)
    images += rng.normal(0, 12, images.shape)  # so the classes overlap a little
    return np.clip(images, 0, 255).astype(np.uint8), np.stack([p[1] for p in pairs])


@functools.lru_cache(maxsize=1)
def trained_toy() -> keras.Model:
    """The toy network after 120 Adam steps on 32 images (same weights every call)."""
    keras.utils.set_random_seed(0)
    model = build_toy()
    images, labels = toy_samples(32, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=MaskedSparseCrossEntropy())
    model.fit(images.astype(np.float32), labels, batch_size=8, epochs=30, verbose=0, shuffle=False)
    return model


def save_trained_toy(folder: Path) -> Path:
    """`trained_toy()` saved as `folder/toy.keras` with kfcn's model information."""
    info = make_info("toy", {"model": {"num_classes": NUM_CLASSES}})
    return save_model(trained_toy(), Path(folder) / "toy.keras", info)
