"""Keras callbacks that make a long training run safe to interrupt and easy to follow.

Order matters: the resume state of an epoch is saved before that epoch is reported anywhere
(history.csv, best model), so a kill at any moment never loses or duplicates an epoch.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from kfcn.fileio import atomic_write, publish

STATE_FILE = "state.json"


def read_resume_state(ckpt_dir: Path) -> dict | None:
    """The last completed-epoch state in `ckpt_dir` ({"epoch": n, "weights": file, ...}) or None."""
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    if not (Path(ckpt_dir) / state["weights"]).is_file():
        return None
    return state


class ResumeCheckpoint(keras.callbacks.Callback):
    """Saves model + optimizer state after every finished epoch and restores it on start.

    Unlike `keras.callbacks.BackupAndRestore`, each save goes to a new file named after its
    epoch and `state.json` is switched to it atomically afterwards, so a kill during a save
    leaves the previous epoch's state intact. Epochs whose loss is not finite are never saved.

    Args:
        ckpt_dir: directory for the weights files and `state.json`.
        extra_state: called at each save; its dict is stored in `state.json` (e.g. best score).
        write: False on non-chief workers of a multi-worker run, which keep no state of their own.
    """

    def __init__(
        self,
        ckpt_dir: Path,
        extra_state: Callable[[], dict] | None = None,
        write: bool = True,
        echo: Callable[[str], None] | None = None,
    ):
        super().__init__()
        self.ckpt_dir = Path(ckpt_dir)
        self.echo = echo
        self.extra_state = extra_state or dict
        self.write = write
        self.restored: dict | None = None

    def on_train_begin(self, logs=None):
        state = read_resume_state(self.ckpt_dir)
        if state is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.ckpt_dir / state["weights"])
        self.model._initial_epoch = state["epoch"]
        self.restored = state
        if self.echo is not None:
            self.echo(f"resuming from epoch {state['epoch']} ({self.ckpt_dir / state['weights']})")

    def on_epoch_end(self, epoch, logs=None):
        if not self.write or not math.isfinite(float((logs or {}).get("loss", 0.0))):
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        tmp = self.ckpt_dir / f"tmp-{name}"
        self.model.save_weights(tmp, overwrite=True)
        publish(tmp, self.ckpt_dir / name)
        state = {"epoch": epoch + 1, "weights": name, **self.extra_state()}
        atomic_write(self.ckpt_dir / STATE_FILE, json.dumps(state, indent=2))
        for old in self.ckpt_dir.glob("epoch-*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)


class HistoryCSV(keras.callbacks.Callback):
    """One row per finished epoch in `history.csv`, keyed by epoch: a resumed run rewrites an
    epoch's row instead of appending a duplicate."""

    def __init__(self, path: Path, write=True):
        super().__init__()
        self.path = Path(path)
        self.write = write

    def _rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as fh:
            return list(csv.DictReader(fh))

    def on_epoch_end(self, epoch, logs=None):
        if not self.write:
            return
        row = {"epoch": epoch + 1}
        row.update({k: f"{float(v):.6g}" for k, v in sorted((logs or {}).items())})
        rows = [r for r in self._rows() if int(r["epoch"]) < epoch + 1] + [row]
        fields = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path, buf.getvalue())


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


class SaveBest(keras.callbacks.Callback):
    """Saves the model with `save_fn(model, epoch)` after an epoch that improved val mean IoU.
    Runs after `ResumeCheckpoint`, so the resume state is on disk first."""

    def __init__(self, validation: Validation, save_fn: Callable):
        super().__init__()
        self.validation = validation
        self.save_fn = save_fn

    def on_epoch_end(self, epoch, logs=None):
        if self.validation.improved:
            self.save_fn(self.model, epoch + 1)
