"""Test-time augmentation and ensembles (`kfcn.inference`), and their use by evaluate/predict."""

import gc
import json
import shutil
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from kfcn.cli import main
from kfcn.config import Config
from kfcn.errors import ConfigError, ModelError
from kfcn.evaluate import evaluate_model, format_table
from kfcn.inference import TTA, Predictor, load_predictor, parse_scales
from kfcn.models import build_fcn, make_info, save_model
from kfcn.padding import predict_classes, predict_logits

from .shards import write_shards
from .tiny_model import SCORE_LAYERS, randomise_scores


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random 4-class FCN-8s (random score layers) and its .keras file."""
    folder = tmp_path_factory.mktemp("model")
    keras.utils.set_random_seed(0)
    model = build_fcn("fcn8", num_classes=4, backbone_weights="none", widths="small")
    randomise_scores(model, seed=0)
    cfg = Config()
    cfg.model.num_classes = 4
    cfg.model.backbone_weights, cfg.model.widths = "none", "small"
    path = save_model(model, folder / "tiny.keras", make_info("fcn8", cfg))
    yield path, model
    del model
    gc.collect()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def symmetric():
    """An FCN-8s that commutes with a left-right flip (see `randomise_scores`)."""
    keras.utils.set_random_seed(1)
    model = build_fcn("fcn8", num_classes=3, backbone_weights="none", widths="small")
    randomise_scores(model, seed=1, symmetric=True)
    yield model
    del model
    gc.collect()


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _softmax(logits):
    return tf.nn.softmax(logits).numpy()


def test_flip_on_symmetric_model_and_image_gives_plain_prediction(symmetric):
    half = _image(40, 32, seed=2)
    image = np.concatenate([half, half[:, ::-1]], axis=1)  # (40, 64, 3), mirror-symmetric
    plain = predict_classes(symmetric, [image])[0]
    assert len(np.unique(plain)) >= 2, "the test model should predict several classes"
    flipped = Predictor([symmetric], TTA(flip=True, scales=(1.0,)))
    np.testing.assert_array_equal(flipped.classes([image])[0], plain)
    expected = _softmax(predict_logits(symmetric, image))
    np.testing.assert_allclose(flipped.probabilities(image), expected, atol=1e-5)


def test_flip_averages_the_unflipped_mirror_view(tiny):
    _, model = tiny
    image = _image(37, 50, seed=3)
    expected = 0.5 * (
        _softmax(predict_logits(model, image))
        + _softmax(predict_logits(model, image[:, ::-1]))[:, ::-1]
    )
    got = Predictor([model], TTA(flip=True, scales=(1.0,))).probabilities(image)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # A random model is not mirror-symmetric: flipping must change something.
    assert np.abs(got - _softmax(predict_logits(model, image))).max() > 1e-3


def test_ensemble_of_one_model_twice_equals_the_model(tiny):
    _, model = tiny
    images = [_image(45, 61, seed=4), _image(33, 40, seed=5)]
    twice = Predictor([model, model])
    assert not twice.plain
    for image in images:
        plain = predict_classes(model, [image])[0]
        assert len(np.unique(plain)) >= 2
        np.testing.assert_array_equal(twice.classes([image])[0], plain)
        np.testing.assert_allclose(
            twice.probabilities(image), _softmax(predict_logits(model, image)), atol=1e-6
        )


def test_plain_predictor_is_predict_classes(tiny):
    _, model = tiny
    images = [_image(45, 61, seed=6), _image(50, 64, seed=7)]  # one padded size: one call
    for got, want in zip(
        Predictor([model]).classes(images), predict_classes(model, images), strict=True
    ):
        np.testing.assert_array_equal(got, want)


def test_scales_change_nothing_on_a_constant_model():
    keras.utils.set_random_seed(2)
    model = build_fcn("fcn8", num_classes=3, backbone_weights="none", widths="small")
    bias = np.array([0.2, 1.5, -0.4], np.float32)
    for name in SCORE_LAYERS:
        kernel, _ = model.get_layer(name).get_weights()
        # Every logit is a positive multiple of `bias` (the upsampling weights are >= 0).
        model.get_layer(name).set_weights([np.zeros_like(kernel), bias])
    image = _image(45, 61, seed=8)
    plain = predict_classes(model, [image])[0]
    assert (plain == 1).all()
    for scales in ((0.5, 1.0, 1.5), (0.75,), (2.0, 1.25)):
        predictor = Predictor([model], TTA(flip=True, scales=scales))
        np.testing.assert_array_equal(predictor.classes([image])[0], plain)


def test_scales_matter_on_a_random_model(tiny):
    _, model = tiny
    image = _image(45, 61, seed=9)
    multi = Predictor([model], TTA(flip=False, scales=(0.5, 1.0))).probabilities(image)
    assert multi.shape == (45, 61, 4)
    np.testing.assert_allclose(multi.sum(-1), 1.0, atol=1e-5)
    assert np.abs(multi - _softmax(predict_logits(model, image))).max() > 1e-3


def _info_only(path, class_names):
    """A .keras-named archive holding only kfcn's metadata (enough for the class check)."""
    info = {"variant": "fcn8", "class_names": class_names, "palette": [[0, 0, 0]] * 2}
    info["config"] = {}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"kfcn": info}))
    return path


