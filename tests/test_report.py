"""`kfcn evaluate --report DIR`: the HTML page, its pictures, and the worst/best gallery."""

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kfcn.cli import main
from kfcn.evaluate import make_report
from kfcn.palette import IGNORE_LABEL, VOC_CLASSES, voc_colormap
from kfcn.report import GAP, Gallery, image_mean_iou, triptych, write_html_report

from .shards import write_shards
from .tiny_model import CLASS_NAMES, tiny_model


def _pictures(page: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page.read_text())


def _sample(rng, h=12, w=16, classes=21):
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    label = rng.integers(0, classes, size=(h, w)).astype(np.uint8)
    label[0, :] = IGNORE_LABEL
    return image, label


def test_triptych_puts_image_truth_and_prediction_side_by_side():
    rng = np.random.default_rng(0)
    image, label = _sample(rng)
    pred = np.zeros_like(label)
    palette = voc_colormap(21)
    strip = triptych(image, label, pred, palette)
    assert strip.shape == (12, 3 * 16 + 2 * GAP, 3) and strip.dtype == np.uint8
    np.testing.assert_array_equal(strip[:, :16], image)
    truth = strip[:, 16 + GAP : 32 + GAP]
    np.testing.assert_array_equal(truth[1:], palette[label[1:]])
    assert (truth[0] == (224, 224, 192)).all()  # not scored: VOC's cream colour
    assert (strip[:, 32 + 2 * GAP :] == 0).all()  # all background: black
    assert (strip[:, 16 : 16 + GAP] == 255).all()


def test_gallery_keeps_the_worst_and_best_in_order():
    rng = np.random.default_rng(1)
    gallery = Gallery(2)
    label = np.zeros((8, 8), np.uint8)
    label[:, 4:] = 1
    image = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    right = {}
    for k, cut in enumerate([4, 0, 8, 2, 6]):  # the share of pixels predicted right varies
        pred = np.zeros_like(label)
        pred[:, cut:] = 1
        gallery.add(f"id{k}", image, label, pred)
        right[f"id{k}"] = image_mean_iou(label, pred)
    assert list(gallery.ious) == ["id0", "id1", "id2", "id3", "id4"]
    values = sorted(right.values())
    assert len(set(values)) < len(values)  # a tie, kept in record order
    assert [item[1] for item in gallery.worst()] == values[:2]
    assert [item[1] for item in gallery.best()] == values[::-1][:2]
    assert gallery.best()[0][0] == "id0" and gallery.best()[0][1] == pytest.approx(1.0)
    assert gallery.worst()[0][0] in ("id1", "id2")  # all one class: IoU 1/2 x 1/2
    assert all(item[2] is image for item in gallery.worst() + gallery.best())


def test_page_references_existing_pictures_and_names_every_class(tmp_path):
    rng = np.random.default_rng(2)
    gallery = Gallery(3)
    matrix = np.zeros((21, 21), np.int64)
    for k in range(7):
        image, label = _sample(rng)
        pred = np.where(rng.random(label.shape) < 0.5, label, 0).astype(np.uint8)
        pred[label == IGNORE_LABEL] = 0
        gallery.add(f"2008_{k:06d}", image, label, pred)
        valid = label != IGNORE_LABEL
        np.add.at(matrix, (label[valid], pred[valid]), 1)
    report = make_report(matrix, list(VOC_CLASSES), 7, model="m/fcn8/final.keras", split="val")
    report.update(models=["m/fcn8/final.keras"], tta=None)
    page = write_html_report(report, gallery, tmp_path / "report", voc_colormap(21))
    assert page == tmp_path / "report" / "index.html"
    pictures = _pictures(page)
    assert "iou.png" in pictures and "confusion.png" in pictures
    assert sum(p.startswith("images/") for p in pictures) == 6  # 3 worst + 3 best
    for name in pictures:
        assert (page.parent / name).is_file(), name
        assert Image.open(page.parent / name).size[0] > 10
    text = page.read_text()
    for name in VOC_CLASSES:
        assert f"<td>{name}</td>" in text, name
    assert "all-background" in text and "precision" in text and "kfcn version" in text
    assert f"{100 * report['mean_iou']:.2f} %" in text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    yield from tiny_model(tmp_path_factory)


def test_cli_report_dir(tiny, tmp_path):
    path, _, _ = tiny
    write_shards(
        tmp_path / "data", "val", 5, size=(40, 56), num_classes=4, seed=3, class_names=CLASS_NAMES
    )
    out = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--data-dir",
            str(tmp_path / "data"),
            "--model",
            str(path),
            "--out",
            str(tmp_path / "val.json"),
            "--report",
            str(out),
            "--report-images",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'index.html'}" in result.output
    pictures = _pictures(out / "index.html")
    assert sum(p.startswith("images/") for p in pictures) == 4
    for name in pictures:
        assert (out / name).is_file(), name
    text = (out / "index.html").read_text()
    for name in CLASS_NAMES:
        assert f"<td>{name}</td>" in text, name
    assert str(path) in text
