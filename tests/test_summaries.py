"""TensorBoard during training: per-class val IoU scalars and image | truth | prediction pictures."""

from pathlib import Path

import numpy as np
import tensorflow as tf

from kfcn.config import load_config
from kfcn.palette import VOC_CLASSES
from kfcn.report import GAP
from kfcn.summaries import IMAGES_TAG, IOU_TAG
from kfcn.train import TrainOptions, tensorboard_available, train_stage

from .shards import write_shards
from .test_train import TINY


def _events(folder: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    """tag -> [(step, value)] of every summary in the event files under `folder`."""
    found: dict[str, list] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                found.setdefault(value.tag, []).append((event.step, tensor))
    return found


def test_training_logs_per_class_iou_and_val_pictures(tmp_path):
    assert tensorboard_available()  # part of the test extra
    data = tmp_path / "data"
    write_shards(data, "train", 4, size=(64, 80), seed=1)
    samples = write_shards(data, "val", 3, size=(40, 56), seed=2, per_shard=3)
    cfg = load_config(None, TINY + ["train.epochs=2", "train.steps_per_epoch=1"])
    train_stage(cfg, TrainOptions("fcn32", data, tmp_path / "run"), echo=lambda *_: None)

    events = _events(tmp_path / "run" / "fcn32" / "logs" / "validation")
    # Keras's own validation scalars and ours land in the same TensorBoard run.
    assert "epoch_mean_iou" in events
    iou_tags = sorted(t for t in events if t.startswith(f"{IOU_TAG}/"))
    present = {int(c) for _, _, label in samples[:2] for c in np.unique(label) if c < 255}
    assert {t.split("/", 1)[1] for t in iou_tags} >= {VOC_CLASSES[c] for c in present}
    for tag in iou_tags:
        steps = [step for step, _ in events[tag]]
        assert steps == [0, 1], tag
        assert all(0.0 <= float(v) <= 1.0 for _, v in events[tag])

    # The first two val images (val_images=2), each image | truth | prediction, every epoch.
    picture_tags = sorted(t for t in events if t.startswith(f"{IMAGES_TAG}/"))
    assert picture_tags == [f"{IMAGES_TAG}/{image_id}" for image_id, _, _ in samples[:2]]
    for tag, (_, image, _) in zip(picture_tags, samples, strict=False):
        assert [step for step, _ in events[tag]] == [0, 1]
        width, height, png = events[tag][0][1]  # an image summary: width, height, PNG bytes
        assert (int(width), int(height)) == (3 * 56 + 2 * GAP, 40)
        decoded = tf.io.decode_png(png).numpy()
        np.testing.assert_array_equal(decoded[:, :56], image)


def test_no_validation_means_no_val_summaries(tmp_path, monkeypatch):
    """train.validate: false scores nothing on the val split, TensorBoard or not."""
    import kfcn.summaries

    def no_val_pass(*args, **kwargs):
        raise AssertionError("the val split was scored with train.validate: false")

    monkeypatch.setattr(kfcn.summaries, "confusion_over_split", no_val_pass)
    data = tmp_path / "data"
    write_shards(data, "train", 4, size=(64, 80), seed=1)
    write_shards(data, "val", 2, size=(40, 56), seed=2, per_shard=2)
    cfg = load_config(None, TINY + ["train.steps_per_epoch=1", "train.validate=false"])
    train_stage(cfg, TrainOptions("fcn32", data, tmp_path / "run"), echo=lambda *_: None)
    events = _events(tmp_path / "run" / "fcn32" / "logs" / "train")
    assert "epoch_loss" in events  # TensorBoard still logs training
    assert not list((tmp_path / "run" / "fcn32" / "logs").glob("validation/events.*"))
