"""Exported models (SavedModel, TFLite, ONNX) scored by `kfcn evaluate` and `kfcn predict` as
`.keras` models are, the fixed-size fitting, int8 calibration sampling, and bad files."""

import importlib.util
import json
import sys

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from kfcn.cli import main
from kfcn.data.records import decode_example, list_shards
from kfcn.errors import ModelError
from kfcn.evaluate import evaluate_model
from kfcn.export import ONNX_OPSET, calibration_images, calibration_positions, export_model
from kfcn.exported import load_exported, model_format, tflite_metadata
from kfcn.fitting import fit_image, fit_uint8, fitted_size, unfit_probabilities
from kfcn.inference import TTA
from kfcn.models.fcn import bilinear_kernel
from kfcn.onnx_graph import _as_resize
from kfcn.padding import IMAGENET_MEAN_RGB, predict_classes
from kfcn.predict import predict_images

from .shards import write_shards
from .tiny_model import CLASS_NAMES, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")

SIZE = (48, 64)
"""The TFLite files' input size (the val images are 45x70: fitted as 41x64, then padded)."""
TFLITE_AGREEMENT = 0.995
"""Share of pixels a float32 TFLite file must classify as the .keras model at the same fitting."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    yield from tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_shards(root, "val", 4, (45, 70), 4, seed=3, per_shard=2, class_names=CLASS_NAMES)
    write_shards(root, "train", 6, (40, 56), 4, seed=4, per_shard=2, class_names=CLASS_NAMES)
    return root


@pytest.fixture(scope="module")
def exports(tiny, data_dir, tmp_path_factory):
    """The tiny model exported as a SavedModel, float32 and int8 TFLite files (and ONNX when
    the `onnx` extra is installed)."""
    path, _, _ = tiny
    out = tmp_path_factory.mktemp("exports")
    files = {
        "saved_model": export_model(path, "saved_model", out / "sm"),
        "tflite": export_model(path, "tflite", out / "f32.tflite", SIZE),
        "int8": export_model(path, "tflite", out / "i8.tflite", SIZE, "int8", data_dir, 3),
    }
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        pass
    else:
        files["onnx"] = export_model(path, "onnx", out / "m.onnx")
    return files


def _onnx(exports):
    pytest.importorskip("onnxruntime")  # the `onnx` extra, which `make test` installs
    return exports["onnx"]


def test_fitting_keeps_the_aspect_ratio_and_pads_bottom_right():
    image = np.random.default_rng(0).integers(0, 256, (45, 70, 3)).astype(np.uint8)
    fitted, hw = fit_image(image, SIZE)
    assert tuple(hw.numpy()) == (41, 64) == tuple(fitted_size([45, 70], SIZE).numpy())
    resized = tf.image.resize(image.astype(np.float32), (41, 64)).numpy()
    np.testing.assert_array_equal(fitted.numpy()[:41], resized)
    np.testing.assert_array_equal(
        fitted.numpy()[41:], np.broadcast_to(np.float32(IMAGENET_MEAN_RGB), (7, 64, 3))
    )
    # A probability map of the fitted image comes back at the image's size.
    probs = np.zeros((*SIZE, 4), np.float32)
    probs[:41, :, 2] = 1.0
    back = unfit_probabilities(probs, hw, (45, 70)).numpy()
    assert back.shape == (45, 70, 4)
    assert (back.argmax(-1) == 2).all()


def test_formats_are_found_from_the_content(exports, tiny, tmp_path):
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(exports["tflite"].read_bytes())
    assert model_format(renamed) == "tflite"
    assert model_format(exports["saved_model"]) == "saved_model"
    assert model_format(tiny[0]) == "keras"
    meta = tflite_metadata(exports["int8"].read_bytes())
    assert meta["size"] == list(SIZE) and meta["quantization"] == "int8"
    assert meta["fitting"] == "resize_pad" and meta["class_names"] == CLASS_NAMES


def test_saved_model_and_onnx_score_as_the_keras_model(exports, tiny, data_dir):
    path, _, _ = tiny
    keras_report = evaluate_model(path, data_dir, "val")
    saved = evaluate_model(exports["saved_model"], data_dir, "val")
    assert saved["confusion_matrix"] == keras_report["confusion_matrix"]
    assert saved["format"] == "saved_model" and saved["file"] == str(exports["saved_model"])
    assert saved["size"] is None and keras_report["format"] == "keras"
    onnx_report = evaluate_model(_onnx(exports), data_dir, "val")
    assert onnx_report["format"] == "onnx" and onnx_report["quantization"] == "none"
    cm_onnx = np.asarray(onnx_report["confusion_matrix"])
    cm_keras = np.asarray(keras_report["confusion_matrix"])
    assert np.abs(cm_onnx - cm_keras).sum() <= 2e-3 * cm_keras.sum()
    assert len(np.unique(np.nonzero(cm_keras)[1])) > 1  # the model predicts several classes


def test_tflite_is_scored_like_keras_fitted_to_its_size(exports, tiny, data_dir):
    path, _, _ = tiny
    baseline = evaluate_model(path, data_dir, "val", size=SIZE)
    assert baseline["size"] == list(SIZE) and baseline["fitting"] == "resize_pad"
    tflite = evaluate_model(exports["tflite"], data_dir, "val")
    assert tflite["format"] == "tflite" and tflite["size"] == list(SIZE)
    cm_tflite = np.asarray(tflite["confusion_matrix"])
    cm_keras = np.asarray(baseline["confusion_matrix"])
    # The confusion matrices count the same pixels (every image at its native size) ...
    assert (
        cm_tflite.sum()
        == cm_keras.sum()
        == np.asarray(evaluate_model(path, data_dir, "val")["confusion_matrix"]).sum()
    )
    # ... and agree up to the interpreter's float rounding.
    assert np.abs(cm_tflite - cm_keras).sum() / 2 <= (1 - TFLITE_AGREEMENT) * cm_keras.sum()
    int8 = evaluate_model(exports["int8"], data_dir, "val")
    assert int8["quantization"] == "int8" and np.asarray(int8["confusion_matrix"]).sum() > 0


def test_cli_report_names_the_format_and_refuses_tta_for_fixed_size(exports, data_dir):
    args = ["evaluate", "--data-dir", str(data_dir), "--model", str(exports["int8"])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "format: tflite (quantization int8)" in result.output
    assert "input size: 48x64 (fitted by resize_pad)" in result.output
    (report,) = exports["int8"].parent.glob("i8-eval-val-tflite-int8-48x64-float32-*.json")
    assert json.loads(report.read_text())["file"] == str(exports["int8"])
    result = CliRunner().invoke(main, [*args, "--tta"])
    assert result.exit_code == 1
    (error,) = _error_lines(result.output)
    assert "fixed-size TFLite file" in error


def test_saved_model_and_onnx_take_tta_as_the_keras_model(exports, tiny, data_dir):
    path, _, _ = tiny
    tta = TTA(flip=True, scales=(0.75, 1.0))
    keras_cm = np.asarray(evaluate_model(path, data_dir, "val", tta=tta)["confusion_matrix"])
    plain_cm = np.asarray(evaluate_model(path, data_dir, "val")["confusion_matrix"])
    assert np.abs(keras_cm - plain_cm).sum() > 0  # the views change some pixels
    files = {"saved_model": exports["saved_model"]}
    if importlib.util.find_spec("onnxruntime"):
        files["onnx"] = exports["onnx"]
    for name, file in files.items():
        report = evaluate_model(file, data_dir, "val", tta=tta)
        assert report["format"] == name and report["tta"] == tta.as_dict()
        cm = np.asarray(report["confusion_matrix"])
        # Resized views are rounded to uint8 for the exported input; a few pixels may differ.
        assert np.abs(cm - keras_cm).sum() / 2 <= 5e-3 * keras_cm.sum(), name
    args = ["evaluate", "--data-dir", str(data_dir), "--model", str(exports["saved_model"])]
    result = CliRunner().invoke(main, [*args, "--tta", "--tta-scales", "1.0"])
    assert result.exit_code == 0, result.output
    assert "flip on, scales 1.0" in result.output


def test_saved_model_and_onnx_take_tiles_as_the_keras_model(exports, tiny, data_dir):
    path, _, _ = tiny
    keras_cm = np.asarray(evaluate_model(path, data_dir, "val", tile=32)["confusion_matrix"])
    plain_cm = np.asarray(evaluate_model(path, data_dir, "val")["confusion_matrix"])
    assert np.abs(keras_cm - plain_cm).sum() > 0  # the 45x70 images do go by windows
    files = {"saved_model": exports["saved_model"]}
    if importlib.util.find_spec("onnxruntime"):
        files["onnx"] = exports["onnx"]
    for name, file in files.items():
        report = evaluate_model(file, data_dir, "val", tile=32)
        assert report["format"] == name and report["tile"] == {"size": 32, "overlap": 1 / 3}
        cm = np.asarray(report["confusion_matrix"])
        assert np.abs(cm - keras_cm).sum() / 2 <= 1e-3 * keras_cm.sum(), name


def _error_lines(output: str) -> list[str]:
    """The error lines of a failed command; nothing else but the device line is printed."""
    lines = [line for line in output.strip().splitlines() if not line.startswith("devices:")]
    assert all(line.startswith("kfcn: error: ") for line in lines), output
    return lines


def _png(image: np.ndarray, path):
    Image.fromarray(image).save(path)
    return path


def test_predict_onnx_masks_equal_keras_on_an_odd_size(exports, tiny, tmp_path):
    onnx_file = _onnx(exports)
    _, model, _ = tiny
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (117, 203, 3), dtype=np.uint8)
    image[20:90, 30:150] = (200, 40, 40)
    file = _png(image, tmp_path / "odd.png")
    for name, model_file in (("onnx", onnx_file), ("sm", exports["saved_model"])):
        result = predict_images(model_file, [file], tmp_path / name)
        assert not result.failures
        mask = np.asarray(Image.open(tmp_path / name / "odd.png"))
        expected = predict_classes(model, [image])[0]
        assert mask.shape == (117, 203)
        assert (mask == expected).mean() >= 0.999
    # A plain InferenceSession opens the file, with kfcn's information in metadata_props.
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["class_names"]) == CLASS_NAMES and props["variant"] == "fcn8"
    assert [o.name for o in session.get_outputs()] == ["mask", "probabilities"]


def test_onnx_weights_are_bound_in_onnx_layout(exports):
    """No Transpose is left on a weight, and the fixed bilinear upsampling runs as Resize, cropped
    to TF's "same" size by one Slice (not tf2onnx's crop and zero Pad computed from shapes); the
    masks stay the Keras model's (the scoring tests, on images of other sizes than the padded)."""
    onnx = pytest.importorskip("onnx")
    onnx.checker.check_model(str(_onnx(exports)))  # nodes in order, every input written
    graph = onnx.load(str(_onnx(exports))).graph
    initializers = {i.name: i for i in graph.initializer}
    assert not [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in initializers]
    assert {i.name for i in graph.input} == {"image"}
    assert not [n for n in graph.node if n.op_type == "ConvTranspose"]
    resizes = [n for n in graph.node if n.op_type == "Resize"]
    assert len(resizes) == 3  # FCN-8s: upscore2, upscore_pool4, upscore8
    factors = sorted(int(onnx.numpy_helper.to_array(initializers[n.input[2]])[2]) for n in resizes)
    assert factors == [2, 2, 8]
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for resize in resizes:
        (crop,) = readers[resize.output[0]]
        assert crop.op_type == "Slice"
        factor = int(onnx.numpy_helper.to_array(initializers[resize.input[2]])[2])
        assert list(onnx.numpy_helper.to_array(initializers[crop.input[1]])) == [factor] * 2
        assert "Pad" not in [n.op_type for n in readers[crop.output[0]]]
    # The crop to the image's size is the last upsampling's Slice, and that upsampling runs
    # channels last: Transpose (NCHW -> NHWC, of its small input) -> Resize -> Slice -> Squeeze
    # -> Softmax, no other full-size copy.
    writer = {name: node for node in graph.node for name in node.output}
    chain, node = [], next(n for n in graph.node if n.op_type == "Softmax")
    while node.op_type != "Pad":
        chain.append(node.op_type)
        node = writer[node.input[0]]
    assert chain == ["Softmax", "Squeeze", "Slice", "Resize", "Transpose"]
    last = resizes[-1]
    assert list(onnx.numpy_helper.to_array(initializers[last.input[2]])) == [1, 8, 8, 1]


