"""The synthetic dataset: real layouts, both schemes exercised, deterministic, learnable."""

import re

import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from PIL import Image

from kfcn.cli import main
from kfcn.data import sources
from kfcn.data.synthetic import parse_size, write_synthetic
from kfcn.palette import IGNORE_LABEL, voc_colormap

ID = re.compile(r"^20(0[7-9]|1[01])_\d{6}$")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic(
        tmp_path_factory.mktemp("synth"),
        sbd_train=30,
        sbd_val=10,
        voc_extra=8,
        size=((24, 40), (32, 48)),
        seed=3,
    )


def _read(path):
    return [line for line in path.read_text().splitlines() if line]


def test_layout_and_lists(synth):
    sbd, voc = synth
    assert sbd.parts[-2:] == ("benchmark_RELEASE", "dataset")
    assert voc.parts[-2:] == ("VOCdevkit", "VOC2012")
    lists = sources.read_id_lists(sbd, voc)
    assert (len(lists.sbd_train), len(lists.sbd_val)) == (30, 10)
    sbd_ids = set(lists.sbd_train) | set(lists.sbd_val)
    assert all(ID.match(i) for i in sbd_ids | set(lists.voc_trainval))
    assert set(lists.voc_trainval) == set(lists.voc_train) | set(lists.voc_val)
    assert not set(lists.voc_train) & set(lists.voc_val)
    only_voc = set(lists.voc_trainval) - sbd_ids
    assert len(only_voc) == 8
    assert set(lists.voc_trainval) & sbd_ids, "VOC trainval must share ids with SBD"
    assert set(lists.voc_val) & sbd_ids and set(lists.voc_val) & only_voc
    for i in sbd_ids:
        assert (sbd / "img" / f"{i}.jpg").is_file() and (sbd / "cls" / f"{i}.mat").is_file()
    for i in lists.voc_trainval:
        assert (voc / "JPEGImages" / f"{i}.jpg").is_file()
        assert (voc / "SegmentationClass" / f"{i}.png").is_file()
    for i in only_voc:
        assert not (sbd / "img" / f"{i}.jpg").exists()


def test_sbd_mat_has_the_real_gtcls_fields(synth):
    sbd, _ = synth
    for i in _read(sbd / "train.txt")[:5]:
        mat = scipy.io.loadmat(sbd / "cls" / f"{i}.mat", struct_as_record=False)
        gt = mat["GTcls"][0, 0]
        assert gt._fieldnames == ["Boundaries", "Segmentation", "CategoriesPresent"]
        seg = gt.Segmentation
        assert seg.dtype == np.uint8 and seg.ndim == 2 and IGNORE_LABEL not in seg
        present = gt.CategoriesPresent.reshape(-1)
        assert present.tolist() == sorted(set(np.unique(seg)) - {0})
        assert 1 <= len(present) <= 3
        assert gt.Boundaries.shape == (20, 1)
        image = Image.open(sbd / "img" / f"{i}.jpg")
        assert image.format == "JPEG" and image.size == (seg.shape[1], seg.shape[0])


def test_voc_png_is_a_palette_image_with_void_band_and_same_classes_as_sbd(synth):
    sbd, voc = synth
    shared = set(_read(voc / "ImageSets/Segmentation/trainval.txt")) & set(
        _read(sbd / "train.txt") + _read(sbd / "val.txt")
    )
    for i in sorted(shared):
        png = Image.open(voc / "SegmentationClass" / f"{i}.png")
        assert png.mode == "P"
        assert np.array_equal(np.array(png.getpalette()[:63]).reshape(21, 3), voc_colormap(21))
        voc_label = np.array(png)
        sbd_label = sources.read_sbd_label(sbd / "cls" / f"{i}.mat")
        void = voc_label == IGNORE_LABEL
        assert void.any(), "object outlines are void, as in real VOC"
        assert np.array_equal(voc_label[~void], sbd_label[~void])
        # the same photo in both datasets
        assert (voc / "JPEGImages" / f"{i}.jpg").read_bytes() == (
            sbd / "img" / f"{i}.jpg"
        ).read_bytes()


