"""Readers of SBD and VOC files, and the split schemes, on small files written here."""

import shutil

import numpy as np
import pytest
import scipy.io
from PIL import Image

from kfcn.data import sources
from kfcn.data.sources import IdLists, Sample, split_ids
from kfcn.data.synthetic import write_synthetic
from kfcn.errors import DataError
from kfcn.palette import flat_palette


def _ids(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}_{i:06d}" for i in range(count))


def _lists(**kw) -> IdLists:
    base = dict(sbd_train=(), sbd_val=(), voc_train=(), voc_val=(), voc_trainval=())
    base.update({k: tuple(v) for k, v in kw.items()})
    return IdLists(**base)


# --- split schemes on id lists alone ------------------------------------------------------------


def test_seed_scheme_takes_first_1200_sbd_val_ids_in_file_order():
    sbd_val = tuple(reversed(_ids("2009", 1205)))  # file order is not sorted order
    lists = _lists(
        sbd_train=_ids("2008", 7),
        sbd_val=sbd_val,
        voc_trainval=("2007_000001", "2007_000002", sbd_val[0], sbd_val[1203], "2008_000003"),
    )
    splits = split_ids(lists, "seed")
    assert [i for i, _ in splits["val"]] == list(sbd_val[:1200])
    assert {s for _, s in splits["val"]} == {"sbd"}
    train = dict(splits["train"])
    # train = SBD train + the 5 val ids past 1200 + the 2 VOC ids not in SBD; sorted
    assert len(train) == 7 + 5 + 2
    assert list(train) == sorted(train)
    assert set(sbd_val[1200:]) <= set(train)
    assert train["2007_000001"] == train["2007_000002"] == "voc"
    assert train[sbd_val[1203]] == "sbd"  # in both datasets: SBD label under `seed`
    assert sbd_val[0] not in train  # a VOC trainval id that SBD validates on stays out of train


def test_seed_scheme_with_fewer_than_1200_val_ids_validates_on_all_of_them():
    lists = _lists(sbd_train=_ids("2008", 3), sbd_val=_ids("2009", 4), voc_trainval=())
    splits = split_ids(lists, "seed")
    assert len(splits["val"]) == 4 and len(splits["train"]) == 3


def test_voc12val_scheme_is_train_aug_with_voc_labels_for_shared_ids():
    lists = _lists(
        sbd_train=("2008_000001", "2008_000002", "2008_000003"),
        sbd_val=("2009_000001", "2009_000002"),
        voc_train=("2007_000010", "2008_000001"),
        voc_val=("2009_000002", "2007_000020", "2008_000003"),
        voc_trainval=("2007_000010", "2008_000001", "2009_000002", "2007_000020", "2008_000003"),
    )
    splits = split_ids(lists, "voc12val")
    assert splits["val"] == [("2009_000002", "voc"), ("2007_000020", "voc"), ("2008_000003", "voc")]
    assert splits["train"] == [
        ("2007_000010", "voc"),
        ("2008_000001", "voc"),  # in both: VOC label under `voc12val`
        ("2008_000002", "sbd"),
        ("2009_000001", "sbd"),
    ]


def test_train_order_does_not_depend_on_list_file_order():
    a = _lists(sbd_train=("b_1", "a_1", "c_1"), sbd_val=("v_1",), voc_trainval=("z_1", "d_1"))
    b = _lists(sbd_train=("c_1", "b_1", "a_1"), sbd_val=("v_1",), voc_trainval=("d_1", "z_1"))
    assert split_ids(a, "seed") == split_ids(b, "seed")


def test_unknown_scheme_is_rejected():
    with pytest.raises(DataError, match="'voc07'.*seed, voc12val"):
        split_ids(_lists(), "voc07")


def test_read_id_list_keeps_file_order_and_drops_blanks_and_duplicates(tmp_path):
    path = tmp_path / "val.txt"
    path.write_text("2009_000002\r\n\n2008_000001\n2009_000002\n  2010_000003  \n")
    assert sources.read_id_list(path, "layout") == ["2009_000002", "2008_000001", "2010_000003"]


