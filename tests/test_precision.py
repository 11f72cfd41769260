"""--precision for predict and evaluate: bfloat16 agrees with float32, and clear errors."""

import subprocess
import sys

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kfcn import inference
from kfcn.cli import main
from kfcn.devices import Gpu
from kfcn.errors import ConfigError
from kfcn.evaluate import evaluate_model, format_table
from kfcn.models.io import load_model, model_precision, with_precision
from kfcn.padding import predict_classes

from .shards import write_shards
from .toy_trained import NUM_CLASSES, save_trained_toy, toy_samples, trained_toy


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    return save_trained_toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture
def bf16_machine(monkeypatch):
    """Any CPU runs bfloat16 (emulated where it lacks the instructions); let the check pass."""
    monkeypatch.setattr(inference, "cpu_has_bfloat16", lambda: True)


def test_bfloat16_masks_agree_with_float32_on_99_percent_of_pixels():
    model = trained_toy()
    images, labels = toy_samples(16, seed=5)
    valid = labels != 255
    fp32 = np.stack(predict_classes(model, list(images)))
    assert np.mean(fp32[valid] == labels[valid]) > 0.9  # the toy model did learn
    bf16_model = with_precision(model, "bfloat16")
    bf16 = np.stack(predict_classes(bf16_model, list(images)))
    assert np.mean(bf16 == fp32) >= 0.99
    assert model_precision(bf16_model) == "bfloat16" and model_precision(model) == "float32"


def test_bfloat16_keeps_input_and_logits_float32(toy_file):
    model, _ = load_model(toy_file, "bfloat16")
    assert model.get_layer("conv3").kernel.dtype == "bfloat16"  # half the weight memory
    assert model.get_layer("preprocess").compute_dtype == "float32"
    assert model.get_layer("logits").compute_dtype == "float32"
    assert model.output.dtype == "float32"
    # The same weights, rounded to bfloat16.
    reference = trained_toy().get_layer("conv3").kernel.numpy()
    loaded = model.get_layer("conv3").kernel.numpy().astype(np.float32)
    np.testing.assert_allclose(loaded, reference, rtol=2**-8)
    with pytest.raises(ValueError, match="precision 'float64' is unknown"):
        load_model(toy_file, "float64")


def test_evaluate_bfloat16_moves_mean_iou_by_at_most_0_2_points(toy_file, tmp_path, bf16_machine):
    write_shards(tmp_path, "val", 8, size=(48, 64), num_classes=NUM_CLASSES, seed=7)
    fp32 = evaluate_model(toy_file, tmp_path, "val", batch_size=4)
    bf16 = evaluate_model(toy_file, tmp_path, "val", batch_size=4, precision="bfloat16")
    assert fp32["mean_iou"] > 0.5
    assert abs(bf16["mean_iou"] - fp32["mean_iou"]) <= 0.002
    assert (fp32["precision"], bf16["precision"]) == ("float32", "bfloat16")
    assert "precision: bfloat16" in format_table(bf16)


def test_unsupported_precisions_are_clear_errors(toy_file, monkeypatch, tmp_path):
    monkeypatch.setattr(inference, "visible_gpus", lambda: [])
    monkeypatch.setattr(inference, "cpu_has_bfloat16", lambda: False)
    with pytest.raises(ConfigError, match="float16 needs a GPU .*use --precision float32"):
        inference.check_precision("float16")
    with pytest.raises(ConfigError, match="bfloat16 needs a GPU or a CPU with bfloat16"):
        inference.check_precision("bfloat16")
    with pytest.raises(ConfigError, match="expected one of float32, bfloat16, float16"):
        inference.check_precision("int4")
    assert inference.check_precision("float32") == "float32"
    monkeypatch.setattr(inference, "visible_gpus", lambda: [Gpu(0, "NVIDIA H200", (9, 0))])
    assert inference.check_precision("float16") == "float16"
    assert inference.check_precision("bfloat16") == "bfloat16"

    monkeypatch.setattr(inference, "visible_gpus", lambda: [])
    Image.fromarray(toy_samples(1, seed=1)[0][0]).save(tmp_path / "a.png")
    runner = CliRunner()
    args = ["predict", str(tmp_path / "a.png"), "--model", str(toy_file), "--out"]
    result = runner.invoke(main, [*args, str(tmp_path / "o"), "--precision", "float16"])
    assert result.exit_code == 1
    assert "kfcn: error: --precision float16 needs a GPU" in result.output
    result = runner.invoke(main, [*args, str(tmp_path / "o"), "--precision", "float64"])
    assert result.exit_code == 2 and "'float32', 'bfloat16', 'float16'" in result.output


def test_cli_predict_bfloat16_writes_the_float32_masks(toy_file, tmp_path, bf16_machine):
    images = toy_samples(3, seed=2)[0]
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"im{i}.png")
    runner = CliRunner()
    masks = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / precision
        args = ["predict", str(tmp_path), "--model", str(toy_file), "--out", str(out)]
        result = runner.invoke(main, [*args, "--precision", precision])
        assert result.exit_code == 0, result.output
        masks[precision] = np.stack([np.array(Image.open(out / f"im{i}.png")) for i in range(3)])
    assert np.mean(masks["float32"] == masks["bfloat16"]) >= 0.99
    keras.backend.clear_session()


