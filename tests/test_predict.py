"""`kfcn predict`: input formats and sizes, EXIF orientation, failures, names, outputs, CLI."""

import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image, ImageOps

from kfcn.cli import main
from kfcn.data.records import decode_image
from kfcn.errors import DataError
from kfcn.images import apply_orientation, expand_inputs, read_image
from kfcn.padding import predict_classes
from kfcn.predict import enlarge, output_names, predict_images, shrink

from .tiny_model import PALETTE, tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    yield from tiny_model(tmp_path_factory)


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(image: Image.Image, path: Path, **params) -> Path:
    image.save(path, **params)
    return path


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.array(image)


def _expected(model, pixels: np.ndarray) -> np.ndarray:
    return predict_classes(model, [pixels])[0]


# --- reading images


def _modes(tmp_path):
    """(file, expected RGB pixels computed without kfcn) for each mode and size under test."""
    rng = np.random.default_rng(1)
    rgb = _rgb(33, 97)
    gray = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    rgba = np.dstack([_rgb(36, 44, 2), rng.integers(0, 256, (36, 44), dtype=np.uint8)])
    alpha = rgba[..., 3:].astype(np.float64) / 255
    on_white = rgba[..., :3] * alpha + 255 * (1 - alpha)
    indices = rng.integers(0, 4, (30, 70), dtype=np.uint8)
    colours = np.array([[0, 0, 0], [200, 0, 0], [0, 200, 0], [10, 20, 30]], np.uint8)
    palette_image = Image.fromarray(indices)
    palette_image.putpalette(colours.reshape(-1).tolist())
    sixteen = rng.integers(0, 65536, (35, 45), dtype=np.uint16)
    return {
        "rgb_1x1": (_save(Image.fromarray(_rgb(1, 1)), tmp_path / "one.png"), _rgb(1, 1)),
        "rgb_33x97": (_save(Image.fromarray(rgb), tmp_path / "rgb.png"), rgb),
        "L": (_save(Image.fromarray(gray), tmp_path / "gray.png"), np.dstack([gray] * 3)),
        "RGBA": (_save(Image.fromarray(rgba), tmp_path / "rgba.png"), on_white),
        "P": (_save(palette_image, tmp_path / "palette.png"), colours[indices]),
        "I;16": (
            _save(Image.fromarray(sixteen), tmp_path / "sixteen.png"),
            np.dstack([sixteen >> 8] * 3),
        ),
    }


def test_read_image_modes_give_the_expected_rgb(tmp_path):
    for mode, (path, expected) in _modes(tmp_path).items():
        pixels = read_image(path)
        assert pixels.dtype == np.uint8 and pixels.shape == expected.shape, mode
        # Compositing rounds; every other conversion is exact.
        tolerance = 1 if mode == "RGBA" else 0
        assert np.abs(pixels.astype(int) - expected).max() <= tolerance, mode


def test_png_pixels_match_tensorflow_decoding(tmp_path):
    """8-bit RGB PNGs (and 16-bit gray's high byte) agree with the training decoder."""
    for mode in ("rgb_33x97", "I;16"):
        path, _ = _modes(tmp_path)[mode]
        decoded = decode_image(tf.constant(path.read_bytes())).numpy()
        np.testing.assert_array_equal(read_image(path), decoded)