def test_read_id_list_rejects_paths(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("2008_000001\n../../etc/passwd\n")
    with pytest.raises(DataError, match=r"train.txt:2: '../../etc/passwd'"):
        sources.read_id_list(path, "layout")


# --- dataset layout errors ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A synthetic SBD + VOC with a few 16x20 images; tests copy it before damaging it."""
    return write_synthetic(
        tmp_path_factory.mktemp("tiny"), sbd_train=4, sbd_val=3, voc_extra=3, size=(16, 20)
    )


@pytest.fixture
def copy(tiny, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny.sbd_dir.parents[1], root)
    return root / "benchmark_RELEASE" / "dataset", root / "VOCdevkit" / "VOC2012"


@pytest.mark.parametrize(
    "remove, expected",
    [
        ("sbd", r"dataset: missing; --sbd-dir must be .*img/\*\.jpg.*bharathh"),
        ("sbd/cls", r"dataset/cls: missing; --sbd-dir .*home.bharathh.info"),
        ("sbd/val.txt", r"dataset/val.txt: missing; --sbd-dir"),
        (
            "voc/SegmentationClass",
            r"VOC2012/SegmentationClass: missing; --voc-dir .*robots.ox.ac.uk",
        ),
        ("voc/ImageSets/Segmentation/trainval.txt", r"trainval.txt: missing; --voc-dir"),
    ],
)
def test_missing_directory_or_list_explains_the_layout(copy, remove, expected):
    sbd_dir, voc_dir = copy
    root, _, rest = remove.partition("/")
    path = (sbd_dir if root == "sbd" else voc_dir) / rest
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(DataError, match=expected):
        sources.plan_splits(sbd_dir, voc_dir)


def test_parent_of_the_expected_directory_gets_a_hint(tiny):
    with pytest.raises(DataError, match=r"did you mean .*benchmark_RELEASE/dataset\?"):
        sources.plan_splits(tiny.sbd_dir.parent, tiny.voc_dir)
    with pytest.raises(DataError, match=r"did you mean .*VOCdevkit/VOC2012\?"):
        sources.plan_splits(tiny.sbd_dir, tiny.voc_dir.parent)


def test_empty_validation_split_is_an_error(copy):
    sbd_dir, voc_dir = copy
    (sbd_dir / "val.txt").write_text("")
    with pytest.raises(DataError, match="split 'val' of scheme 'seed' is empty; check SBD val.txt"):
        sources.plan_splits(sbd_dir, voc_dir, "seed")


# --- label readers ------------------------------------------------------------------------------


def _save_gtcls(path, segmentation, categories):
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = np.zeros(segmentation.shape, np.uint8)
    gtcls = {
        "Boundaries": boundaries,
        "Segmentation": segmentation,
        "CategoriesPresent": categories,
    }
    scipy.io.savemat(path, {"GTcls": gtcls}, do_compression=True)


def test_sbd_label_of_a_single_class_file(tmp_path):
    # With squeeze_me=True this file's CategoriesPresent collapses to a plain int.
    seg = np.zeros((5, 7), np.uint8)
    seg[1:4, 2:6] = 15
    path = tmp_path / "one.mat"
    _save_gtcls(path, seg, np.array([[15]], np.uint8))
    assert isinstance(
        scipy.io.loadmat(path, squeeze_me=True)["GTcls"]["CategoriesPresent"].item(), int
    )
    label = sources.read_sbd_label(path)
    assert label.dtype == np.uint8 and np.array_equal(label, seg)


def test_sbd_label_of_a_one_pixel_high_image_stays_2d(tmp_path):
    seg = np.array([[0, 3, 3, 0]], np.uint8)
    path = tmp_path / "row.mat"
    _save_gtcls(path, seg, np.array([[3]], np.uint8))
    assert sources.read_sbd_label(path).shape == (1, 4)


def test_sbd_mat_without_segmentation_is_named(tmp_path):
    path = tmp_path / "inst.mat"
    scipy.io.savemat(path, {"GTinst": {"Segmentation": np.zeros((3, 3), np.uint8)}})
    with pytest.raises(DataError, match=r"inst.mat: no GTcls.Segmentation"):
        sources.read_sbd_label(path)
    scipy.io.savemat(path, {"GTcls": {"Boundaries": np.zeros((3, 3))}})
    with pytest.raises(DataError, match=r"inst.mat: no GTcls.Segmentation"):
        sources.read_sbd_label(path)


def test_unreadable_mat_is_named(tmp_path):
    path = tmp_path / "bad.mat"
    path.write_bytes(b"this is not a MATLAB file at all, just some text " * 4)
    with pytest.raises(DataError, match=r"bad.mat: not a MATLAB 5 .mat file"):
        sources.read_sbd_label(path)


def test_voc_label_is_the_palette_index_array_not_the_colours(tmp_path):
    index = np.array([[0, 1, 255], [15, 20, 0]], np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette(flat_palette())
    image.save(tmp_path / "a.png")
    assert np.array_equal(sources.read_voc_label(tmp_path / "a.png"), index)
    image.convert("RGB").save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"rgb.png: label PNG has mode RGB; expected a palette"):
        sources.read_voc_label(tmp_path / "rgb.png")


@pytest.mark.parametrize("value", [21, 100, 254])
def test_label_value_out_of_range_is_named(tmp_path, value):
    index = np.zeros((4, 4), np.uint8)
    index[2, 2] = value
    Image.fromarray(index, mode="L").save(tmp_path / "x.png")
    with pytest.raises(
        DataError, match=rf"x.png: label values {value} out of range; expected 0..20 or 255"
    ):
        sources.read_voc_label(tmp_path / "x.png")
    _save_gtcls(tmp_path / "x.mat", index, np.array([[value]], np.uint8))
    with pytest.raises(DataError, match=rf"x.mat: label values {value} out of range"):
        sources.read_sbd_label(tmp_path / "x.mat")


# --- whole samples ------------------------------------------------------------------------------


def _first(sbd_dir, voc_dir, source):
    plan = sources.plan_splits(sbd_dir, voc_dir)
    return next(s for s in plan["train"] if s.source == source)


def test_load_sample_returns_the_file_bytes_and_label(tiny):
    for source in ("sbd", "voc"):
        sample = _first(*tiny, source)
        loaded = sources.load_sample(sample)
        assert loaded.image_bytes == open(sample.image_path, "rb").read()
        assert (loaded.height, loaded.width) == (16, 20) == loaded.label.shape


def test_truncated_jpeg_is_named(copy):
    sample = _first(*copy, "sbd")
    data = open(sample.image_path, "rb").read()
    open(sample.image_path, "wb").write(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{sample.id}.jpg: unreadable or truncated JPEG"):
        sources.load_sample(sample)


def test_png_named_jpg_is_rejected(copy):
    sample = _first(*copy, "voc")
    Image.new("RGB", (20, 16)).save(sample.image_path, format="PNG")
    with pytest.raises(DataError, match=rf"{sample.id}.jpg: not a JPEG"):
        sources.load_sample(sample)


def test_missing_files_are_named(copy):
    sample = _first(*copy, "voc")
    missing_image = Sample(sample.id, "voc", sample.image_path + ".gone", sample.label_path)
    with pytest.raises(DataError, match=r"\.jpg\.gone: image file missing"):
        sources.load_sample(missing_image)
    missing_label = Sample(sample.id, "sbd", sample.image_path, sample.label_path + ".gone")
    with pytest.raises(DataError, match=r"\.png\.gone: label file missing"):
        sources.load_sample(missing_label)


def test_label_size_must_match_image(copy):
    sample = _first(*copy, "voc")
    Image.fromarray(np.zeros((16, 19), np.uint8), mode="L").save(sample.label_path)
    with pytest.raises(
        DataError, match=rf"{sample.id}.png: label is 16x19 but its image .* is 16x20"
    ):
        sources.load_sample(sample)


def test_truncated_or_corrupt_mat_is_caught_before_scipy_reads_it(copy):
    # scipy's reader can crash the interpreter on such files; they must be refused first
    sample = _first(*copy, "sbd")
    data = open(sample.label_path, "rb").read()
    for cut in (100, 140, len(data) - 5):
        open(sample.label_path, "wb").write(data[:cut])
        with pytest.raises(DataError, match=rf"{sample.id}.mat: (not a MATLAB 5|truncated)"):
            sources.load_sample(sample)
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0x55
    open(sample.label_path, "wb").write(bytes(damaged))
    with pytest.raises(DataError, match=rf"{sample.id}.mat: (corrupt|truncated) .mat file"):
        sources.load_sample(sample)