def _transposed_convolution(onnx, kernel: np.ndarray, stride: int):
    """A one-node ONNX graph: ConvTranspose of x (1, C, h, w) with `kernel` (C, C, k, k)."""
    helper = onnx.helper
    node = helper.make_node(
        "ConvTranspose",
        ["x", "w"],
        ["y"],
        name="up",
        strides=[stride, stride],
        kernel_shape=list(kernel.shape[2:]),
    )
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, kernel.shape[0], None, None])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_bilinear_transposed_convolution_as_resize_gives_its_values(factor):
    """The Resize that replaces a bilinear ConvTranspose gives its values at every output pixel,
    the borders (zeros beyond the input) included, and with `same` also TF's "same" output (its
    n * f values from f/2 on); a learned kernel stays a convolution."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    channels = 3
    kernel = np.ascontiguousarray(bilinear_kernel(2 * factor, channels).transpose(2, 3, 0, 1))
    x = np.random.default_rng(factor).normal(0, 5, (1, channels, 5, 7)).astype(np.float32)
    results = {}
    for name, rewrite in (("convolution", False), ("resize", True)):
        model = _transposed_convolution(onnx, kernel, factor)
        weights = {"w": kernel.copy()}
        if rewrite:
            nodes = _as_resize(onnx, model.graph.node[0], weights, same="same")
            assert [n.op_type for n in nodes] == ["Pad", "Resize", "Slice", "Slice"]
            del model.graph.node[:]
            model.graph.node.extend(nodes)
            model.graph.output.append(
                onnx.helper.make_tensor_value_info("same", onnx.TensorProto.FLOAT, None)
            )
            del weights["w"]
        for key, value in weights.items():
            model.graph.initializer.append(onnx.numpy_helper.from_array(value, key))
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        results[name] = session.run(None, {"x": x})
    (convolution,), (resize, same) = results["convolution"], results["resize"]
    assert resize.shape == convolution.shape == (1, 3, 6 * factor, 8 * factor)
    np.testing.assert_allclose(resize, convolution, rtol=0, atol=1e-4)
    half = factor // 2
    expected = convolution[:, :, half : half + 5 * factor, half : half + 7 * factor]
    assert same.shape == expected.shape
    np.testing.assert_allclose(same, expected, rtol=0, atol=1e-4)
    learned = kernel.copy()
    learned[0, 0, 0, 0] += 0.1
    model = _transposed_convolution(onnx, learned, factor)
    assert _as_resize(onnx, model.graph.node[0], {"w": learned}) is None


def test_int8_calibration_is_a_seeded_sample_fitted_like_inference(data_dir):
    positions = calibration_positions(data_dir, 3, seed=0)
    assert positions == calibration_positions(data_dir, 3, seed=0)
    assert len(set(positions)) == 3 and all(0 <= p < 6 for p in positions)
    assert {tuple(calibration_positions(data_dir, 3, seed=s)) for s in range(6)} != {
        tuple(positions)
    }  # not the first records whatever the seed
    assert calibration_positions(data_dir, 100, seed=0) == list(range(6))
    records = [
        decode_example(s)["image"]
        for shard in list_shards(data_dir, "train")
        for s in tf.data.TFRecordDataset(str(shard))
    ]
    batches = list(calibration_images(data_dir, SIZE, 3, seed=0)())
    assert len(batches) == 3
    for (batch,), position in zip(batches, positions, strict=True):
        assert batch.shape == (1, *SIZE, 3) and batch.dtype == tf.uint8
        np.testing.assert_array_equal(batch[0], fit_uint8(records[position], SIZE)[0])


def _strip_metadata(flatbuffer: bytes) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    model.metadata = [m for m in model.metadata if m.name != b"kfcn"]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _other_interface_tflite() -> bytes:
    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32, name="x")])
    def double(x):
        return {"y": x * 2}

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [double.get_concrete_function()], double
    )
    return converter.convert()


def test_bad_files_are_one_line_and_write_no_report(exports, data_dir, tmp_path):
    flatbuffer = exports["tflite"].read_bytes()
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "notes.txt").write_text("not a model")
    cases = {
        "old.tflite": (_strip_metadata(flatbuffer), "export it again"),
        "cut.tflite": (flatbuffer[: len(flatbuffer) // 3], "truncated or corrupt TFLite"),
        "other.tflite": (_other_interface_tflite(), "not kfcn's export interface"),
        "noise.onnx": (np.random.default_rng(0).bytes(5000), "ONNX"),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    cases["empty_dir"] = (None, "empty_dir")
    for name, (_, problem) in cases.items():
        model = tmp_path / name
        args = ["evaluate", "--data-dir", str(data_dir), "--model", str(model)]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, (name, result.output)
        (error,) = _error_lines(result.output)
        assert str(model) in error and problem in error, (name, result.output)
        assert not list(tmp_path.glob("*eval*.json")), name


def test_onnx_without_the_extra_names_it(tiny, exports, monkeypatch, tmp_path):
    onnx_file = _onnx(exports)
    for module in ("onnxruntime", "onnx", "tf2onnx"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ModelError, match=r"pip install 'kfcn\[onnx\]'"):
        load_exported(onnx_file)
    with pytest.raises(ModelError, match=r"pip install 'kfcn\[onnx\]'"):
        export_model(tiny[0], "onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_export_onnx_refuses_tflite_options(tiny, tmp_path):
    with pytest.raises(ModelError, match="--size is for --format tflite"):
        export_model(tiny[0], "onnx", tmp_path / "x.onnx", size=SIZE)


def _preprocessing_graph(onnx, subtracted: np.ndarray, kernel: np.ndarray):
    """tf2onnx's layout of kfcn's preprocessing: image (H, W, 3) uint8 -> Cast -> Split -> Pad
    each channel with its mean to (H + 3, W + 5) -> Concat -> Unsqueeze -> Gather (RGB -> BGR)
    -> Sub `subtracted` -> Transpose (NCHW) -> Conv `kernel`."""
    helper, from_array = onnx.helper, onnx.numpy_helper.from_array
    constants = {
        "pads": np.array([0, 0, 0, 3, 5, 0], np.int64),
        "batch": np.array([0], np.int64),
        "bgr": np.array([2, 1, 0], np.int64),
        "subtracted": subtracted.astype(np.float32),
        "w": kernel,
        **{f"mean{c}": np.array(m, np.float32) for c, m in enumerate(IMAGENET_MEAN_RGB)},
    }
    make = helper.make_node
    nodes = [
        make("Cast", ["image"], ["float"], to=onnx.TensorProto.FLOAT),
        make("Split", ["float"], ["r", "g", "b"], axis=-1),
        *[make("Pad", [c, "pads", f"mean{i}"], [f"{c}_pad"]) for i, c in enumerate("rgb")],
        make("Concat", ["r_pad", "g_pad", "b_pad"], ["padded"], axis=2),
        make("Unsqueeze", ["padded", "batch"], ["batched"]),
        make("Gather", ["batched", "bgr"], ["bgr_image"], axis=-1),
        make("Sub", ["bgr_image", "subtracted"], ["centred"]),
        make("Transpose", ["centred"], ["nchw"], perm=[0, 3, 1, 2]),
        make("Conv", ["nchw", "w"], ["y"], pads=[1, 1, 1, 1]),
    ]
    image = helper.make_tensor_value_info("image", onnx.TensorProto.UINT8, [None, None, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, None, None])
    initializers = [from_array(v, k) for k, v in constants.items()]
    graph = helper.make_graph(nodes, "g", [image], [y], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])


def test_onnx_preprocessing_is_folded_into_the_first_convolution():
    """The per-channel mean padding, RGB -> BGR and mean subtraction become Transpose -> Cast ->
    Sub -> Pad (zeros) -> Unsqueeze with the channel order in the kernel, with the same output
    on the padded border too; a mean that is not the padding's leaves the graph as it is."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from kfcn.onnx_graph import fold_input

    rng = np.random.default_rng(7)
    kernel = rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    image = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    bgr_mean = np.array(IMAGENET_MEAN_RGB[::-1], np.float32)

    def run(model):
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return session.run(None, {"image": image})[0]

    model = _preprocessing_graph(onnx, bgr_mean, kernel)
    expected = run(model)
    fold_input(onnx, model.graph)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == [
        "Transpose", "Cast", "Sub", "Gather", "Pad", "Unsqueeze", "Conv"
    ]  # fmt: skip
    folded = run(model)
    assert folded.shape == expected.shape == (1, 4, 12, 16)
    np.testing.assert_allclose(folded, expected, rtol=0, atol=1e-3)
    np.testing.assert_allclose(folded[..., 9:, :], expected[..., 9:, :], rtol=0, atol=1e-3)
    used = {name for node in model.graph.node for name in node.input}
    assert {i.name for i in model.graph.initializer} <= used
    other = _preprocessing_graph(onnx, bgr_mean + 1, kernel)  # not the padding's mean
    before = other.SerializeToString()
    fold_input(onnx, other.graph)
    assert other.SerializeToString() == before


