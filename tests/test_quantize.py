"""Quantized TFLite export: smaller files whose masks agree with the float32 file's."""

import json

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from kfcn.cli import main
from kfcn.errors import DataError, ModelError
from kfcn.export import export_model, export_tflite
from kfcn.fitting import fit_uint8
from kfcn.models import make_info

from .shards import write_shards
from .toy_trained import NUM_CLASSES, SIZE, save_trained_toy, trained_toy

pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")

AGREEMENT = {"float16": 0.99, "dynamic": 0.97, "int8": 0.9}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The trained toy network as a TFLite file of each quantization, and calibration data."""
    folder = tmp_path_factory.mktemp("tflite")
    data = folder / "records"
    write_shards(data, "train", 12, size=SIZE, num_classes=NUM_CLASSES, seed=11)
    files = {}
    for quantize in ("none", *AGREEMENT):
        files[quantize] = export_tflite(
            trained_toy(),
            folder / f"{quantize}.tflite",
            SIZE,
            make_info("toy", {"model": {"num_classes": NUM_CLASSES}}),
            quantize=quantize,
            calibration_data=data if quantize == "int8" else None,
        )
    return files, data


def _masks(path, images) -> np.ndarray:
    run = tf.lite.Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    outputs = [run(image=image[np.newaxis]) for image in images]
    assert all(o["mask"].dtype == np.uint8 for o in outputs)
    return np.concatenate([o["mask"] for o in outputs])  # (N, H, W)


def test_quantized_masks_agree_with_float32(exported, tmp_path):
    files, _ = exported
    # Images from the calibration data's distribution (not its train split).
    samples = write_shards(tmp_path, "val", 8, size=SIZE, num_classes=NUM_CLASSES, seed=12)
    images = np.stack([image for _, image, _ in samples])
    labels = np.stack([label for _, _, label in samples])
    reference = _masks(files["none"], images)
    valid = labels != 255
    assert np.mean(reference[valid] == labels[valid]) > 0.9  # the float32 file segments well
    for quantize, threshold in AGREEMENT.items():
        agreement = np.mean(_masks(files[quantize], images) == reference)
        assert agreement >= threshold, f"{quantize}: {agreement:.4f} < {threshold}"


def test_quantized_files_are_smaller_and_keep_uint8_io(exported):
    files, _ = exported
    sizes = {q: path.stat().st_size for q, path in files.items()}
    assert sizes["none"] > sizes["float16"] > sizes["dynamic"]
    assert sizes["int8"] < sizes["float16"]
    interpreter = tf.lite.Interpreter(model_path=str(files["int8"]))
    details = interpreter.get_signature_runner("serving_default")
    assert details.get_input_details()["image"]["dtype"] == np.uint8
    assert details.get_output_details()["mask"]["dtype"] == np.uint8
    tensor_types = {t["dtype"] for t in interpreter.get_tensor_details()}
    assert np.int8 in tensor_types  # activations are int8 inside
    assert json.loads(files["int8"].with_suffix(".json").read_text())["variant"] == "toy"


def test_quantize_errors(tmp_path):
    model = save_trained_toy(tmp_path)
    out = tmp_path / "m.tflite"
    with pytest.raises(ModelError, match="--quantize int8 needs --calibration-data DIR"):
        export_model(model, "tflite", out, SIZE, quantize="int8")
    with pytest.raises(ModelError, match="--calibration-data is for --quantize int8, not dynamic"):
        export_model(model, "tflite", out, SIZE, quantize="dynamic", calibration_data=tmp_path)
    with pytest.raises(ModelError, match="are for --format tflite"):
        export_model(model, "saved_model", tmp_path / "sm", quantize="float16")
    with pytest.raises(ModelError, match="--quantize 'int4': expected one of none, float16"):
        export_model(model, "tflite", out, SIZE, quantize="int4")
    with pytest.raises(DataError, match="train"):
        export_model(model, "tflite", out, SIZE, quantize="int8", calibration_data=tmp_path)
    assert not out.exists()
    result = CliRunner().invoke(
        main, ["export", "--model", str(model), "--format", "tflite", "--out", str(out),
               "--size", "48x64", "--quantize", "int8"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "kfcn: error: --quantize int8 needs --calibration-data DIR" in result.output


def test_int8_at_a_size_without_in_graph_padding(exported, tmp_path):
    """At a multiple of 32 the graph pads nothing, so the preprocessing reads the input directly;
    int8 must still see the image's colours (the classes here differ by colour alone)."""
    _, data = exported
    size = (64, 64)  # the 48x64 images fitted: resized region 48x64, mean colour below
    info = make_info("toy", {"model": {"num_classes": NUM_CLASSES}})
    files = {
        quantize: export_tflite(
            trained_toy(),
            tmp_path / f"{quantize}.tflite",
            size,
            info,
            quantize=quantize,
            calibration_data=data if quantize == "int8" else None,
        )
        for quantize in ("none", "int8")
    }
    samples = write_shards(tmp_path / "val", "val", 8, size=SIZE, num_classes=NUM_CLASSES, seed=12)
    images = np.stack([fit_uint8(image, size)[0].numpy() for _, image, _ in samples])
    reference = _masks(files["none"], images)
    agreement = np.mean(_masks(files["int8"], images) == reference)
    assert agreement >= AGREEMENT["int8"], f"int8 at 64x64: {agreement:.4f}"
