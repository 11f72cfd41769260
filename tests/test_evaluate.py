"""`kfcn evaluate`: agreement with `predict`, the report files, model resolution, errors."""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from kfcn.cli import main
from kfcn.data.records import decode_label, list_shards, parse_example
from kfcn.errors import DataError, ModelError
from kfcn.evaluate import confusion_over_split, default_report_path, evaluate_model
from kfcn.predict import predict_images
from kfcn.runs import resolve_model

from .shards import write_shards
from .tiny_model import CLASS_NAMES, tiny_model

N_VAL = 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    yield from tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A 4-class prepared directory: val (odd size, two shards) and a small train split."""
    root = tmp_path_factory.mktemp("data")
    names = CLASS_NAMES
    write_shards(root, "val", N_VAL, (45, 70), 4, seed=3, per_shard=4, class_names=names)
    write_shards(root, "train", 2, size=(32, 32), num_classes=4, seed=4, class_names=names)
    return root


def _records(data_dir: Path, split: str) -> list[tuple[str, bytes, np.ndarray]]:
    """(id, image file bytes, label) of every record, in order."""
    out = []
    for shard in list_shards(data_dir, split):
        for serialized in tf.data.TFRecordDataset(str(shard)):
            raw = parse_example(serialized)
            label = decode_label(raw["label/encoded"]).numpy()
            out.append((raw["image/id"].numpy().decode(), raw["image/encoded"].numpy(), label))
    return out


def _metrics(cm: np.ndarray) -> dict:
    """The FCN paper's metrics (Long et al., section 5), written out directly."""
    n_ii = np.diag(cm).astype(float)
    t_i = cm.sum(axis=1).astype(float)
    union = t_i + cm.sum(axis=0) - n_ii
    present, scored = t_i > 0, union > 0
    iou = np.where(scored, n_ii / np.where(scored, union, 1), np.nan)
    return {
        "pixel_accuracy": n_ii.sum() / t_i.sum(),
        "mean_accuracy": np.mean(n_ii[present] / t_i[present]),
        "mean_iou": np.mean(iou[scored]),
        "fw_iou": np.sum(t_i[scored] * iou[scored]) / t_i.sum(),
        "per_class_iou": iou,
    }


def test_evaluate_equals_metrics_from_predicted_pngs(tiny, data_dir, tmp_path):
    path, model, info = tiny
    report = evaluate_model(path, data_dir, "val")

    # The same images as JPEG files (the records' bytes), through `predict`.
    records = _records(data_dir, "val")
    for image_id, image_bytes, _ in records:
        (tmp_path / f"{image_id}.jpg").write_bytes(image_bytes)
    result = predict_images(model, [tmp_path], tmp_path / "masks", info=info)
    assert not result.failures and len(result.written) == N_VAL

    cm = np.zeros((4, 4), np.int64)
    for image_id, _, label in records:
        pred = np.array(Image.open(tmp_path / "masks" / f"{image_id}.png")).astype(np.int64)
        valid = label != 255
        cm += np.bincount(4 * label[valid].astype(np.int64) + pred[valid], minlength=16).reshape(
            4, 4
        )
    assert (cm.sum(axis=0) > 0).sum() > 1  # the model predicts several classes: not a trivial check

    assert report["num_images"] == N_VAL
    assert report["confusion_matrix"] == cm.tolist()
    expected = _metrics(cm)
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
        assert report[key] == pytest.approx(expected[key], rel=1e-12), key
    assert list(report["per_class_iou"]) == CLASS_NAMES
    for name, iou in zip(CLASS_NAMES, expected["per_class_iou"], strict=True):
        if np.isnan(iou):
            assert report["per_class_iou"][name] is None
        else:
            assert report["per_class_iou"][name] == pytest.approx(iou, rel=1e-12)


def test_batching_gives_the_same_confusion_matrix(tiny, data_dir):
    _, model, _ = tiny
    one, n_one = confusion_over_split(model, data_dir, "val", 4)
    four, n_four = confusion_over_split(model, data_dir, "val", 4, batch_size=4)
    assert n_one == n_four == N_VAL
    np.testing.assert_array_equal(one.matrix, four.matrix)
    some, n_some = confusion_over_split(model, data_dir, "val", 4, max_images=2)
    assert n_some == 2 and some.matrix.sum() < one.matrix.sum()


