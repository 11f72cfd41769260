"""`kfcn convert`: random-weight Caffe FCNs (all four published variants, reduced widths, random
transposed-convolution kernels) against OpenCV's Caffe importer on odd image sizes, and the
one-line errors for files that are no Caffe FCN."""

import hashlib
import json
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kfcn.cli import main
from kfcn.convert import convert_caffemodel
from kfcn.errors import ModelError
from kfcn.models import load_model
from kfcn.padding import input_multiple, predict_classes, predict_logits

from .caffe_nets import opencv_scores, write_caffe_net

pytest.importorskip("cv2", reason="opencv-python-headless<5 is a test dependency (setup.cfg)")

SIZES = ((500, 500), (375, 500), (333, 517))
# (variant, at-once, caffemodel form, transposed convolutions with biases)
NETS = (
    ("fcn32", False, "full", False),
    ("fcn16", False, "legacy", True),
    ("fcn8", False, "bare", False),
    ("fcn8", True, "full", True),
)


def _image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _agree(got: np.ndarray, ref: np.ndarray) -> None:
    error = np.abs(got - ref).max() / np.abs(ref).max()
    assert error <= 1e-4, error
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9999


@pytest.mark.parametrize(("variant", "at_once", "form", "bias"), NETS)
def test_converted_nets_score_as_opencv_does(tmp_path, variant, at_once, form, bias):
    net = write_caffe_net(tmp_path, variant, at_once, form=form, deconv_bias=bias, seed=3)
    path, info = convert_caffemodel(net.caffemodel, tmp_path / "model.keras")
    assert (info["variant"], info["at_once"]) == (variant, at_once)
    assert info["source"]["sha256"] == hashlib.sha256(net.caffemodel.read_bytes()).hexdigest()
    assert info["config"]["model"]["topology"] == "caffe"
    assert info["config"]["model"]["widths"] == list(net.widths)
    model, _ = load_model(path)
    assert input_multiple(model) == 1
    assert (
        model.get_layer("upscore2" if variant != "fcn32" else "upscore32").bias is not None
    ) == bias
    h, w = SIZES[NETS.index((variant, at_once, form, bias)) % len(SIZES)]
    image = _image(h, w, seed=h + w)
    got = predict_logits(model, image)  # (H, W, C)
    assert got.shape == (h, w, net.num_classes)
    _agree(got, opencv_scores(net, image))


def test_every_odd_size_is_scored_unpadded(tmp_path):
    """One net on all three sizes; images of different sizes never share a padded size."""
    net = write_caffe_net(tmp_path, "fcn8", form="full", seed=5)
    model, _ = load_model(convert_caffemodel(net.caffemodel, tmp_path / "m.keras")[0])
    for h, w in SIZES:
        image = _image(h, w, seed=h)
        ref = opencv_scores(net, image)
        _agree(predict_logits(model, image), ref)
        (mask,) = predict_classes(model, [image])
        assert (mask == ref.argmax(-1)).mean() >= 0.9999
    with pytest.raises(ValueError, match="one padded size"):
        predict_classes(model, [_image(33, 40, 0), _image(34, 40, 0)])


def test_kfcn_predict_writes_opencvs_argmax(tmp_path):
    net = write_caffe_net(tmp_path, "fcn16", form="full", seed=7)
    model_path = tmp_path / "fcn16.keras"
    result = CliRunner().invoke(main, ["convert", str(net.caffemodel), "--out", str(model_path)])
    assert result.exit_code == 0, result.output
    assert "fcn16" in result.output
    image = _image(333, 517, seed=1)
    Image.fromarray(image).save(tmp_path / "image.png")
    args = ["predict", str(tmp_path / "image.png"), "--model", str(model_path)]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / "image.png") as mask:
        mask = np.array(mask)
    expected = opencv_scores(net, image).argmax(-1)
    assert mask.shape == expected.shape
    assert (mask == expected).mean() >= 0.9999


def test_class_list_names_the_classes(tmp_path):
    net = write_caffe_net(tmp_path, "fcn32", classes=3, seed=2)
    classes = tmp_path / "classes.yaml"
    classes.write_text(
        "names: [sea, sand, sky]\ncolors: [[0, 0, 255], [250, 220, 90], [0, 200, 255]]\n"
    )
    _, info = convert_caffemodel(net.caffemodel, tmp_path / "m.keras", classes)
    assert info["class_names"] == ["sea", "sand", "sky"]
    assert info["palette"][1] == [250, 220, 90]
    with zipfile.ZipFile(tmp_path / "m.keras") as zf:
        stored = json.loads(zf.read("metadata.json"))["kfcn"]
    assert stored["class_names"] == ["sea", "sand", "sky"]


def _convert_fails(tmp_path, source, *extra):
    out = tmp_path / "bad.keras"
    result = CliRunner().invoke(main, ["convert", str(source), "--out", str(out), *extra])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kfcn: error: "), result.output
    assert not out.exists()
    assert not list(tmp_path.glob("bad*"))
    return lines[0]


def test_bad_inputs_fail_with_one_line_and_no_file(tmp_path):
    net = write_caffe_net(tmp_path, "fcn8", form="full", seed=1)
    data = net.caffemodel.read_bytes()

    text = tmp_path / "deploy.caffemodel"
    text.write_text(net.prototxt.read_text())
    line = _convert_fails(tmp_path, text)
    assert str(text) in line and "not a Caffe model" in line

    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    line = _convert_fails(tmp_path, truncated)
    assert str(truncated) in line and "truncated" in line

    from kfcn import caffeproto

    parsed = caffeproto.read_net(net.caffemodel)
    kept = [layer for layer in parsed.layer if layer.name != "score_pool4"]
    del parsed.layer[:]
    parsed.layer.extend(kept)
    missing = tmp_path / "missing.caffemodel"
    missing.write_bytes(parsed.SerializeToString())
    line = _convert_fails(tmp_path, missing)
    assert str(missing) in line and "'score_pool4'" in line

    classes = tmp_path / "classes.yaml"
    classes.write_text("names: [a, b, c]\n")
    line = _convert_fails(tmp_path, net.caffemodel, "--classes", str(classes))
    assert str(classes) in line and "3 classes" in line and "5" in line

    line = _convert_fails(tmp_path, tmp_path / "nothing.caffemodel")
    assert "nothing.caffemodel" in line


def test_truncated_blob_is_named(tmp_path):
    """A file cut inside a blob can still parse; the blob's short value count gives it away."""
    net = write_caffe_net(tmp_path, "fcn32", form="full", seed=4)
    from kfcn import caffeproto

    parsed = caffeproto.read_net(net.caffemodel)
    blob = parsed.layer[[layer.name for layer in parsed.layer].index("fc6")].blobs[0]
    blob.data[0] = blob.data[0][:-8]
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(parsed.SerializeToString())
    with pytest.raises(ModelError, match="cut.caffemodel: .*truncated"):
        convert_caffemodel(cut, tmp_path / "cut.keras")
