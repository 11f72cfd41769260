"""The benchmark code paths at toy sizes: every section runs and writes well-formed results.

Timings are not checked (they depend on the machine); the structure and positivity of every
number are, so a change that breaks a benchmark fails here rather than in `make bench`.
"""

import json

import pytest
from bench import model_bench, run_all

from kfcn.models import build_fcn


def _positive_spread(stats: dict) -> None:
    assert stats["n"] >= 1
    assert 0 < stats["min"] <= stats["median"] <= stats["max"]


def test_flop_count_matches_vgg16_by_hand():
    model = build_fcn("fcn32", num_classes=21, backbone_weights="none")
    flops = model_bench.count_flops(model, 64, 64)
    per_layer = flops["per_layer_forward_gflop"]
    # block1_conv2: 3x3, 64 -> 64 channels on the full 64x64 grid.
    assert per_layer["block1_conv2"] == pytest.approx(2 * 9 * 64 * 64 * 64 * 64 / 1e9)
    # fc6: 7x7, 512 -> 4096 on the 2x2 grid after five poolings.
    assert per_layer["fc6"] == pytest.approx(2 * 49 * 512 * 4096 * 4 / 1e9)
    # upscore32 (transposed, kernel 64) is counted on its 2x2 input grid.
    assert per_layer["upscore32"] == pytest.approx(2 * 64 * 64 * 21 * 21 * 4 / 1e9)
    forward = sum(per_layer.values())
    assert flops["forward_gflop"] == pytest.approx(forward)
    # Backward = 2x forward, less block1_conv1's input gradient and the fixed upsampling's
    # weight gradient.
    expected = 3 * forward - per_layer["block1_conv1"] - per_layer["upscore32"]
    assert flops["train_gflop"] == pytest.approx(expected)


@pytest.mark.slow
def test_run_all_at_toy_sizes_writes_every_section(tmp_path):
    out = tmp_path / "results.json"
    args = run_all.parse_args(
        [
            "--size=64",
            "--widths=small",  # the sections' code paths, not VGG16's size
            "--variants=fcn8",
            "--batches=1",
            "--modes=default",
            "--warmup=0",
            "--repeats=1",
            "--matmul=64",
            "--conv=8,16,1",
            "--predict-size=40,50",
            "--predict-batch=2",
            "--pipeline-records=8",
            "--pipeline-steps=1",
            "--prepare-images=6",
            "--rss=6",
            "--rss-image-size=32,48",
            f"--out={out}",
        ]
    )
    run_all.run(args)
    result = json.loads(out.read_text())

    assert result["machine"]["cores"] >= 1 and result["machine"]["tensorflow"]
    assert result["peak"]["fp32_conv_gflops"] > 0
    for row in result["peak"]["rows"]:
        _positive_spread(row["gflops"])

    (train,) = result["train"]
    assert (train["variant"], train["batch"], train["mode"], train["size"]) == (
        "fcn8",
        1,
        "default",
        64,
    )
    assert train["widths"] == "small"
    _positive_spread(train["images_per_s"])
    _positive_spread(train["gflops"])
    assert train["ratio_to_conv_peak"] > 0

    predict = result["predict"]
    assert predict["padded"] == [64, 64] and predict["batch"] == 2
    _positive_spread(predict["images_per_s"])
    assert predict["latency_s"]["median"] > 0

    pipe = result["pipeline"]
    assert pipe["kfcn_bytes"] > 0 and pipe["raw_bytes"] > 0
    assert {row["pipeline"] for row in pipe["rows"]} == {
        "kfcn random (scale+crop+flip)",
        "kfcn resize_pad (+flip)",
        "raw arrays resize_with_pad",
    }
    for row in pipe["rows"]:
        _positive_spread(row["images_per_s"])
        assert row["feeds_train_steps_x"] > 0

    prep = result["prepare"]
    assert prep["throughput"]["images"] >= 6 and prep["throughput"]["output_bytes"] > 0
    _positive_spread(prep["throughput"]["images_per_s"])
    (rss,) = prep["rss"]
    assert rss["images"] >= 6 and rss["main_peak_rss_mib"] > 0


def test_onnx_latency_bench_times_both_formats(tmp_path):
    pytest.importorskip("onnxruntime")
    from bench import onnx_latency_bench

    out = tmp_path / "onnx.json"
    onnx_latency_bench.main(
        ["--widths", "small", "--variant", "fcn32", "--size", "64x96", "--repeats", "2"]
        + ["--out", str(out)]
    )
    result = json.loads(out.read_text())
    assert set(result["latency_ms"]) == {"SavedModel", "ONNX"}
    assert all(ms > 0 for ms in result["latency_ms"].values())
    ratio = result["latency_ms"]["ONNX"] / result["latency_ms"]["SavedModel"]
    assert result["onnx_vs_saved_model_latency"] == pytest.approx(ratio)
    assert result["size"] == "64x96" and result["backbone"] == "vgg16"