def test_cli_prints_a_table_and_writes_json_and_png(tiny, data_dir, tmp_path):
    path, _, _ = tiny
    out = tmp_path / "reports" / "val.json"
    args = ["evaluate", "--data-dir", str(data_dir), "--model", str(path), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--max-images", "3", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    for text in ("pixel accuracy", "mean accuracy", "mean IoU", "fw IoU", *CLASS_NAMES):
        assert text in result.stdout
    report = json.loads(out.read_text())
    assert {
        "pixel_accuracy",
        "mean_accuracy",
        "mean_iou",
        "fw_iou",
        "per_class_iou",
        "confusion_matrix",
        "num_images",
        "model",
        "split",
        "data_dir",
    } <= set(report)
    assert report["num_images"] == 3 and report["split"] == "val"
    assert report["model"] == str(path) and report["data_dir"] == str(data_dir)
    assert np.array(report["confusion_matrix"]).shape == (4, 4)
    with Image.open(out.with_suffix(".png")) as picture:
        assert picture.format == "PNG" and min(picture.size) > 4 * 20
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_cli_run_dir_takes_the_latest_stage_and_reports_beside_it(tiny, data_dir, tmp_path):
    path, _, _ = tiny
    run = tmp_path / "run"
    (run / "fcn32").mkdir(parents=True)
    (run / "fcn32" / "final.keras").write_bytes(b"an older stage, never read")
    (run / "fcn16").mkdir()
    os.symlink(path, run / "fcn16" / "final.keras")
    (run / "fcn8").mkdir()  # started, not finished
    args = ["evaluate", "--data-dir", str(data_dir), "--model", str(run), "--max-images", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    # The report's name says that only the first image was scored, with the model's format,
    # the precision and the data directory.
    (first1,) = (run / "fcn16").glob("final-eval-val-first1-*.json")
    assert first1.name.startswith(f"final-eval-val-first1-keras-float32-{data_dir.name}-")
    report = json.loads(first1.read_text())
    assert report["model"] == str(run / "fcn16" / "final.keras")
    assert report["num_images"] == 1 and report["max_images"] == 1
    assert report["format"] == "keras" and report["quantization"] == "none"
    assert first1.with_suffix(".png").is_file()
    # Another setting writes another report, and leaves the first one alone.
    result = CliRunner().invoke(main, [*args[:-1], "2"])
    assert result.exit_code == 0, result.output
    (first2,) = (run / "fcn16").glob("final-eval-val-first2-*.json")
    assert json.loads(first2.read_text())["num_images"] == 2
    assert json.loads(first1.read_text()) == report


def test_default_report_names_differ_by_setting(tmp_path):
    model = tmp_path / "fcn8" / "final.keras"
    tta = {"flip": True, "scales": [0.75, 1.0, 1.25]}
    names = {
        "plain": default_report_path(model, "val"),
        "train": default_report_path(model, "train"),
        "first2": default_report_path(model, "val", max_images=2),
        "tta": default_report_path(model, "val", tta=tta),
        "tta-scales": default_report_path(model, "val", tta={"flip": True, "scales": [1, 1.5]}),
        "tta-noflip": default_report_path(model, "val", tta={**tta, "flip": False}),
        "ensemble": default_report_path(model, "val", models=[model, tmp_path / "a.keras"]),
        "ensemble-b": default_report_path(model, "val", models=[model, tmp_path / "b.keras"]),
        "one-model": default_report_path(model, "val", models=[model]),
    }
    assert names["plain"] == names["one-model"] == model.with_name("final-eval-val.json")
    assert names["first2"].name == "final-eval-val-first2.json"
    assert names["tta"].name == "final-eval-val-tta.json"
    assert names["tta-scales"].name == "final-eval-val-tta-s1_1.5.json"
    assert names["tta-noflip"].name == "final-eval-val-tta-noflip.json"
    assert names["ensemble"].name.startswith("final-eval-val-ensemble2-")
    del names["one-model"]
    assert len(set(names.values())) == len(names)  # every setting has its own file


def test_default_report_names_differ_by_data_precision_and_format(tmp_path):
    model = tmp_path / "fcn8" / "final.keras"
    base = {"data_dir": tmp_path / "a" / "records", "precision": "float32", "fmt": "keras"}
    names = {
        "base": default_report_path(model, "val", **base),
        "other data, same name": default_report_path(
            model, "val", **{**base, "data_dir": tmp_path / "b" / "records"}
        ),
        "bfloat16": default_report_path(model, "val", **{**base, "precision": "bfloat16"}),
        "sized": default_report_path(model, "val", **base, size=(64, 96)),
        "tflite": default_report_path(model, "val", **{**base, "fmt": "tflite"}),
        "tflite-int8": default_report_path(
            model, "val", **{**base, "fmt": "tflite"}, quantization="int8"
        ),
    }
    assert len(set(names.values())) == len(names)
    assert names["base"].name.startswith("final-eval-val-keras-float32-records-")
    assert "-tflite-int8-" in names["tflite-int8"].name
    assert "-64x96-" in names["sized"].name


def _info_only(path: Path, class_names: list[str]) -> Path:
    """A .keras-named archive holding only kfcn's metadata: the class checks run before any
    weights load, so this suffices for them."""
    info = {"variant": "fcn8", "class_names": class_names, "palette": [[0, 0, 0]] * 3}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"kfcn": {**info, "config": {}}}))
    return path


