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


# --- every downstream command takes a converted model


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A converted tiny FCN-8s (5 classes) and its Caffe net, and 5-class synthetic shards."""
    from .shards import write_shards

    root = tmp_path_factory.mktemp("converted")
    net = write_caffe_net(root, "fcn8", form="full", seed=11)
    path, _ = convert_caffemodel(net.caffemodel, root / "fcn8.keras")
    data = root / "data"
    write_shards(data, "train", 4, size=(64, 80), num_classes=5, seed=1, per_shard=4)
    write_shards(data, "val", 3, size=(61, 83), num_classes=5, seed=2, per_shard=3)
    return net, path, data


def test_evaluate_scores_opencvs_predictions(converted):
    from kfcn.data import pipeline
    from kfcn.evaluate import evaluate_model
    from kfcn.metrics import ConfusionMatrix

    net, path, data = converted
    report = evaluate_model(path, data, "val", batch_size=2)
    cm = ConfusionMatrix(net.num_classes)
    for ex in pipeline.eval_dataset(data, "val"):
        cm.update(ex["label"].numpy(), opencv_scores(net, ex["image"].numpy()).argmax(-1))
    expected = json.loads(json.dumps(make_report_of(cm)))
    assert report["num_images"] == 3
    assert report["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-4)
    assert report["mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-4)


def make_report_of(cm):
    from kfcn.evaluate import summary_scores

    return summary_scores(cm)


def test_tta_and_ensembles_take_converted_models(converted):
    import tensorflow as tf

    from kfcn.inference import TTA, load_predictor

    _, path, _ = converted
    predictor, _, _ = load_predictor([path, path], tta=TTA(flip=True, scales=(1.0,)))
    assert predictor.input_multiple == 1
    image = _image(45, 71, seed=9)
    model, _ = load_model(path)
    plain = tf.nn.softmax(predict_logits(model, image)).numpy()
    mirrored = tf.nn.softmax(predict_logits(model, image[:, ::-1])).numpy()[:, ::-1]
    np.testing.assert_allclose(predictor.probabilities(image), (plain + mirrored) / 2, atol=1e-5)


def test_saved_model_export_of_a_converted_model(converted, tmp_path):
    import tensorflow as tf

    from kfcn.export import export_model

    _, path, _ = converted
    out = export_model(path, "saved_model", tmp_path / "export")
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    image = _image(37, 59, seed=4)
    mask = serve(image=tf.constant(image))["mask"].numpy()
    model, _ = load_model(path)
    (expected,) = predict_classes(model, [image])
    assert mask.shape == (37, 59)
    assert (mask == expected).mean() >= 0.9999


def test_a_stage_from_a_converted_model_keeps_its_topology(converted, tmp_path):
    """`kfcn train --stage fcn8 --init MODEL.keras` builds the stage from the init model's
    topology and Caffe layout and takes all its weights; an explicit other topology fails."""
    from kfcn.config import load_config
    from kfcn.errors import ConfigError
    from kfcn.models import layout_of, topology_of
    from kfcn.train import TrainOptions, build_stage_model

    net, path, data = converted
    sets = [
        "model.backbone_weights=none",
        f"model.widths={list(net.widths)}",
        "model.num_classes=5",
    ]
    cfg = load_config(None, sets)
    opts = TrainOptions("fcn8", data, tmp_path / "run", init=path)
    model, _ = build_stage_model(opts, cfg, path)
    source, _ = load_model(path)
    assert topology_of(model) == "caffe" and cfg.model.topology == "caffe"
    assert layout_of(model) == layout_of(source)
    for mine, theirs in zip(model.weights, source.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    cfg = load_config(None, [*sets, "model.topology=kfcn"])
    with pytest.raises(
        ConfigError, match=r"model.topology = 'kfcn', but .*fcn8.keras is a model of the 'caffe'"
    ):
        build_stage_model(opts, cfg, path)


@pytest.mark.slow
def test_full_width_fcn8_scores_as_opencv_does(tmp_path):
    """The published files' own widths (VGG16's, 538 MB): converted, and scored as OpenCV
    scores the file, at one odd size. Time and memory of this conversion: bench/convert_bench."""
    widths = (64, 128, 256, 512, 512, 4096, 4096)
    net = write_caffe_net(tmp_path, "fcn8", widths=widths, classes=21, seed=13)
    path, info = convert_caffemodel(net.caffemodel, tmp_path / "full.keras")
    assert info["config"]["model"]["widths"] is None  # VGG16's own: the default
    model, _ = load_model(path)
    assert model.get_layer("fc6").kernel.shape == (7, 7, 512, 4096)
    image = _image(67, 91, seed=13)
    _agree(predict_logits(model, image), opencv_scores(net, image))


def test_onnx_export_of_a_converted_model(converted, tmp_path):
    """The Caffe topology (unpadded transposed convolutions, then crops) exports to ONNX with the
    Keras model's probabilities: with its learned upsampling (kept as ConvTranspose) and with
    bilinear upsampling (run as Resize, whose crop is then the Caffe crops' alone)."""
    pytest.importorskip("onnxruntime")
    import keras
    import onnx
    import tensorflow as tf

    from kfcn.export import export_onnx
    from kfcn.exported import load_exported
    from kfcn.models.fcn import bilinear_kernel

    _, path, _ = converted
    model, info = load_model(path)
    image = _image(37, 59, seed=4)
    for name in ("learned", "bilinear"):
        if name == "bilinear":
            for layer in model.layers:
                if isinstance(layer, keras.layers.Conv2DTranspose):
                    size, _, channels, _ = layer.kernel.shape
                    layer.kernel.assign(bilinear_kernel(size, channels))
        out = export_onnx(model, tmp_path / f"{name}.onnx", info)
        mask, probabilities = load_exported(out).segment(image)
        expected = tf.nn.softmax(predict_logits(model, image)).numpy()
        assert probabilities.shape == expected.shape == (37, 59, 5)
        np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-4, err_msg=name)
        assert (mask == expected.argmax(-1)).mean() >= 0.9999, name
        ops = [n.op_type for n in onnx.load(str(out)).graph.node]
        assert ops.count("Resize" if name == "bilinear" else "ConvTranspose") == 3
