"""Your own dataset: class lists, pairing, splitting, mask reading, `kfcn prepare --images`, and
one folder dataset through prepare -> train -> evaluate -> predict."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml
from click.testing import CliRunner
from PIL import Image

from kfcn.cli import main
from kfcn.config import load_config
from kfcn.data import folder, records
from kfcn.data.classes import ClassList, load_classes, parse_classes
from kfcn.data.prepare import prepare_folder_dataset
from kfcn.data.synthetic import TOY_CLASSES, TOY_COLORS, write_folder_toy
from kfcn.errors import DataError
from kfcn.images import read_image
from kfcn.train import dataset_classes


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_folder_toy(tmp_path_factory.mktemp("toy"), n=8, seed=3, size=((28, 36), (30, 40)))


def _write_pair(images: Path, masks: Path, name: str, image, mask, fmt: str = "png") -> None:
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    suffix = "jpg" if fmt == "jpeg" else "png"
    Image.fromarray(np.asarray(image, np.uint8)).save(images / f"{name}.{suffix}", format=fmt)
    mask.save(masks / f"{name}.png", format="PNG")


def _index_mask(values) -> Image.Image:
    return Image.fromarray(np.asarray(values, np.uint8), mode="L")


def _classes_file(path: Path, **content) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def _records(out: Path, split: str) -> list[dict]:
    rows = []
    for shard in records.list_shards(out, split):
        for serialized in tf.data.TFRecordDataset(str(shard)):
            raw = records.parse_example(serialized)
            rows.append(
                {
                    "id": raw["image/id"].numpy().decode(),
                    "bytes": raw["image/encoded"].numpy(),
                    "format": raw["image/format"].numpy().decode(),
                    "image": records.decode_image(raw["image/encoded"]).numpy(),
                    "label": records.decode_label(raw["label/encoded"]).numpy(),
                }
            )
    return rows


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tfrecord"))}


# Class lists ------------------------------------------------------------------------------


def test_class_list_file(tmp_path):
    path = _classes_file(
        tmp_path / "c.yaml",
        names=["background", "cat", 7],
        colors=[[0, 0, 0], [128, 0, 0], [1, 2, 3]],
        ignore_index=100,
        ignore_color=[255, 255, 255],
    )
    classes = load_classes(path)
    assert classes.names == ("background", "cat", "7")
    assert classes.palette == [[0, 0, 0], [128, 0, 0], [1, 2, 3]]
    assert classes.ignore_index == 100 and classes.ignore_color == (255, 255, 255)
    plain = parse_classes({"names": ["a", "b"]})
    assert plain.colors is None and plain.ignore_index is None
    assert plain.palette == [[0, 0, 0], [128, 0, 0]]  # the VOC colours by default


@pytest.mark.parametrize(
    "content, message",
    [
        ({"colors": [[0, 0, 0]]}, "no 'names'"),
        ({"names": ["only"]}, "1 class names; expected 2..255"),
        ({"names": ["a", "b", "a"]}, "'a' is given twice"),
        ({"names": ["a", None]}, r"names\[1\] = None"),
        ({"names": ["a", "b"], "colors": [[0, 0, 0]]}, "colors has 1 entries"),
        ({"names": ["a", "b"], "colors": [[0, 0, 0], [0, 0, 256]]}, r"colors\[1\] = \[0, 0, 256\]"),
        ({"names": ["a", "b"], "colors": [[0, 0, 0], [0, 0]]}, "RGB triple"),
        ({"names": ["a", "b"], "colors": [[9, 9, 9], [9, 9, 9]]}, "share the colour"),
        ({"names": ["a", "b", "c"], "ignore_index": 2}, "ignore_index = 2 is a class index"),
        ({"names": ["a", "b"], "ignore_index": -1}, "expected an integer 0..65535"),
        ({"names": ["a", "b"], "colours": []}, "unknown key 'colours'; valid keys"),
        (
            {"names": ["a", "b"], "colors": [[0, 0, 0], [1, 1, 1]], "ignore_color": [1, 1, 1]},
            "ignore_color .* is also the colour of class 'b'",
        ),
    ],
)
def test_bad_class_lists_name_the_file_and_key(tmp_path, content, message):
    path = _classes_file(tmp_path / "classes.yaml", **content)
    with pytest.raises(DataError, match=message) as info:
        load_classes(path)
    assert str(path) in str(info.value)


def test_class_list_file_missing_or_not_yaml(tmp_path):
    with pytest.raises(DataError, match="class list file not found"):
        load_classes(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("names: [a, b\n")
    with pytest.raises(DataError, match="not valid YAML"):
        load_classes(tmp_path / "bad.yaml")


# Pairing and splitting ---------------------------------------------------------------------


def test_pairs_by_name_and_lists_what_is_left_over(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for name in ("a.jpg", "b.PNG", "c.jpeg", "notes.txt", ".DS_Store"):
        (images.mkdir(exist_ok=True), (images / name).write_bytes(b"x"))
    for name in ("a.png", "b.png", "d.png", "e.jpg"):
        (masks.mkdir(exist_ok=True), (masks / name).write_bytes(b"x"))
    pairs = folder.find_pairs(images, masks)
    assert [(s.id, Path(s.image_path).name, Path(s.label_path).name) for s in pairs.samples] == [
        ("a", "a.jpg", "a.png"),
        ("b", "b.PNG", "b.png"),
    ]
    assert pairs.images_without_mask == ["c.jpeg"]
    assert pairs.masks_without_image == ["d.png"]
    assert pairs.other_files == ["images/notes.txt", "masks/e.jpg"]


def test_pairing_errors(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    with pytest.raises(DataError, match=f"{images}: no images"):
        folder.find_pairs(images, masks)
    (images / "a.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match=f"{masks}: no masks"):
        folder.find_pairs(images, masks)
    (masks / "b.png").write_bytes(b"x")
    with pytest.raises(DataError, match="no image in .* has a mask .*images: a; masks: b"):
        folder.find_pairs(images, masks)
    (images / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="two files named 'a'"):
        folder.find_pairs(images, masks)
    (images / "a.png").unlink()
    with pytest.raises(DataError, match="--masks directory not found"):
        folder.find_pairs(images, tmp_path / "missing")
    with pytest.raises(DataError, match="are the same folder"):
        folder.find_pairs(masks, masks)


def test_split_is_seeded_and_reproducible():
    names = [f"img{i:02d}" for i in range(50)]
    split = folder.split_names(names, 0.2, seed=1)
    assert len(split["val"]) == 10 and len(split["train"]) == 40
    assert sorted(split["train"] + split["val"]) == names
    assert split["train"] == sorted(split["train"]) and split["val"] == sorted(split["val"])
    assert folder.split_names(list(reversed(names)), 0.2, seed=1) == split  # order-independent
    assert folder.split_names(names, 0.2, seed=2)["val"] != split["val"]
    assert folder.split_names(names[:3], 0.1)["val"] != []  # at least one val image
    assert folder.split_names(names, 0.0) == {"train": names, "val": []}
    with pytest.raises(DataError, match="none is left to train on"):
        folder.split_names(names[:1], 0.5)


def test_val_list_takes_names_or_file_names_and_rejects_unknown_ones(tmp_path):
    names = ["a", "b", "c", "d"]
    listed = tmp_path / "val.txt"
    listed.write_text("c\n\nimages/a.jpg\nc\n")
    split = folder.split_names(names, val_names=folder.read_name_list(listed))
    assert split == {"train": ["b", "d"], "val": ["c", "a"]}
    listed.write_text("a\nzebra\nyak\n")
    with pytest.raises(DataError, match=f"{listed}: 2 name.* not among the 4 .*zebra, yak"):
        folder.split_names(names, val_names=folder.read_name_list(listed), where=str(listed))
    with pytest.raises(DataError, match="--val-list file not found"):
        folder.read_name_list(tmp_path / "none.txt")


# Masks and images --------------------------------------------------------------------------


def test_index_and_rgb_colour_masks_give_identical_records(toy, tmp_path):
    by_index = prepare_folder_dataset(
        toy.images, toy.masks, tmp_path / "index", toy.classes, workers=1, shard_size=3
    )
    by_colour = prepare_folder_dataset(
        toy.images, toy.masks_rgb, tmp_path / "rgb", toy.classes, workers=2, shard_size=3
    )
    assert _shard_bytes(tmp_path / "index") == _shard_bytes(tmp_path / "rgb")
    assert by_index["class_pixels"] == by_colour["class_pixels"]
    meta = records.read_meta(tmp_path / "rgb")
    assert meta["class_names"] == list(TOY_CLASSES) and meta["num_classes"] == 3
    assert meta["palette"] == [list(c) for c in TOY_COLORS]
    assert meta["ignore_index"] == 255 and meta["ignore_label"] == 255
    assert meta["counts"] == {"train": 7, "val": 1} and meta["skipped"] == []
    assert all(not files for files in meta["unpaired"].values())
    rows = _records(tmp_path / "rgb", "train") + _records(tmp_path / "rgb", "val")
    assert sorted(r["id"] for r in rows) == [f"toy_{i:03d}" for i in range(8)]
    counts = np.zeros(3, np.int64)
    for row in rows:
        source = next(toy.images.glob(f"{row['id']}.*"))
        assert row["bytes"] == source.read_bytes()  # JPEG and 8-bit RGB PNG kept as they are
        assert row["format"] == ("jpeg" if source.suffix == ".jpg" else "png")
        expected = np.asarray(Image.open(toy.masks / f"{row['id']}.png"))
        np.testing.assert_array_equal(row["label"], expected)
        assert set(np.unique(row["label"])) <= {0, 1, 2, 255}
        counts += np.bincount(row["label"][row["label"] < 3], minlength=3)
    pixels = meta["class_pixels"]
    assert counts.tolist() == (np.add(pixels["train"], pixels["val"])).tolist()
    assert min(pixels["train"]) > 0


def test_ignore_index_becomes_255_and_the_flag_overrides_the_file(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    values = np.array([[0, 1, 2, 7], [7, 2, 1, 0]])
    _write_pair(images, masks, "one", np.full((2, 4, 3), 100), _index_mask(values))
    classes = _classes_file(tmp_path / "c.yaml", names=["a", "b", "c"], ignore_index=7)
    meta = prepare_folder_dataset(images, masks, tmp_path / "out", classes, 0, workers=1)
    label = _records(tmp_path / "out", "train")[0]["label"]
    np.testing.assert_array_equal(label, np.where(values == 7, 255, values))
    assert meta["ignore_index"] == 7 and "val" not in meta["counts"]
    with pytest.raises(DataError, match=r"one\.png: mask values 7 \(2 px\) are not classes"):
        prepare_folder_dataset(
            images, masks, tmp_path / "o2", classes, 0, ignore_index=9, workers=1
        )


def test_bad_masks_name_the_file_and_the_values(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    image = np.full((4, 5, 3), 90)
    _write_pair(images, masks, "ok", image, _index_mask(np.ones((4, 5))))
    _write_pair(images, masks, "values", image, _index_mask([[0, 1, 2, 5, 9]] * 4))
    colours = np.zeros((4, 5, 3), np.uint8)
    colours[0, :2] = (10, 20, 30)
    colours[1, 0] = (200, 0, 0)
    _write_pair(images, masks, "wrongcolour", image, Image.fromarray(colours))
    _write_pair(images, masks, "small", image, _index_mask(np.zeros((3, 5))))
    classes = ClassList(("bg", "cat", "dog"), ((0, 0, 0), (200, 0, 0), (0, 0, 200)))
    samples = {s.id: s for s in folder.find_pairs(images, masks).samples}
    reader = folder.MaskReader(3, classes.colors, source="c.yaml")
    for name, message in [
        ("values", r"values\.png: mask values 5 \(4 px\), 9 \(4 px\) are not classes; .*c\.yaml"),
        ("wrongcolour", r"wrongcolour\.png: mask colours \[10, 20, 30\] \(2 px\) are not class"),
        ("small", r"small\.png: mask is 3x5 but its image .*small\.png is 4x5"),
    ]:
        with pytest.raises(DataError, match=message):
            folder.load_pair(samples[name], reader)
    with pytest.raises(DataError, match="small.png: mask is 3x5"):  # stops at the first bad pair
        prepare_folder_dataset(images, masks, tmp_path / "out", classes, 0, workers=1)
    meta = prepare_folder_dataset(
        images, masks, tmp_path / "out", classes, 0, workers=1, skip_bad=True
    )
    assert meta["counts"] == {"train": 1}
    assert sorted(e["id"] for e in meta["skipped"]) == ["small", "values", "wrongcolour"]
    assert (tmp_path / "out" / "train.txt").read_text() == "ok\n"


def test_rgb_masks_need_colours_unless_they_are_grey(tmp_path):
    reader = folder.MaskReader(3)
    grey = np.repeat(np.array([[0, 1], [2, 255]], np.uint8)[..., None], 3, axis=-1)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(reader.read(tmp_path / "grey.png"), [[0, 1], [2, 255]])
    grey[0, 0] = (200, 0, 0)
    Image.fromarray(grey).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour\.png: an RGB colour mask, .* --classes"):
        reader.read(tmp_path / "colour.png")
    Image.fromarray(np.array([[0, 40000]], np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(DataError, match=r"deep\.png: mask values 40000 \(1 px\)"):
        reader.read(tmp_path / "deep.png")
    reader16 = folder.MaskReader(3, ignore_index=40000)
    np.testing.assert_array_equal(reader16.read(tmp_path / "deep.png"), [[0, 255]])


def test_without_a_class_list_the_classes_come_from_the_mask_values(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    _write_pair(images, masks, "a", np.zeros((2, 3, 3)), _index_mask([[0, 3, 255]] * 2))
    _write_pair(images, masks, "b", np.zeros((2, 3, 3)), _index_mask([[0, 1, 1]] * 2))
    meta = prepare_folder_dataset(images, masks, tmp_path / "out", val_fraction=0, workers=1)
    assert meta["class_names"] == ["class_0", "class_1", "class_2", "class_3"]
    assert meta["class_pixels"]["train"] == [4, 4, 0, 2]
    assert len(meta["palette"]) == 4
    binary = tmp_path / "binary"
    _write_pair(binary / "i", binary / "m", "a", np.zeros((2, 2, 3)), _index_mask([[0, 255]] * 2))
    with pytest.raises(DataError, match="only class 0; .*black-and-white masks must mark"):
        prepare_folder_dataset(binary / "i", binary / "m", tmp_path / "o2", val_fraction=0)


def _image_variants(tmp_path: Path) -> dict[str, Path]:
    """Images that cannot keep their bytes: modes other than 8-bit RGB, and an EXIF rotation."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    files = {}

    def save(name: str, image: Image.Image, **params) -> None:
        files[name] = tmp_path / name
        image.save(files[name], **params)

    alpha = np.concatenate([rgb, rng.integers(0, 256, (6, 10, 1), dtype=np.uint8)], axis=-1)
    save("rgba.png", Image.fromarray(alpha, mode="RGBA"))
    save("grey16.png", Image.fromarray(rng.integers(0, 65536, (6, 10), dtype=np.uint16)))
    save("palette.png", Image.fromarray(rgb).quantize(8))
    save("grey.png", Image.fromarray(rgb[..., 0]))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; displayed 10 high and 6 wide
    save("rotated.jpg", Image.fromarray(rgb), format="JPEG", quality=90, exif=exif.tobytes())
    return files


