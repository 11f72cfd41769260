"""TensorBoard pictures of training: what the model sees, not only how the loss moves.

When training validates (`train.validate: true`; training adds no summaries otherwise, so the
val split is never read), `SegmentationSummaries` is the validation pass: its `score` scores the
model on the val split at the end of every epoch (the same code as `kfcn evaluate`, once) and it
writes, into `logs/validation` beside the loss and mean IoU of Keras's own TensorBoard callback:

    epoch_iou/CLASS     the IoU of every class (scalars; classes without pixels are skipped)
    val_images/ID       a few fixed val images, each as image | ground truth | prediction in the
                        data's palette (`kfcn.report.triptych`)

The images are the first `num_images` records of the split, so every epoch shows the same ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kfcn.evaluate import confusion_over_split, summary_scores
from kfcn.metrics import scores
from kfcn.report import triptych

IMAGES_TAG = "val_images"
IOU_TAG = "epoch_iou"


class SegmentationSummaries(keras.callbacks.Callback):
    """Writes per-class val IoU and a few val predictions to TensorBoard after every epoch.

    Args:
        log_dir: the stage's TensorBoard folder; events go to `log_dir/validation`.
        data_dir: prepared data with a `split` split.
        cfg: the run's `kfcn.config.Config`: only the first `train.val_images` images are
            scored (all when None), as in validation.
        class_names: the data's class names (`kfcn.train.dataset_classes`).
        palette: their (C, 3) colours.
        split: the split to score and show.
        num_images: how many of its first images to show.
    """

    def __init__(
        self,
        log_dir: str | Path,
        data_dir: str | Path,
        cfg,
        class_names: list[str],
        palette,
        split: str = "val",
        num_images: int = 3,
    ):
        super().__init__()
        self.log_dir = Path(log_dir) / "validation"
        self.data_dir = data_dir
        self.split = split
        self.num_images = num_images
        self.max_images = cfg.train.val_images
        self.names = list(class_names)
        self.palette = np.asarray(palette, np.uint8).reshape(-1, 3)
        self._writer = None
        self._pass = None

    def score(self, model) -> dict[str, float]:
        """Validation's score function: one pass over the split that also keeps this epoch's
        per-class IoU and pictures for `on_epoch_end`. Returns what `score_split` returns."""
        self._pass = self._run(model)
        return summary_scores(self._pass[0])

    def _run(self, model):
        shown: list[tuple[str, np.ndarray]] = []

        def keep(image_id, image, label, pred) -> None:
            if len(shown) < self.num_images:
                shown.append((image_id, triptych(image, label, pred, self.palette)))

        cm, _ = confusion_over_split(
            model, self.data_dir, self.split, len(self.names), self.max_images, on_image=keep
        )
        return cm, shown

    def on_epoch_end(self, epoch, logs=None):
        done, self._pass = self._pass, None
        if logs is not None and not math.isfinite(float(logs.get("loss", 0.0))):
            return
        cm, shown = done or self._run(self.model)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                str(self.log_dir), filename_suffix=".summaries.v2"
            )
        with self._writer.as_default(step=epoch):
            for name, iou in zip(self.names, scores(cm.matrix)["per_class_iou"], strict=True):
                if not math.isnan(iou):
                    tf.summary.scalar(f"{IOU_TAG}/{name}", float(iou))
            for image_id, picture in shown:
                tf.summary.image(f"{IMAGES_TAG}/{image_id}", picture[None], max_outputs=1)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
