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

CLASS_NAMES = ["background", "road", "tree", "sky"]
PALETTE = [[0, 0, 0], [250, 10, 20], [30, 240, 40], [50, 60, 230]]  # not the VOC colours


def save_tiny_model(folder: Path) -> tuple[Path, keras.Model, dict]:
    """A random FCN-8s with 4 classes and random score layers (so it predicts several classes),
    saved with a custom palette; returns its path, the model and its info."""
    keras.utils.set_random_seed(0)
    model = build_fcn("fcn8", num_classes=4, backbone_weights="none", widths="small")
    rng = np.random.default_rng(0)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        layer = model.get_layer(name)
        layer.set_weights([0.5 * rng.normal(size=w.shape) for w in layer.get_weights()])
    cfg = Config()
    cfg.model.num_classes = 4
    cfg.model.backbone_weights, cfg.model.widths = "none", "small"
    info = make_info("fcn8", cfg, class_names=CLASS_NAMES, palette=PALETTE)
    return save_model(model, folder / "tiny.keras", info), model, info


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