def test_other_images_are_stored_as_lossless_png_of_what_predict_sees(tmp_path):
    for name, path in _image_variants(tmp_path).items():
        data, fmt, height, width = folder.read_folder_image(path)
        assert fmt == "png" and data[:4] == b"\x89PNG", name
        stored = records.decode_image(tf.constant(data)).numpy()
        np.testing.assert_array_equal(stored, read_image(path), err_msg=name)
        assert stored.shape[:2] == (height, width)
    assert folder.read_folder_image(tmp_path / "rotated.jpg")[2:] == (10, 6)
    (tmp_path / "gif.png").write_bytes(_gif_bytes())
    with pytest.raises(DataError, match=r"gif\.png: holds GIF data; expected a JPEG or PNG"):
        folder.read_folder_image(tmp_path / "gif.png")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "rotated.jpg").read_bytes()[:200])
    with pytest.raises(DataError, match=r"cut\.jpg: unreadable or truncated image"):
        folder.read_folder_image(tmp_path / "cut.jpg")


def _gif_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (2, 2)).save(buf, format="GIF")
    return buf.getvalue()


# Re-runs ------------------------------------------------------------------------------------


def test_rerun_keeps_finished_shards_and_a_changed_class_list_rewrites_them(toy, tmp_path):
    classes = _classes_file(tmp_path / "c.yaml", **yaml.safe_load(toy.classes.read_text()))
    out = tmp_path / "out"
    prepare_folder_dataset(toy.images, toy.masks_rgb, out, classes, workers=1, shard_size=4)
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")}
    prepare_folder_dataset(toy.images, toy.masks_rgb, out, classes, workers=1, shard_size=4)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")} == first
    content = yaml.safe_load(classes.read_text())
    content["names"] = ["background", "sun", "box"]
    content["colors"][1] = [1, 2, 3]  # no disc pixel has this colour now
    classes.write_text(yaml.safe_dump(content))
    with pytest.raises(DataError, match=r"mask colours \[255, 160, 0\]"):
        prepare_folder_dataset(toy.images, toy.masks_rgb, out, classes, workers=1, shard_size=4)
    assert not (out / "meta.json").exists()  # never left looking finished
    # Dropping the val split removes its old shards.
    prepare_folder_dataset(toy.images, toy.masks, out, classes, 0, workers=1, shard_size=4)
    assert not list(out.glob("val-*")) and not (out / "val.txt").exists()


