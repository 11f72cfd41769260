"""Sliding-window inference: window positions, exactness for one window, the averaged
probabilities, and `--tile` with `--tta` and `--ensemble` in `predict` and `evaluate`."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kfcn.cli import main
from kfcn.errors import ConfigError
from kfcn.evaluate import evaluate_model, report_path_of
from kfcn.inference import TTA, Predictor
from kfcn.models import load_model, save_model
from kfcn.tiling import TiledPredictor, check_tile, window_starts, windows

from .shards import write_shards
from .tiny_model import CLASS_NAMES, save_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two different tiny models (an ensemble) and their files."""
    folder = tmp_path_factory.mktemp("models")
    path_a, model_a, info = save_tiny_model(folder)
    model_b = load_model(path_a)[0]
    score = model_b.get_layer("score_fr")
    rng = np.random.default_rng(5)
    score.set_weights([w + 0.3 * rng.normal(size=w.shape) for w in score.get_weights()])
    path_b = save_model(model_b, folder / "b.keras", info)
    return (path_a, model_a), (path_b, model_b)


def _rgb(h, w, seed=0):
    """A smooth random image (random noise gives logits that nearly tie)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BILINEAR))


@pytest.mark.parametrize(
    "h, w, tile, overlap",
    [(517, 333, 128, 1 / 3), (333, 517, 128, 0.5), (129, 517, 128, 0.0), (100, 517, 128, 0.9)],
)
def test_windows_cover_every_pixel_and_end_at_the_border(h, w, tile, overlap):
    cover = np.zeros((h, w), np.int64)
    stride = int(tile * (1 - overlap))
    for length in (h, w):
        starts = window_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] == max(0, length - tile)
        steps = np.diff(starts)
        assert (steps[:-1] == stride).all()  # the stride, then one shorter step to the border
        assert ((steps > 0) & (steps <= stride)).all()
    for top, left, th, tw in windows(h, w, tile, overlap):
        assert (th, tw) == (min(tile, h), min(tile, w))
        assert 0 <= top and top + th <= h and 0 <= left and left + tw <= w
        cover[top : top + th, left : left + tw] += 1
    assert cover.min() >= 1


def test_bad_tile_settings_are_one_line():
    with pytest.raises(ConfigError, match="--tile 16: expected a window side of at least 32"):
        check_tile(16, 0.3)
    with pytest.raises(ConfigError, match=r"--tile-overlap 1.0: expected a fraction in \[0, 1\)"):
        check_tile(64, 1.0)


@pytest.mark.parametrize("tta", [None, TTA(scales=(1.0, 0.5))])
def test_an_image_within_one_window_gets_exactly_the_whole_image_mask(tiny, tta):
    (_, model), _ = tiny
    image = _rgb(61, 90)
    whole = Predictor([model], tta).classes([image])[0]
    tiled = TiledPredictor(Predictor([model], tta), tile=96).classes([image])[0]
    np.testing.assert_array_equal(tiled, whole)


def _reference(predictor: Predictor, image, tile, overlap) -> np.ndarray:
    """Average each window's probabilities over the whole image in float64, then argmax."""
    h, w = image.shape[:2]
    total = np.zeros((h, w, predictor.num_classes))
    count = np.zeros((h, w, 1))
    for top, left, th, tw in windows(h, w, tile, overlap):
        total[top : top + th, left : left + tw] += predictor.probabilities(
            image[top : top + th, left : left + tw]
        )
        count[top : top + th, left : left + tw] += 1
    mean = total / count
    top2 = np.sort(mean, axis=-1)[..., -2:]
    return mean.argmax(-1), top2[..., 1] - top2[..., 0] > 1e-5  # classes, not a near tie


def test_tiles_with_tta_and_an_ensemble_average_every_window(tiny):
    (_, model_a), (_, model_b) = tiny
    image = _rgb(150, 109, seed=2)
    inner = Predictor([model_a, model_b], TTA(scales=(1.0, 0.75)))
    expected, clear = _reference(inner, image, 64, 1 / 3)
    got = TiledPredictor(inner, tile=64).classes([image])[0]
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(got[clear], expected[clear])
    whole = inner.classes([image])[0]
    assert (got != whole).any()  # the windows do change the answer somewhere


class _Recording:
    """An inner predictor whose probabilities are a function of each pixel's colour alone, so
    any grouping of the windows into calls must give the same mask; it notes each call's batch."""

    num_classes, input_multiple = 3, 32

    def __init__(self):
        self.calls = []

    def batch_probabilities(self, crops):
        self.calls.append(len(crops))
        logits = np.asarray(crops, np.float64) / 64.0  # (B, h, w, 3): one class per channel
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def test_windows_go_through_the_model_a_few_at_a_time():
    image = _rgb(200, 333, seed=4)  # 3 bands x 5 windows of 96
    masks = {}
    for batch_pixels, calls in [(1, [1] * 15), (2 * 96 * 96, [2, 2, 1] * 3), (10**9, [5] * 3)]:
        inner = _Recording()
        tiled = TiledPredictor(inner, 96, batch_pixels=batch_pixels)
        masks[batch_pixels] = tiled.classes([image])[0]
        assert inner.calls == calls
    expected = image.argmax(-1)  # each pixel's largest channel, whatever the windows
    for mask in masks.values():
        np.testing.assert_array_equal(mask, expected)


def test_batched_window_probabilities_equal_one_window_a_call(tiny):
    (_, model_a), (_, model_b) = tiny
    predictor = Predictor([model_a, model_b], TTA(scales=(1.0, 0.75)))
    crops = np.stack([_rgb(64, 64, seed=s) for s in range(3)])  # (3, 64, 64, 3)
    batched = predictor.batch_probabilities(crops)
    for crop, probs in zip(crops, batched, strict=True):
        np.testing.assert_allclose(probs, predictor.probabilities(crop), atol=1e-5)


def test_cli_predict_and_evaluate_with_tiles_tta_and_ensemble(tiny, tmp_path):
    (path_a, model_a), (path_b, model_b) = tiny
    image = _rgb(97, 130, seed=3)
    Image.fromarray(image).save(tmp_path / "photo.png")
    models = ["--model", str(path_a), "--model", str(path_b)]
    tiles = ["--tile", "64", "--tile-overlap", "0.25"]
    result = CliRunner().invoke(
        main,
        [
            "predict",
            str(tmp_path / "photo.png"),
            *models,
            *tiles,
            "--tta",
            "--tta-scales",
            "1.0",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    mask = np.array(Image.open(tmp_path / "out" / "photo.png"))
    expected, clear = _reference(Predictor([model_a, model_b], TTA(scales=(1.0,))), image, 64, 0.25)
    np.testing.assert_array_equal(mask[clear], expected[clear])

    data = tmp_path / "data"
    write_shards(data, "val", 2, (70, 45), 4, seed=3, class_names=CLASS_NAMES)
    whole = evaluate_model([path_a], data, "val")
    one_window = evaluate_model([path_a], data, "val", tile=96)
    assert one_window["confusion_matrix"] == whole["confusion_matrix"]
    assert one_window["tile"] == {"size": 96, "overlap": pytest.approx(1 / 3)}
    assert report_path_of(one_window).name.startswith("tiny-eval-val-tile96-")
    tiled = evaluate_model([path_a], data, "val", tile=32, tile_overlap=0.5)
    assert report_path_of(tiled).name.startswith("tiny-eval-val-tile32-o0.5-")
    assert np.sum(tiled["confusion_matrix"]) == np.sum(whole["confusion_matrix"])