@pytest.mark.parametrize("variant", ["fcn32", "fcn16"])
def test_onnx_matches_the_saved_model_for_each_variant(variant, tmp_path):
    """FCN-32s and FCN-16s (one and two upsamplings, the last one cropped in its own Slice)
    give the SavedModel's probabilities at an odd size, which pads and crops."""
    pytest.importorskip("onnxruntime")
    from kfcn.config import Config
    from kfcn.export import export_onnx, export_saved_model
    from kfcn.models import build_fcn, make_info

    info = make_info(variant, Config())
    model = build_fcn(variant, len(info["class_names"]), backbone_weights="none", widths="small")
    image = np.random.default_rng(11).integers(0, 256, (117, 203, 3), dtype=np.uint8)
    saved = load_exported(export_saved_model(model, tmp_path / "sm", info)).segment(image)
    onnx_file = export_onnx(model, tmp_path / "m.onnx", info)
    onnx = pytest.importorskip("onnx")
    onnx.checker.check_model(str(onnx_file))  # nodes in order, every input written
    onnx_out = load_exported(onnx_file).segment(image)
    assert onnx_out[1].shape == saved[1].shape == (117, 203, len(info["class_names"]))
    np.testing.assert_allclose(onnx_out[1], saved[1], rtol=0, atol=1e-4)
    assert (onnx_out[0] == saved[0]).mean() >= 0.999
