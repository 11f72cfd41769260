"""Test-time augmentation and ensembles: the one place where predictions are averaged.

A `Predictor` holds one or more models and an optional `TTA` setting. For each image it runs
every model on every view (each scale, each scale flipped left-right), turns each view's logits
into class probabilities (softmax), brings them back to the image's own (H, W) (un-flipped,
resized bilinearly), and averages them; the class is the argmax of the average. Every view is
padded to its own multiple of 32 by `kfcn.padding`, like a plain prediction.

With one model and no TTA, `Predictor.classes` is exactly `kfcn.padding.predict_classes` (the
argmax of the logits, images of one padded size batched in one call), so plain results do not
change. `kfcn evaluate` and `kfcn predict` both predict through a `Predictor`.

A `Predictor` runs its models at one precision: float32 (as trained), bfloat16 (Ampere or newer
GPUs, CPUs with bfloat16 instructions) or float16 (GPUs); logits and probabilities stay float32.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kfcn.devices import cpu_has_bfloat16, precision_problem, visible_gpus
from kfcn.errors import ConfigError, ModelError
from kfcn.models.io import PRECISIONS, model_precision, with_precision
from kfcn.padding import input_multiple, predict_classes, predict_logits_batch

DEFAULT_SCALES = (0.75, 1.0, 1.25)


@dataclass(frozen=True)
class TTA:
    """A test-time augmentation setting."""

    flip: bool = True
    """Also predict each view mirrored left-right (and mirror the result back)."""
    scales: tuple[float, ...] = DEFAULT_SCALES
    """Image scales; each view is resized by this factor (bilinear) before padding."""
    max_side: int | None = None
    """No view is larger than this long side: a scale that would exceed it is lowered to reach it
    exactly (`kfcn predict --max-side`, the bound on memory). None = no bound."""

    def as_dict(self) -> dict:
        """JSON-ready: {"flip": bool, "scales": [floats]}, and "max_side" when bounded."""
        out = {"flip": self.flip, "scales": [float(s) for s in self.scales]}
        if self.max_side is not None:
            out["max_side"] = int(self.max_side)
        return out

    def views(self, h: int, w: int) -> list[tuple[tuple[int, int], bool]]:
        """(size, flip) of every view of an (h, w) image: each of `view_sizes`, then mirrored."""
        flips = (False, True) if self.flip else (False,)
        return [(size, flip) for size in self.view_sizes(h, w) for flip in flips]

    def view_sizes(self, h: int, w: int) -> list[tuple[int, int]]:
        """The distinct (h', w') of the views of an (h, w) image, in scale order.

        A view is (round(h * s), round(w * s)); where its long side would exceed `max_side`,
        the largest size of the image's aspect ratio within `max_side` is used instead.
        """
        sizes: list[tuple[int, int]] = []
        for scale in self.scales:
            if self.max_side is not None and max(h, w) * scale > self.max_side:
                scale = min(scale, self.max_side / max(h, w))
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            if self.max_side is not None and max(size) > self.max_side:
                size = (min(size[0], self.max_side), min(size[1], self.max_side))
            if size not in sizes:
                sizes.append(size)
        return sizes


def parse_scales(text: str) -> tuple[float, ...]:
    """Parse '0.75,1.0,1.25' into scales.

    Raises:
        ConfigError: not a comma-separated list of numbers in (0, 4].
    """
    try:
        scales = tuple(float(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        scales = ()
    if not scales or not all(0 < s <= 4 for s in scales):
        raise ConfigError(
            f"--tta-scales {text!r}: expected comma-separated scales in (0, 4], e.g. 0.75,1.0,1.25"
        )
    return scales


def check_precision(precision: str) -> str:
    """Check that this machine can run models at `precision`.

    float32 runs everywhere; bfloat16 on GPUs of compute capability 8.0 (Ampere) or newer, or,
    without a GPU, on a CPU with bfloat16 instructions (x86 AVX512_BF16 or AMX-BF16, Arm BF16);
    float16 on a GPU only (on a CPU it is emulated, slower than float32). See
    `kfcn.devices.precision_problem`.

    Returns:
        `precision`.

    Raises:
        ConfigError: an unknown precision, or one this machine cannot run fast (one line: why,
            and the precisions it can run).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return precision
    gpus, cpu_bfloat16 = visible_gpus(), cpu_has_bfloat16()
    problem = precision_problem(precision, gpus, cpu_bfloat16)
    if problem is None:
        return precision
    usable = [p for p in PRECISIONS if precision_problem(p, gpus, cpu_bfloat16) is None]
    raise ConfigError(f"--precision {precision} {problem}: use --precision {' or '.join(usable)}")