def test_mismatched_class_lists_are_refused(tmp_path):
    a = _info_only(tmp_path / "a.keras", ["background", "cat"])
    b = _info_only(tmp_path / "b.keras", ["background", "dog"])
    with pytest.raises(ModelError, match="share one class list"):
        load_predictor([a, b])


def test_ensemble_takes_every_finished_stage(tmp_path):
    for stage in ("fcn32", "fcn8"):
        (tmp_path / stage).mkdir()
    _info_only(tmp_path / "fcn32" / "final.keras", ["background", "cat"])
    _info_only(tmp_path / "fcn8" / "final.keras", ["background", "dog"])
    # The class check runs before any weights load, so these metadata-only files suffice.
    with pytest.raises(ModelError, match="fcn8/final.keras: its classes"):
        load_predictor(tmp_path, ensemble=True)


def test_parse_scales():
    assert parse_scales("0.75,1.0,1.25") == (0.75, 1.0, 1.25)
    assert parse_scales("1") == (1.0,)
    for bad in ("", "a,b", "0,1", "-1", "9"):
        with pytest.raises(ConfigError):
            parse_scales(bad)


def test_evaluate_reports_tta_and_ensemble(tiny, tmp_path):
    path, model = tiny
    write_shards(tmp_path, "val", 2, size=(40, 50), num_classes=4, seed=3)
    tta = TTA(flip=True, scales=(0.75, 1.0))
    report = evaluate_model([path, path], tmp_path, "val", tta=tta)
    assert report["models"] == [str(path), str(path)]
    assert report["tta"] == {"flip": True, "scales": [0.75, 1.0]}
    table = format_table(report)
    assert "ensemble of 2" in table and "flip on, scales 0.75, 1.0" in table
    plain = evaluate_model(path, tmp_path, "val")
    assert plain["tta"] is None and plain["models"] == [str(path)]
    assert "tta: none" in format_table(plain)
    assert report["confusion_matrix"] != plain["confusion_matrix"]  # TTA changed predictions


def test_predict_cli_tta_and_ensemble(tiny, tmp_path):
    path, model = tiny
    image = _image(45, 61, seed=10)
    Image.fromarray(image).save(tmp_path / "a.png")
    runner = CliRunner()
    args = ["predict", str(tmp_path / "a.png"), "--model", str(path), "--model", str(path)]
    result = runner.invoke(
        main, [*args, "--out", str(tmp_path / "out"), "--tta", "--tta-scales", "1"]
    )
    assert result.exit_code == 0, result.output
    expected = Predictor([model], TTA(flip=True, scales=(1.0,))).classes([image])[0]
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "out" / "a.png")), expected)
    bad = runner.invoke(main, [*args, "--out", str(tmp_path / "o2"), "--tta", "--tta-scales", "x"])
    assert bad.exit_code == 1 and "--tta-scales" in bad.output


def test_tta_views_stay_within_max_side(monkeypatch):
    """An image already shrunk to --max-side must not be predicted larger at scale 1.25."""
    import types

    from kfcn import inference

    seen = []

    def record(model, views):  # stands in for the model: notes each view's size
        seen.append(tuple(views.shape[1:3]))
        return np.zeros((*views.shape[:3], 2), np.float32)

    monkeypatch.setattr(inference, "predict_logits_batch", record)
    model = types.SimpleNamespace(output=types.SimpleNamespace(shape=(None, None, None, 2)))
    image = _image(100, 80)  # long side == max_side, as predict leaves a shrunk image
    predictor = Predictor([model], TTA(flip=True, max_side=100))
    assert predictor.probabilities(image).shape == (100, 80, 2)
    assert seen and max(max(size) for size in seen) <= 100
    assert (75, 60) in seen and (100, 80) in seen  # the other scales keep their sizes
    assert TTA(max_side=100).view_sizes(40, 30) == [(30, 22), (40, 30), (50, 38)]


def test_predict_cli_bounds_tta_by_max_side(tmp_path, monkeypatch):
    import types

    import kfcn.predict

    captured = {}

    def fake_predict_images(*args, **kwargs):
        captured.update(kwargs)
        return types.SimpleNamespace(written=[], failures=[], num_inputs=1)

    monkeypatch.setattr(kfcn.predict, "predict_images", fake_predict_images)
    args = ["predict", "a.jpg", "--model", "m.keras", "--tta", "--max-side", "64"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert captured["tta"].max_side == 64 and captured["max_side"] == 64
