"""A tiny random 4-class FCN-8s (the small network, `model.widths: small`) saved with its own
class names and palette, for the inference tests of `predict` and `evaluate`."""

from __future__ import annotations

import gc
import shutil
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from kfcn.config import Config
from kfcn.models import build_fcn, make_info, save_model

SCORE_LAYERS = ("score_fr", "score_pool4", "score_pool3")
CLASS_NAMES = ["background", "road", "tree", "sky"]
PALETTE = [[0, 0, 0], [250, 10, 20], [30, 240, 40], [50, 60, 230]]  # not the VOC colours


def save_tiny_model(folder: Path) -> tuple[Path, keras.Model, dict]:
    """A random FCN-8s with 4 classes and random score layers (so it predicts several classes),
    saved with a custom palette; returns its path, the model and its info."""
    keras.utils.set_random_seed(0)
    model = build_fcn("fcn8", num_classes=4, backbone_weights="none", widths="small")
    rng = np.random.default_rng(0)
    for name in SCORE_LAYERS:
        layer = model.get_layer(name)
        layer.set_weights([0.5 * rng.normal(size=w.shape) for w in layer.get_weights()])
    cfg = Config()
    cfg.model.num_classes = 4
    cfg.model.backbone_weights, cfg.model.widths = "none", "small"
    info = make_info("fcn8", cfg, class_names=CLASS_NAMES, palette=PALETTE)
    return save_model(model, folder / "tiny.keras", info), model, info


def randomise_scores(model: keras.Model, seed: int, symmetric: bool = False) -> None:
    """Give a random FCN random score layers (they start at zero) so that it predicts several
    classes: random kernels summing to zero over the input channels, scaled and offset so that
    each layer's scores have zero mean per class and unit spread on a random probe image, like
    a trained network's logits. Random VGG features have large per-channel means (He-initialised,
    they keep the 0-255 input's scale), which would otherwise give one class everywhere.

    With `symmetric`, every convolution kernel is also made mirror-symmetric left-right, so the
    network commutes with a left-right flip of an input whose width needs no padding (the
    bilinear transposed convolutions are symmetric already).
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D) or not layer.get_weights():
            continue
        kernel, bias = layer.get_weights()  # (kh, kw, in, out), (out,)
        if layer.name in SCORE_LAYERS:
            kernel = rng.normal(size=kernel.shape)
            kernel -= kernel.mean(axis=-2, keepdims=True)
            bias = np.zeros_like(bias)
        if symmetric:
            kernel = (kernel + kernel[:, ::-1]) / 2
        layer.set_weights([kernel, bias])
    # Score layers read backbone features only, so one probe pass gives every layer's mean.
    names = [name for name in SCORE_LAYERS if name in {layer.name for layer in model.layers}]
    probe = rng.uniform(0, 255, (1, 64, 96, 3)).astype(np.float32)
    scores = keras.Model(model.input, [model.get_layer(n).output for n in names])(probe)
    for name, score in zip(names, scores, strict=True):
        layer = model.get_layer(name)
        mean, std = np.asarray(score).mean(axis=(0, 1, 2)), np.asarray(score).std()
        layer.set_weights([layer.get_weights()[0] / std, -mean / std])


def tiny_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, keras.Model, dict]]:
    """Body of a module-scoped fixture: yields `save_tiny_model`'s result in a fresh folder,
    then frees the model and deletes the folder."""
    folder = tmp_path_factory.mktemp("model")
    path, model, info = save_tiny_model(folder)
    yield path, model, info
    del model
    gc.collect()
    shutil.rmtree(folder, ignore_errors=True)