class Predictor:
    """Predicts class probabilities and classes with one or more models and optional TTA.

    Args:
        models: one or more FCNs that predict the same classes.
        tta: a `TTA` setting, or None for a single plain view.
        precision: 'float32', 'bfloat16' or 'float16': models are converted when needed
            (see `kfcn.models.with_precision`; check the machine with `check_precision`);
            None runs them as they are.

    Raises:
        ModelError: no models, or models that predict different numbers of classes.
    """

    def __init__(
        self,
        models: Sequence[keras.Model],
        tta: TTA | None = None,
        precision: str | None = None,
    ):
        if precision is not None:
            models = [with_precision(model, precision) for model in models]
        self.models = list(models)
        self.tta = tta
        self.precision = precision or (model_precision(models[0]) if models else "float32")
        if not self.models:
            raise ModelError("no model to predict with")
        counts = {int(m.output.shape[-1]) for m in self.models}
        if len(counts) != 1:
            raise ModelError(f"ensemble members predict different numbers of classes: {counts}")
        self.num_classes = counts.pop()

    @property
    def input_multiple(self) -> int:
        """Images batched together must share their size padded to this (`kfcn.padding`)."""
        return math.lcm(*(input_multiple(model) for model in self.models))

    @property
    def plain(self) -> bool:
        """One model, no TTA: classes come straight from the logits."""
        return len(self.models) == 1 and self.tta is None

    def _views(self, h: int, w: int) -> list[tuple[tuple[int, int], bool]]:
        """(size, flip) of every view of an (h, w) image."""
        return [((h, w), False)] if self.tta is None else self.tta.views(h, w)

    def probabilities(self, image) -> np.ndarray:
        """Average class probabilities of every model on every view of one image.

        Args:
            image: (H, W, 3) RGB in 0-255, any real or integer dtype.

        Returns:
            (H, W, C) float32 probabilities, summing to 1 over C.
        """
        return self.batch_probabilities(tf.convert_to_tensor(image)[tf.newaxis])[0]

    def batch_probabilities(self, images) -> np.ndarray:
        """`probabilities` of same-sized images, each model run once per view on the batch.

        Args:
            images: (B, H, W, 3) RGB in 0-255, any real or integer dtype.

        Returns:
            (B, H, W, C) float32 probabilities, summing to 1 over C.
        """
        images = tf.cast(tf.convert_to_tensor(images), tf.float32)  # (B, H, W, 3)
        b, h, w = (int(n) for n in images.shape[:3])
        views = self._views(h, w)
        runs = len(views) * len(self.models)
        total = None  # (B, H, W, C) float64 sum over views and models, when there are several
        for size, flip in views:
            view = images if size == (h, w) else tf.image.resize(images, size, method="bilinear")
            if flip:
                view = view[:, :, ::-1]
            for model in self.models:
                logits = predict_logits_batch(model, view)  # (B, h', w', C)
                probs = tf.nn.softmax(logits[:, :, ::-1] if flip else logits)
                if size != (h, w):
                    probs = tf.image.resize(probs, (h, w), method="bilinear")  # (B, H, W, C)
                probs = np.asarray(probs, np.float32)
                if runs == 1:
                    return probs
                if total is None:
                    total = np.zeros((b, h, w, self.num_classes), np.float64)
                np.add(total, probs, out=total)  # in place: no float64 copy of each view
        total /= runs
        return total.astype(np.float32)

    def classes(self, images: Sequence) -> list[np.ndarray]:
        """Class indices for images; without TTA and ensemble, exactly `predict_classes`.

        Args:
            images: (H_i, W_i, 3) RGB images; for a plain predictor they must share a padded
                size (as for `kfcn.padding.predict_classes`).

        Returns:
            One (H_i, W_i) uint8 array of class indices per image.
        """
        if self.plain:
            return predict_classes(self.models[0], images)
        return [self.probabilities(image).argmax(-1).astype(np.uint8) for image in images]

    def describe(self) -> dict:
        """What produced the predictions: {"ensemble": N, "tta": {...} or None, "precision"}."""
        return {
            "ensemble": len(self.models),
            "tta": self.tta.as_dict() if self.tta else None,
            "precision": self.precision,
        }


def model_paths(models: str | Path | Sequence[str | Path], ensemble: bool = False) -> list[Path]:
    """The `.keras` files of MODEL arguments.

    Args:
        models: one or more `.keras` files or run directories.
        ensemble: take every finished stage of a run directory, not only its latest.

    Returns:
        The files, in argument order (a run's stages in order fcn32, fcn16, fcn8).

    Raises:
        ModelError: an argument names nothing usable.
    """
    from kfcn.runs import finished_stages, resolve_model

    if isinstance(models, (str, os.PathLike)):
        models = [models]
    paths: list[Path] = []
    for model in models:
        if ensemble and Path(model).is_dir() and finished_stages(model):
            paths.extend(finished_stages(model))
        else:
            paths.append(resolve_model(model))
    if not paths:
        raise ModelError("no model given")
    return paths


def load_predictor(
    models: str | Path | Sequence[str | Path],
    ensemble: bool = False,
    tta: TTA | None = None,
    precision: str = "float32",
) -> tuple[Predictor, dict, list[Path]]:
    """Load the models that MODEL arguments name into one `Predictor` at `precision`.

    Returns:
        `(predictor, info, paths)`: `info` is the first model's (class names, palette, ...).

    Raises:
        ModelError: a model cannot be loaded, or the members' class lists differ.
        ConfigError: this machine cannot run `precision` (see `check_precision`).
    """
    from kfcn.models import load_model, model_info

    check_precision(precision)
    paths = model_paths(models, ensemble)
    first = model_info(paths[0])
    for path in paths[1:]:
        names = model_info(path)["class_names"]
        if names != first["class_names"]:
            raise ModelError(
                f"{path}: its classes {names} differ from {paths[0]}'s {first['class_names']}; "
                "ensemble members must share one class list"
            )
    loaded = [load_model(path, precision)[0] for path in paths]
    return Predictor(loaded, tta, precision), first, paths