# Command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--images", "i", "--sbd-dir", "s"], "--sbd-dir (SBD + VOC) and --images (own data)"),
        (["--voc-dir", "v", "--classes", "c.yaml"], "cannot be mixed"),
        (["--images", "i"], "missing --masks"),
        (["--classes", "c.yaml"], "missing --images and --masks"),
        (
            ["--images", "i", "--masks", "m", "--val-list", "v", "--val-fraction", "0.2"],
            "--val-fraction and --val-list cannot be used together",
        ),
    ],
)
def test_cli_prepare_modes_are_exclusive(tmp_path, args, message):
    result = CliRunner().invoke(main, ["prepare", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.output


def test_cli_prepare_warns_about_unpaired_files_and_fails_in_one_line(toy, tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for path in toy.images.iterdir():
        (root / "images" / path.name).write_bytes(path.read_bytes())
    (root / "images" / "stray.jpg").write_bytes(b"not used")
    args = ["prepare", "--images", str(root / "images"), "--masks", str(toy.masks)]
    args += ["--out", str(tmp_path / "out"), "--workers", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "warning: 1 image(s) in" in result.output and "stray.jpg" in result.output
    assert "classes: class_0, class_1, class_2 (from the mask values" in result.output
    meta = records.read_meta(tmp_path / "out")
    assert meta["unpaired"]["images_without_mask"] == ["stray.jpg"]
    result = CliRunner().invoke(main, [*args[:4], str(toy.masks_rgb), *args[5:]])
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("kfcn: error:")]
    assert len(error) == 1 and "toy_000.png: an RGB colour mask" in error[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, [*args[:2], str(empty), *args[3:]])
    assert result.exit_code == 1 and f"{empty}: no images" in result.output


def test_cli_synthesize_toy(tmp_path):
    result = CliRunner().invoke(
        main, ["synthesize", "--toy", "--out", str(tmp_path), "--count", "3"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "toy_000.jpg",
        "toy_001.png",
        "toy_002.jpg",
    ]
    assert len(list((tmp_path / "masks_rgb").iterdir())) == 3
    assert load_classes(tmp_path / "classes.yaml").names == TOY_CLASSES
    assert f"kfcn prepare --images {tmp_path / 'images'}" in result.output
    result = CliRunner().invoke(main, ["synthesize", "--toy", "--sbd-val", "3", "--out", "x"])
    assert result.exit_code == 2 and "--sbd-val cannot be used with --toy" in result.output


def test_toy_is_deterministic(tmp_path):
    a = write_folder_toy(tmp_path / "a", n=3, seed=5)
    b = write_folder_toy(tmp_path / "b", n=3, seed=5)
    for sub in ("images", "masks", "masks_rgb"):
        for path in sorted((tmp_path / "a" / sub).iterdir()):
            assert path.read_bytes() == (tmp_path / "b" / sub / path.name).read_bytes()
    assert a.classes.read_text() == b.classes.read_text()


# Training takes the classes from the data ---------------------------------------------------


def test_train_takes_the_class_count_from_the_data(tmp_path, capsys):
    (tmp_path / "meta.json").write_text(
        json.dumps({"class_names": ["a", "b", "c"], "palette": [[1, 1, 1], [2, 2, 2], [3, 3, 3]]})
    )
    cfg = load_config(None, [])
    names, palette = dataset_classes(tmp_path, cfg)
    assert names == ["a", "b", "c"] and palette[2] == [3, 3, 3]
    assert cfg.model.num_classes == 3
    assert "note: model.num_classes = 3" in capsys.readouterr().out
    (tmp_path / "meta.json").write_text("{}")  # no class list: the config decides
    cfg = load_config(None, ["model.num_classes=4"])
    assert dataset_classes(tmp_path, cfg)[0] == ["class_0", "class_1", "class_2", "class_3"]
    assert cfg.model.num_classes == 4


# End to end ----------------------------------------------------------------------------------

TINY = [
    "model.backbone_weights=none",
    "model.widths=small",
    "data.crop_size=32",
    "train.batch_size=2",
    "train.epochs=1",
    "train.steps_per_epoch=1",
    "train.val_images=2",
    "model.freeze.fcn32=[]",
]


def test_folder_dataset_to_predictions(toy, tmp_path):
    """prepare (RGB colour masks) -> train -> evaluate -> predict, all through the CLI."""
    runner = CliRunner()
    data, run = tmp_path / "records", tmp_path / "run"

    def kfcn(*args: str) -> str:
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    kfcn(
        "prepare",
        "--images",
        toy.images,
        "--masks",
        toy.masks_rgb,
        "--classes",
        toy.classes,
        "--val-fraction",
        "0.25",
        "--out",
        data,
        "--workers",
        "1",
    )
    sets = [arg for item in TINY for arg in ("--set", item)]
    out = kfcn("train", "--stage", "fcn32", "--data-dir", data, "--run-dir", run, *sets)
    assert "note: model.num_classes = 3" in out
    table = kfcn("evaluate", "--data-dir", data, "--model", run, "--out", tmp_path / "ev.json")
    for name in TOY_CLASSES:
        assert any(line.split()[:1] == [name] for line in table.splitlines()), name
    report = json.loads((tmp_path / "ev.json").read_text())
    assert report["class_names"] == list(TOY_CLASSES) and report["num_images"] == 2
    assert np.asarray(report["confusion_matrix"]).shape == (3, 3)
    images = sorted(toy.images.iterdir())[:2]
    kfcn("predict", *images, "--model", run, "--out", tmp_path / "pred")
    for image in images:
        with Image.open(tmp_path / "pred" / f"{image.stem}.png") as mask:
            assert mask.mode == "P" and mask.size == Image.open(image).size
            assert mask.getpalette()[:9] == [v for c in TOY_COLORS for v in c]
            assert set(np.unique(np.asarray(mask))) <= {0, 1, 2}