def test_deterministic_given_seed(tmp_path, synth):
    again = write_synthetic(
        tmp_path / "a", sbd_train=30, sbd_val=10, voc_extra=8, size=((24, 40), (32, 48)), seed=3
    )
    other = write_synthetic(
        tmp_path / "b", sbd_train=30, sbd_val=10, voc_extra=8, size=((24, 40), (32, 48)), seed=4
    )
    for name in ("train.txt", "val.txt"):
        assert (again.sbd_dir / name).read_text() == (synth.sbd_dir / name).read_text()
        assert (other.sbd_dir / name).read_text() != (synth.sbd_dir / name).read_text()
    for path in sorted(synth.voc_dir.rglob("*.*")):
        assert (again.voc_dir / path.relative_to(synth.voc_dir)).read_bytes() == path.read_bytes()
    for path in sorted((synth.sbd_dir / "cls").glob("*.mat")):
        a = sources.read_sbd_label(path)
        assert np.array_equal(a, sources.read_sbd_label(again.sbd_dir / "cls" / path.name))


def test_classes_are_separable_by_colour(synth):
    """Learnability: the nearest palette colour (background = anything light) recovers the label
    of nearly every non-void pixel, so a small CNN can learn the task quickly."""
    _, voc = synth
    colours = voc_colormap(21).astype(np.float64)
    hits = np.zeros(21)
    total = np.zeros(21)
    for i in _read(voc / "ImageSets/Segmentation/trainval.txt"):
        image = np.asarray(Image.open(voc / "JPEGImages" / f"{i}.jpg"), np.float64)
        label = np.array(Image.open(voc / "SegmentationClass" / f"{i}.png"))
        distance = ((image[:, :, None, :] - colours[None, None, 1:, :]) ** 2).sum(-1)
        guess = distance.argmin(-1) + 1
        guess[image.min(-1) > 170] = 0  # light pixels are background
        valid = label != IGNORE_LABEL
        hits += np.bincount(label[valid][guess[valid] == label[valid]], minlength=256)[:21]
        total += np.bincount(label[valid], minlength=256)[:21]
    present = total > 0
    assert present.sum() >= 10, "objects of many classes appear"
    assert (hits[present] / total[present]).min() > 0.95


def test_fixed_size_and_tiny_images(tmp_path):
    ds = write_synthetic(tmp_path, sbd_train=3, sbd_val=2, voc_extra=2, size=(8, 8))
    for path in list((ds.sbd_dir / "img").glob("*.jpg")) + list(
        (ds.voc_dir / "JPEGImages").glob("*.jpg")
    ):
        assert Image.open(path).size == (8, 8)
    plan = sources.plan_splits(*ds, "seed")
    for samples in plan.values():
        for sample in samples:
            assert sources.load_sample(sample).label.shape == (8, 8)


def test_parse_size():
    assert parse_size("64x80") == (64, 80)
    assert parse_size("64-96x80-128") == ((64, 96), (80, 128))
    assert parse_size("32x40-48") == ((32, 32), (40, 48))
    for bad in ("64", "4x8", "96-64x80", "axb"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


def test_cli_synthesize_prints_the_prepare_paths(tmp_path):
    result = CliRunner().invoke(
        main,
        ["synthesize", "--out", str(tmp_path), "--sbd-train", "3", "--sbd-val", "2"]
        + ["--voc-extra", "2", "--size", "12x16", "--seed", "1"],
    )
    assert result.exit_code == 0, result.output
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    assert f"--sbd-dir {sbd}" in result.output and f"--voc-dir {voc}" in result.output
    assert len(_read(sbd / "train.txt")) == 3 and len(_read(sbd / "val.txt")) == 2
    bad = CliRunner().invoke(main, ["synthesize", "--out", str(tmp_path), "--size", "12"])
    assert bad.exit_code == 2 and "--size" in bad.output
