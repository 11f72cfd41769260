"""`kfcn export`: the SavedModel and TFLite files give `kfcn predict`'s masks."""

import gc
import io
import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from kfcn.cli import main
from kfcn.config import Config
from kfcn.data.records import decode_image
from kfcn.errors import ModelError
from kfcn.export import export_model, parse_size
from kfcn.models import build_fcn, make_info, save_model
from kfcn.padding import predict_classes

from .tiny_model import randomise_scores

# tf.lite.Interpreter is deprecated in favour of the separate ai_edge_litert package, which
# kfcn does not depend on; the built-in one still runs the files.
pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")

CLASS_NAMES = ["background", "disc", "box"]
TFLITE_SIZE = (50, 70)
TFLITE_TOLERANCE = 0.995
"""Share of pixels whose TFLite class must equal `kfcn predict`'s (XNNPACK rounds differently)."""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random 3-class FCN-8s saved as .keras, exported with the CLI in both formats."""
    folder = tmp_path_factory.mktemp("export")
    # A fresh Keras session resets the global seed generator, so the random backbone does not
    # depend on which tests ran earlier in this process.
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = build_fcn("fcn8", num_classes=3, backbone_weights="none", widths="small")
    randomise_scores(model, seed=3)  # random score layers: masks with several classes
    cfg = Config()
    cfg.model.num_classes = 3
    cfg.model.backbone_weights, cfg.model.widths = "none", "small"
    path = save_model(model, folder / "tiny.keras", make_info("fcn8", cfg, CLASS_NAMES))
    runner = CliRunner()
    size = f"{TFLITE_SIZE[0]}x{TFLITE_SIZE[1]}"
    for args in (
        ["--format", "saved_model", "--out", str(folder / "sm")],
        ["--format", "tflite", "--out", str(folder / "m.tflite"), "--size", size],
    ):
        result = runner.invoke(main, ["export", "--model", str(path), *args])
        assert result.exit_code == 0, result.output
    yield model, folder
    del model
    gc.collect()
    shutil.rmtree(folder, ignore_errors=True)


def _decoded(h: int, w: int, seed: int, fmt: str = "PNG") -> np.ndarray:
    """Shapes on noise, encoded as `fmt` and decoded by kfcn's one decode path."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    pixels[: h // 2, : w // 3] = (220, 40, 40)
    pixels[h // 3 :, w // 2 :] = (20, 200, 90)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return decode_image(tf.constant(buf.getvalue())).numpy()


def test_saved_model_matches_predict(exported):
    model, folder = exported
    serve = tf.saved_model.load(str(folder / "sm")).signatures["serving_default"]
    classes_seen = set()
    for h, w, fmt in ((45, 61, "PNG"), (64, 96, "JPEG"), (100, 37, "PNG")):
        image = _decoded(h, w, seed=h, fmt=fmt)
        expected = predict_classes(model, [image])[0]
        out = serve(image=tf.constant(image))
        assert out["mask"].dtype == tf.uint8 and out["mask"].shape == (h, w)
        np.testing.assert_array_equal(out["mask"].numpy(), expected)
        probabilities = out["probabilities"].numpy()
        assert probabilities.shape == (h, w, 3)
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(probabilities.argmax(-1), expected)
        classes_seen |= set(np.unique(expected).tolist())
    assert len(classes_seen) >= 2, "the test model should predict several classes"
    info = json.loads((folder / "sm" / "assets.extra" / "kfcn.json").read_text())
    assert info["class_names"] == CLASS_NAMES and info["variant"] == "fcn8"


def test_tflite_matches_predict(exported):
    model, folder = exported
    interpreter = tf.lite.Interpreter(model_path=str(folder / "m.tflite"))
    run = interpreter.get_signature_runner("serving_default")
    h, w = TFLITE_SIZE
    for seed in (0, 1):
        image = _decoded(h, w, seed=seed, fmt="JPEG")
        expected = predict_classes(model, [image])[0]
        out = run(image=image[np.newaxis])
        assert out["mask"].dtype == np.uint8 and out["mask"].shape == (1, h, w)
        assert len(np.unique(expected)) >= 2, "the test model should predict several classes"
        assert (out["mask"][0] == expected).mean() >= TFLITE_TOLERANCE
        assert out["probabilities"].shape == (1, h, w, 3)
    info = json.loads((folder / "m.json").read_text())
    assert info["class_names"] == CLASS_NAMES
    # float32 weights, none dropped: at least 4 bytes per parameter
    assert (folder / "m.tflite").stat().st_size > 4 * model.count_params()


def test_tflite_rejects_other_sizes(exported):
    _, folder = exported
    interpreter = tf.lite.Interpreter(model_path=str(folder / "m.tflite"))
    run = interpreter.get_signature_runner("serving_default")
    with pytest.raises((ValueError, RuntimeError)):
        run(image=np.zeros((1, 32, 32, 3), np.uint8))


def test_export_cli_errors(tmp_path):
    runner = CliRunner()
    fake = tmp_path / "missing.keras"
    cases = [
        (["--format", "tflite", "--out", str(tmp_path / "m.tflite")], "needs --size"),
        (["--format", "saved_model", "--out", str(tmp_path / "sm"), "--size", "8x8"], "--size"),
        (["--format", "tflite", "--out", str(tmp_path / "m.tflite"), "--size", "8by8"], "HxW"),
        (["--format", "saved_model", "--out", str(tmp_path / "sm")], "no such model"),
    ]
    for args, message in cases:
        result = runner.invoke(main, ["export", "--model", str(fake), *args])
        assert result.exit_code == 1, result.output
        assert message in result.output


def test_export_refuses_to_replace_other_things(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "keep.jpg").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a SavedModel"):
        export_model(tmp_path / "missing.keras", "saved_model", folder)
    assert (folder / "keep.jpg").read_bytes() == b"x"
    with pytest.raises(ModelError, match="is a directory"):
        export_model(tmp_path / "missing.keras", "tflite", folder, (8, 8))


def test_parse_size():
    assert parse_size("512x384") == (512, 384)
    assert parse_size("45X61") == (45, 61)
    for bad in ("512", "0x5", "axb", "5x5x5", "-4x4"):
        with pytest.raises(ModelError):
            parse_size(bad)
