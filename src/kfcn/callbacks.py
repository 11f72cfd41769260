"""Keras callbacks that make a long training run safe to interrupt, repeatable and easy to follow.

Order matters: `Validation` adds the val metrics to an epoch's logs before `EpochCommit` commits
the epoch (weights, best model, history row) in one atomic step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from kfcn.checkpoint import commit_epoch


class EpochCommit(keras.callbacks.Callback):
    """Commits every finished epoch once (`kfcn.checkpoint.commit_epoch`), on the chief only.

    Runs after `Validation`, so the committed history row holds the val metrics. Epochs whose loss
    is not finite are never committed.

    Args:
        stage_dir: the stage folder.
        validation: the `Validation` callback, if validating (decides whether the epoch improved).
        save_best: (model, path, epoch) -> writes the best model to `path`.
        settings: the run's settings, recorded with every commit (`kfcn.resume`).
    """

    def __init__(
        self,
        stage_dir: Path,
        validation: Validation | None = None,
        save_best: Callable[[keras.Model, Path, int], None] | None = None,
        settings: dict | None = None,
    ):
        super().__init__()
        self.stage_dir = Path(stage_dir)
        self.validation = validation
        self.save_best = save_best
        self.settings = settings

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not math.isfinite(float(logs.get("loss", 0.0))):
            return
        improved = self.validation is not None and self.validation.improved
        commit_epoch(
            self.stage_dir,
            self.model,
            epoch + 1,
            logs,
            best_score=self.validation.best if improved else None,
            save_best=(lambda path: self.save_best(self.model, path, epoch + 1))
            if self.save_best
            else None,
            settings=self.settings,
        )


class KeyedDropoutSeeds(keras.callbacks.Callback):
    """Sets every random-seed state of the model (dropout) from (seed, epoch) at each epoch start.

    Keras layers draw from seed states that advance with every step; keyed per epoch instead, the
    dropout masks of epoch k do not depend on how many steps this process ran before, so a resumed
    run draws what an uninterrupted one draws.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        for index, generator in enumerate(seed_generators(self.model)):
            key = np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]
            value = np.array([key % 2**31, 0]).astype(generator.state.dtype)
            generator.state.assign(value)


def seed_generators(model: keras.Model) -> list[keras.random.SeedGenerator]:
    """The seed generators of `model`'s layers (nested models included), in layer order."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(seed_generators(layer))
        generator = getattr(layer, "seed_generator", None)
        if isinstance(generator, keras.random.SeedGenerator):
            found.append(generator)
    return found


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training at the first NaN or Inf loss; `bad_at` records (epoch, batch)."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.bad_at: tuple[int, int] | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.bad_at = (self.epoch + 1, batch + 1)
            self.model.stop_training = True


class Validation(keras.callbacks.Callback):
    """Scores the model on the val split at the end of every epoch and adds `val_*` to the logs.

    Args:
        score_fn: model -> dict of metric name -> float (the same code as `kfcn evaluate`).
        best: the best val mean IoU of earlier epochs (restored on resume).
    """

    def __init__(self, score_fn: Callable, best: float = -1.0):
        super().__init__()
        self.score_fn = score_fn
        self.best = best
        self.improved = False

    def on_epoch_end(self, epoch, logs=None):
        self.improved = False
        if logs is None or not math.isfinite(float(logs.get("loss", 0.0))):
            return
        scores = self.score_fn(self.model)
        logs.update({f"val_{k}": v for k, v in scores.items()})
        if scores["mean_iou"] > self.best:
            self.best = scores["mean_iou"]
            self.improved = True