def test_class_order_must_match_the_data(tmp_path):
    """Same count, other order: scoring would swap the classes, so it is refused."""
    model = _info_only(tmp_path / "m.keras", ["background", "disc", "box"])
    data = tmp_path / "data"
    write_shards(data, "val", 1, num_classes=3, class_names=["background", "box", "disc"])
    with pytest.raises(DataError) as caught:
        evaluate_model(model, data, "val")
    message = str(caught.value)
    assert "['background', 'box', 'disc']" in message
    assert "['background', 'disc', 'box']" in message
    result = CliRunner().invoke(main, ["evaluate", "--data-dir", str(data), "--model", str(model)])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1


def test_ensemble_members_must_share_the_class_order(tmp_path):
    a = _info_only(tmp_path / "a.keras", ["background", "disc", "box"])
    b = _info_only(tmp_path / "b.keras", ["background", "box", "disc"])
    data = tmp_path / "data"
    write_shards(data, "val", 1, num_classes=3, class_names=["background", "disc", "box"])
    with pytest.raises(ModelError, match=r"\['background', 'box', 'disc'\] differ .*'disc', 'box'"):
        evaluate_model([a, b], data, "val")


def test_resolve_model(tmp_path):
    run = tmp_path / "run"
    for stage in ("fcn32", "fcn8"):
        (run / stage).mkdir(parents=True)
        (run / stage / "final.keras").write_bytes(b"")
    (run / "fcn16").mkdir()
    (run / "fcn16" / "best.keras").write_bytes(b"")
    assert resolve_model(run) == run / "fcn8" / "final.keras"
    assert resolve_model(run / "fcn32") == run / "fcn32" / "final.keras"
    assert resolve_model(run / "fcn16" / "best.keras") == run / "fcn16" / "best.keras"
    with pytest.raises(ModelError, match="no finished stage"):
        resolve_model(run / "fcn16")
    with pytest.raises(ModelError, match="no such model file or run directory"):
        resolve_model(tmp_path / "missing")


def test_cli_absent_split_lists_the_splits_present(tiny, data_dir):
    path, _, _ = tiny
    args = ["evaluate", "--split", "test", "--data-dir", str(data_dir), "--model", str(path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'test'" in lines[0] and "train, val" in lines[0]


def test_cli_unfinished_run_dir_and_missing_model(data_dir, tmp_path):
    for model, reason in ((tmp_path, "no finished stage"), (tmp_path / "x.keras", "no such")):
        args = ["evaluate", "--data-dir", str(data_dir), "--model", str(model)]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0] and str(model) in lines[0]


def test_class_count_must_match_the_data(tiny, tmp_path):
    path, _, _ = tiny
    write_shards(tmp_path, "val", 1, num_classes=21)
    with pytest.raises(DataError, match=r"the data's classes \['background', 'aeroplane'"):
        evaluate_model(path, tmp_path, "val")
    meta = json.loads((tmp_path / "meta.json").read_text())
    del meta["class_names"]  # data prepared before class names were stored
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="the data has 21 classes but the model .* predicts 4"):
        evaluate_model(path, tmp_path, "val")


def test_cli_rejects_a_non_json_report_name(tiny, data_dir, tmp_path):
    path, _, _ = tiny
    args = ["evaluate", "--data-dir", str(data_dir), "--model", str(path)]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "report.png")])
    assert result.exit_code == 2 and ".json" in result.stderr