def test_jpeg_uses_the_training_decoder_and_matches_pil(tmp_path):
    path = _save(Image.fromarray(_rgb(45, 61)), tmp_path / "a.jpg", quality=90)
    pixels = read_image(path)
    np.testing.assert_array_equal(pixels, decode_image(tf.constant(path.read_bytes())).numpy())
    np.testing.assert_array_equal(pixels, np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(Image.fromarray(_rgb(20, 36)), tmp_path / "o.jpg", exif=exif, quality=95)
    with Image.open(path) as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    np.testing.assert_array_equal(read_image(path), expected)
    assert read_image(path).shape[:2] == ((36, 20) if orientation >= 5 else (20, 36))


def test_apply_orientation_ignores_unknown_values():
    image = _rgb(3, 5)
    for orientation in (0, 1, 9):
        assert apply_orientation(image, orientation) is image


@pytest.mark.parametrize(
    "content, reason",
    [(None, "no such file"), (b"not an image", "not a readable image"), ("cut", "JPEG")],
)
def test_unreadable_files_raise_one_line_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "broken.jpg"
    if content == "cut":
        buf = io.BytesIO()
        Image.fromarray(_rgb(40, 40)).save(buf, format="JPEG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=reason) as info:
        read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_expand_inputs_files_directories_and_globs(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for name in ("b.jpg", "a.PNG", "c.txt", ".hidden.jpg"):
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "d.jpg").write_bytes(b"x")
    empty = tmp_path / "empty"
    empty.mkdir()
    files, problems = expand_inputs(
        [folder, str(folder / "*.jpg"), str(tmp_path / "**" / "d.jpg"), tmp_path / "gone.jpg"]
        + [empty, str(tmp_path / "*.nothing")]
    )
    # The directory gives its images sorted; the glob repeats b.jpg (kept once); ** recurses;
    # a missing literal file is kept so reading it reports it.
    assert files == [folder / "a.PNG", folder / "b.jpg", folder / "sub" / "d.jpg"] + [
        tmp_path / "gone.jpg"
    ]
    assert [arg for arg, _ in problems] == [str(empty), str(tmp_path / "*.nothing")]
    assert "no image files" in problems[0][1] and "no files match" in problems[1][1]


def test_output_names_are_unique_and_deterministic():
    files = [Path("a/x.jpg"), Path("b/x.png"), Path("c/X.jpg"), Path("x-2.jpg"), Path("y.jpg")]
    assert output_names(files) == ["x", "x-2", "X-3", "x-2-2", "y"]


def test_shrink_and_enlarge():
    image = _rgb(30, 100)
    assert shrink(image, 100) is image
    small = shrink(image, 50)
    assert small.shape == (15, 50, 3)
    mask = np.array([[0, 1], [2, 3]], np.uint8)
    np.testing.assert_array_equal(enlarge(mask, (4, 6)), np.kron(mask, np.ones((2, 3), np.uint8)))
    assert enlarge(mask, (2, 2)) is mask


# --- predicting


def test_masks_for_every_mode_have_the_input_size_and_the_model_palette(tiny, tmp_path):
    _, model, info = tiny
    cases = _modes(tmp_path)
    result = predict_images(model, [p for p, _ in cases.values()], tmp_path / "out", info=info)
    assert not result.failures
    classes_seen = set()
    for path, _ in cases.values():
        out = tmp_path / "out" / f"{path.stem}.png"
        with Image.open(out) as image:
            assert image.mode == "P"
            assert image.size == Image.open(path).size
            assert image.getpalette()[:12] == [c for colour in PALETTE for c in colour]
        mask = _mask(out)
        np.testing.assert_array_equal(mask, _expected(model, read_image(path)))
        classes_seen |= set(np.unique(mask).tolist())
    assert classes_seen <= {0, 1, 2, 3} and len(classes_seen) > 1


def test_exif_rotated_jpeg_mask_follows_the_displayed_image(tiny, tmp_path):
    _, model, info = tiny
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 90 degrees counter-clockwise; viewers turn it clockwise
    stored = _rgb(40, 72, seed=5)
    path = _save(Image.fromarray(stored), tmp_path / "photo.jpg", exif=exif, quality=95)
    predict_images(model, [path], tmp_path / "out", info=info)
    mask = _mask(tmp_path / "out" / "photo.png")
    assert mask.shape == (72, 40)
    upright = np.rot90(decode_image(tf.constant(path.read_bytes())).numpy(), -1)  # clockwise
    np.testing.assert_array_equal(mask, _expected(model, upright))


def test_large_images_are_predicted_shrunk_and_the_mask_enlarged(tiny, tmp_path):
    _, model, info = tiny
    pixels = _rgb(70, 130, seed=6)
    path = _save(Image.fromarray(pixels), tmp_path / "big.png")
    predict_images(model, [path], tmp_path / "out", info=info, max_side=64)
    mask = _mask(tmp_path / "out" / "big.png")
    assert mask.shape == (70, 130)
    expected = enlarge(_expected(model, shrink(pixels, 64)), (70, 130))
    np.testing.assert_array_equal(mask, expected)


def test_batching_does_not_change_predictions(tiny, tmp_path):
    _, model, info = tiny
    # Five sizes, three padded sizes: (64, 96) x3, (32, 64) x1, (33..64, 64) x1.
    sizes = [(64, 96), (40, 70), (33, 90), (20, 50), (50, 64)]
    paths = [
        _save(Image.fromarray(_rgb(h, w, seed=i)), tmp_path / f"i{i}.png")
        for i, (h, w) in enumerate(sizes)
    ]
    one = predict_images(model, paths, tmp_path / "one", info=info, batch_size=1)
    three = predict_images(model, paths, tmp_path / "three", info=info, batch_size=3)
    assert sorted(p.name for p in one.written) == sorted(p.name for p in three.written)
    for path in one.written:
        np.testing.assert_array_equal(_mask(path), _mask(tmp_path / "three" / path.name))


def test_overlay_blends_the_image_and_adds_a_legend(tiny, tmp_path):
    _, model, info = tiny
    yy, xx = np.mgrid[:48, :64]
    pixels = np.dstack([4 * xx, 5 * yy, 255 - 2 * xx - yy]).astype(
        np.uint8
    )  # smooth: JPEG-friendly
    path = _save(Image.fromarray(pixels), tmp_path / "scene.png")
    result = predict_images(model, [path], tmp_path / "out", overlay=True, info=info)
    overlay_path = tmp_path / "out" / "scene_overlay.jpg"
    assert result.written == [tmp_path / "out" / "scene.png", overlay_path]
    mask = _mask(tmp_path / "out" / "scene.png")
    with Image.open(overlay_path) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        overlay = np.asarray(image).astype(float)
    assert overlay.shape[1] >= 64 and overlay.shape[0] > 48  # the legend is below the image
    blend = 0.5 * pixels + 0.5 * np.array(PALETTE)[mask]
    assert np.abs(overlay[:48, :64] - blend).mean() < 6  # JPEG noise only
    assert (overlay[48:] < 128).any()  # the legend has dark text and swatches on white


def test_refuses_to_overwrite_an_input_before_writing_anything(tiny, tmp_path):
    _, model, info = tiny
    out = tmp_path / "out"
    out.mkdir()
    first = _save(Image.fromarray(_rgb(32, 32)), tmp_path / "first.jpg")
    clash = _save(Image.fromarray(_rgb(32, 32)), out / "clash.png")
    before = clash.read_bytes()
    with pytest.raises(DataError, match="would overwrite this input file"):
        predict_images(model, [first, clash], out, info=info)
    assert clash.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["clash.png"]


# --- command line


def test_cli_reports_corrupt_files_and_writes_the_good_ones(tiny, tmp_path):
    path, _, _ = tiny
    good = [
        _save(Image.fromarray(_rgb(33, 47, seed=8)), tmp_path / "good1.jpg"),
        _save(Image.fromarray(_rgb(20, 20, seed=9)), tmp_path / "good2.png"),
    ]
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:300])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    args = [str(good[0]), str(truncated), str(text), str(good[1]), "--model", str(path)]
    result = CliRunner().invoke(main, ["predict", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good1.png", "good2.png"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("kfcn: error:")]
    assert any(str(truncated) in line for line in errors)
    assert any(str(text) in line for line in errors)
    assert "2 of 4 input(s) failed" in result.stderr


def test_cli_succeeds_with_a_quoted_glob(tiny, tmp_path):
    path, _, _ = tiny
    for i in range(2):
        _save(Image.fromarray(_rgb(32, 40, seed=i)), tmp_path / f"p{i}.jpg")
    args = ["predict", str(tmp_path / "p*.jpg"), "--model", str(path), "--out", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, "--overlay"])
    assert result.exit_code == 0, result.output
    written = {"p0.png", "p1.png", "p0_overlay.jpg", "p1_overlay.jpg"}
    assert written <= {p.name for p in tmp_path.iterdir()}


def test_cli_missing_model_is_one_line(tmp_path):
    image = _save(Image.fromarray(_rgb(8, 8)), tmp_path / "a.jpg")
    args = ["predict", str(image), "--model", str(tmp_path / "none.keras"), "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"kfcn: error: {tmp_path / 'none.keras'}: no such model file or run directory"
    ]


@pytest.mark.real_data
def test_real_voc_jpegs(tiny, tmp_path, real_data):
    _, model, info = tiny
    paths = sorted((real_data / "VOC2012" / "JPEGImages").glob("*.jpg"))[:3]
    result = predict_images(model, paths, tmp_path, info=info)
    assert not result.failures and len(result.written) == 3
    for path in paths:
        with Image.open(path) as image, Image.open(tmp_path / f"{path.stem}.png") as mask:
            assert mask.mode == "P" and mask.size == image.size