def test_importing_the_cli_does_not_import_tensorflow():
    code = "import sys, kfcn.cli; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["False", "False"], done.stderr
    # The program (`kfcn.cli.run`) keeps click's exit status and messages.
    argv = [sys.executable, "-m", "kfcn.cli", "predict", "a.jpg", "--model", "m.keras"]
    done = subprocess.run([*argv, "--out", "o", "--precision", "float64"], capture_output=True)
    assert done.returncode == 2 and b"'float64' is not one of" in done.stderr


GRAVITON2 = (
    "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 "
    "atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\n"
)
GRAVITON3 = (
    "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 "
    "atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve "
    "asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng\n"
)
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"


@pytest.mark.parametrize(
    "cpuinfo, machine, expected",
    [
        (SAPPHIRE_RAPIDS, "x86_64", True),
        (SAPPHIRE_RAPIDS.replace(" avx512_bf16", ""), "x86_64", True),  # AMX-BF16 alone
        (SKYLAKE, "x86_64", False),
        (SKYLAKE, "AMD64", False),
        (GRAVITON3, "aarch64", True),
        (GRAVITON3.replace(" bf16", ""), "aarch64", True),  # SVE's BF16 alone
        (GRAVITON3, "arm64", True),
        (GRAVITON2, "aarch64", False),
        (SAPPHIRE_RAPIDS, "aarch64", False),  # x86 flags say nothing about an Arm CPU
        (GRAVITON3, "x86_64", False),
        (GRAVITON3 + GRAVITON2.replace("processor\t: 0", "processor\t: 1"), "aarch64", False),
        (GRAVITON3, "ppc64le", False),
        ("", "x86_64", False),
    ],
)
def test_cpu_bfloat16_is_read_from_x86_flags_and_arm_features(cpuinfo, machine, expected):
    assert inference.cpu_has_bfloat16(cpuinfo, machine) is expected


def test_bfloat16_needs_ampere_or_newer_gpus():
    problem = inference.precision_problem
    v100, t4 = Gpu(0, "Tesla V100-SXM2-16GB", (7, 0)), Gpu(1, "Tesla T4", (7, 5))
    assert problem("bfloat16", [v100], False) == (
        "needs compute capability 8.0 (Ampere) or newer; GPU:0 (Tesla V100-SXM2-16GB) has 7.0"
    )
    assert "GPU:1 (Tesla T4) has 7.5" in problem("bfloat16", [Gpu(0, "A100", (8, 0)), t4], True)
    assert problem("bfloat16", [Gpu(0, "NVIDIA H200", (9, 0))], False) is None
    assert problem("bfloat16", [Gpu(0, "", None)], False) is None  # capability unknown: try it
    assert problem("float16", [v100], False) is None
    assert problem("float32", [], False) is None
    assert problem("bfloat16", [], True) is None
    assert problem("float16", [], True) == "needs a GPU (TensorFlow sees none here)"


def test_cli_refuses_bfloat16_on_a_pre_ampere_gpu_in_one_line(toy_file, tmp_path, monkeypatch):
    v100 = Gpu(0, "Tesla V100-SXM2-16GB", (7, 0))
    monkeypatch.setattr(inference, "visible_gpus", lambda: [v100])
    monkeypatch.setattr(inference, "cpu_has_bfloat16", lambda: True)  # the GPU computes, not it
    Image.fromarray(toy_samples(1, seed=1)[0][0]).save(tmp_path / "a.png")
    args = ["predict", str(tmp_path / "a.png"), "--model", str(toy_file), "--out"]
    result = CliRunner().invoke(main, [*args, str(tmp_path / "o"), "--precision", "bfloat16"])
    assert result.exit_code == 1
    errors = result.stderr.strip().splitlines()
    assert errors == [
        "kfcn: error: --precision bfloat16 needs compute capability 8.0 (Ampere) or newer; "
        "GPU:0 (Tesla V100-SXM2-16GB) has 7.0: use --precision float32 or float16"
    ]
    assert not (tmp_path / "o").exists()


def test_mixed_precision_is_float16_on_gpus_and_bfloat16_only_on_cpus_that_have_it(monkeypatch):
    from kfcn import train

    assert train.mixed_policy(gpu=True, cpu_bfloat16=False) == "mixed_float16"  # any GPU
    assert train.mixed_policy(gpu=False, cpu_bfloat16=True) == "mixed_bfloat16"
    with pytest.raises(
        ConfigError, match="--mixed-precision .* needs a GPU or a CPU with bfloat16"
    ):
        train.mixed_policy(gpu=False, cpu_bfloat16=False)
    monkeypatch.setattr(train, "cpu_has_bfloat16", lambda: False)
    monkeypatch.setattr(train.tf.config, "list_physical_devices", lambda kind=None: [])
    with pytest.raises(ConfigError, match="train without --mixed-precision"):
        train._set_precision(True)
    assert train._set_precision(False) == "float32"
