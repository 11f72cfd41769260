"""Readers, splits and `prepare` on real Pascal VOC 2012 / SBD files (needs KFCN_REAL_DATA).

The sample holds the 676 VOC trainval images that SBD lacks (with labels) and one SBD image with
its `.mat`, plus the official VOC id lists and the reference split files. SBD's own train.txt and
val.txt are not included; the SBD ids are known from the reference splits
(train_mat ∪ val_mat = SBD train ∪ SBD val).
"""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from PIL import Image

from kfcn.data import records, sources
from kfcn.data.prepare import prepare_dataset
from kfcn.data.sources import IdLists, split_ids
from kfcn.errors import DataError

pytestmark = pytest.mark.real_data


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def _voc_list(real: Path, name: str) -> list[str]:
    return _lines(real / "VOC2012" / "ImageSets" / "Segmentation" / f"{name}.txt")


def _real_lists(real: Path) -> IdLists:
    return IdLists(
        sbd_train=tuple(_lines(real / "splits" / "train_mat.txt")),
        sbd_val=tuple(_lines(real / "splits" / "val_mat.txt")),
        voc_train=tuple(_voc_list(real, "train")),
        voc_val=tuple(_voc_list(real, "val")),
        voc_trainval=tuple(_voc_list(real, "trainval")),
    )


def test_seed_scheme_reproduces_the_reference_split(real_data):
    splits = split_ids(_real_lists(real_data), "seed")
    val = [i for i, _ in splits["val"]]
    train = dict(splits["train"])
    assert val == _lines(real_data / "splits" / "val_mat.txt")
    train_mat = _lines(real_data / "splits" / "train_mat.txt")
    train_png = _lines(real_data / "splits" / "train_png.txt")
    assert (len(train), len(val)) == (10831, 1200)
    assert list(train) == sorted(train_mat + train_png)
    assert sorted(i for i, s in train.items() if s == "voc") == train_png
    assert sorted(i for i, s in train.items() if s == "sbd") == train_mat


def test_voc12val_scheme_reproduces_train_aug(real_data):
    splits = split_ids(_real_lists(real_data), "voc12val")
    assert [i for i, _ in splits["val"]] == _voc_list(real_data, "val")
    train = [i for i, _ in splits["train"]]
    assert len(train) == 10582
    assert train == sorted(_lines(real_data / "splits" / "train_aug.txt"))


def test_real_sbd_dir_without_id_lists_is_explained(real_data):
    with pytest.raises(DataError, match=r"dataset/train.txt: missing; --sbd-dir .*bharathh"):
        sources.plan_splits(real_data / "SBD" / "dataset", real_data / "VOC2012")


def test_rider_mat_label_reads_exactly(real_data):
    path = real_data / "SBD" / "dataset" / "cls" / "rider.mat"
    expected = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"]
    label = sources.read_sbd_label(path)
    assert label.dtype == np.uint8 and np.array_equal(label, expected.Segmentation)
    assert sorted(set(np.unique(label)) - {0}) == list(expected.CategoriesPresent) == [13, 15]


@pytest.fixture(scope="module")
def real_layout(real_data, tmp_path_factory):
    """SBD and VOC directories over the real files: SBD = rider alone (in val.txt), VOC = the 676
    images with files, lists restricted to them. Only links and list files are written."""
    root = tmp_path_factory.mktemp("real")
    sbd = root / "benchmark_RELEASE" / "dataset"
    for sub, name in (("img", "rider.jpg"), ("cls", "rider.mat")):
        (sbd / sub).mkdir(parents=True)
        (sbd / sub / name).symlink_to(real_data / "SBD" / "dataset" / sub / name)
    (sbd / "train.txt").write_text("")
    (sbd / "val.txt").write_text("rider\n")
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for sub in ("JPEGImages", "SegmentationClass"):
        (voc / sub).symlink_to(real_data / "VOC2012" / sub, target_is_directory=True)
    present = {p.stem for p in (real_data / "VOC2012" / "SegmentationClass").glob("*.png")}
    for name in ("train", "val", "trainval"):
        ids = [i for i in _voc_list(real_data, name) if i in present]
        (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return sbd, voc


def test_prepare_round_trips_all_real_labels_exactly(real_data, real_layout, tmp_path):
    sbd, voc = real_layout
    meta = prepare_dataset(sbd, voc, tmp_path, scheme="seed", workers=2)
    train_png = _lines(real_data / "splits" / "train_png.txt")
    assert meta["counts"] == {"train": 676, "val": 1}
    assert _lines(tmp_path / "train.txt") == train_png
    seen = []
    for split in ("train", "val"):
        shards = [str(p) for p in records.list_shards(tmp_path, split)]
        for serialized in tf.data.TFRecordDataset(shards):
            raw = records.parse_example(serialized)
            label = records.decode_example(serialized)["label"].numpy()
            image_id = raw["image/id"].numpy().decode()
            if split == "val":
                image_path = real_data / "SBD" / "dataset" / "img" / f"{image_id}.jpg"
                mat = scipy.io.loadmat(real_data / "SBD" / "dataset" / "cls" / f"{image_id}.mat")
                expected = mat["GTcls"]["Segmentation"][0, 0]
                assert 255 not in expected
            else:
                image_path = real_data / "VOC2012" / "JPEGImages" / f"{image_id}.jpg"
                png = Image.open(real_data / "VOC2012" / "SegmentationClass" / f"{image_id}.png")
                assert png.mode == "P"
                expected = np.array(png)
                assert 255 in expected  # every real VOC label has void outlines
            assert np.array_equal(label, expected), image_id
            assert raw["image/encoded"].numpy() == image_path.read_bytes()
            assert (int(raw["image/height"]), int(raw["image/width"])) == expected.shape
            seen.append(image_id)
    assert seen == train_png + ["rider"]


def test_voc12val_on_real_files_assigns_by_voc_lists(real_data, real_layout):
    sbd, voc = real_layout
    plan = sources.plan_splits(sbd, voc, "voc12val")
    present = set(_lines(real_data / "splits" / "train_png.txt"))
    assert [s.id for s in plan["val"]] == [i for i in _voc_list(real_data, "val") if i in present]
    voc_train = [i for i in _voc_list(real_data, "train") if i in present]
    assert [s.id for s in plan["train"]] == sorted(voc_train + ["rider"])
    assert {s.source for s in plan["train"] if s.id == "rider"} == {"sbd"}
