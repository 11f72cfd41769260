"""FCN train-step and predict throughput, with FLOPs counted from the model's layers.

    python -m bench.model_bench [--variants fcn8] [--batches 1,4] [--modes default,jit,mixed]

FLOP count (multiply-add = 2 FLOPs; biases, ReLU, pooling, the loss and the optimizer left out):
- Conv2D forward: 2 * Kh * Kw * Cin * Cout * Hout * Wout per image.
- Conv2DTranspose forward: 2 * Kh * Kw * Cin * Cout * Hin * Win per image (each input pixel
  scatters one K x K x Cout patch).
- Backward: the input gradient and the weight gradient each cost one forward; the first
  convolution (block1_conv1) needs no input gradient, and a layer with fixed weights (the bilinear
  upsampling unless `train_upsampling`) no weight gradient.
- Adam: about 10 FLOPs per trained weight, reported separately (`adam_gflop`), under 0.3% of a step.
"""

from __future__ import annotations

import argparse
import contextlib

import keras
import numpy as np
import tensorflow as tf

from bench.common import describe_machine, fmt, machine_info, rate_stats, time_calls
from kfcn.losses import MaskedSparseCrossEntropy
from kfcn.models import build_fcn
from kfcn.padding import predict_classes, predict_logits

MODES = ("default", "jit", "mixed")


def layer_shapes(model: keras.Model, height: int, width: int) -> dict[str, tuple]:
    """Each layer's (input shape, output shape) for one (height, width) image, without running it."""
    shapes = {id(model.input): (1, height, width, 3)}
    out = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        inp = layer.input
        in_shape = [shapes[id(t)] for t in inp] if isinstance(inp, list) else shapes[id(inp)]
        out_shape = tuple(layer.compute_output_shape(in_shape))
        shapes[id(layer.output)] = out_shape
        out[layer.name] = (in_shape, out_shape)
    return out


def count_flops(model: keras.Model, height: int, width: int) -> dict:
    """Forward and training FLOPs per image, per layer and in total (see the module docstring)."""
    shapes = layer_shapes(model, height, width)
    per_layer = {}
    forward = train = 0.0
    first_conv = True
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D | keras.layers.Conv2DTranspose):
            continue
        (_, h_in, w_in, c_in), (_, h_out, w_out, c_out) = shapes[layer.name]
        k_h, k_w = layer.kernel_size
        grid = h_in * w_in if isinstance(layer, keras.layers.Conv2DTranspose) else h_out * w_out
        fwd = 2.0 * k_h * k_w * c_in * c_out * grid
        backward = (0.0 if first_conv else fwd) + (fwd if layer.trainable else 0.0)
        first_conv = False
        per_layer[layer.name] = fwd
        forward += fwd
        train += fwd + backward
    trained = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return {
        "forward_gflop": forward / 1e9,
        "train_gflop": train / 1e9,
        "adam_gflop": 10 * trained / 1e9,
        "per_layer_forward_gflop": {k: v / 1e9 for k, v in per_layer.items()},
    }


@contextlib.contextmanager
def precision(mode: str):
    """The Keras dtype policy of `mode`: mixed_bfloat16 on CPU, mixed_float16 on GPU."""
    if mode != "mixed":
        yield "float32"
        return
    policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy("float32")


def parse_widths(text: str | None):
    """`--widths`: None (VGG16's), a name such as 'small', or seven comma-separated ints."""
    if text is None or not text.strip():
        return None
    if "," in text:
        return [int(w) for w in text.split(",")]
    return text.strip()


def train_step_bench(
    variant: str,
    batch: int,
    size: int,
    mode: str,
    warmup: int,
    repeats: int,
    peak: float,
    widths=None,
) -> dict:
    """Images/s and GFLOP/s of `model.train_on_batch` (forward + backward + Adam) on random data.
    `widths`: the network's `model.widths` (default VGG16's)."""
    keras.utils.set_random_seed(0)
    with precision(mode) as policy:
        model = build_fcn(variant, backbone_weights="none", widths=widths)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4),
            loss=MaskedSparseCrossEntropy(),
            jit_compile=mode == "jit",
        )
        rng = np.random.default_rng(0)
        images = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)), tf.float32)
        labels = tf.constant(rng.integers(0, 21, (batch, size, size)), tf.int32)
        flops = count_flops(model, size, size)
        times = time_calls(lambda: model.train_on_batch(images, labels), warmup, repeats)
    keras.backend.clear_session()
    gflop = flops["train_gflop"] * batch
    gflops = rate_stats(times, gflop)
    return {
        "variant": variant,
        "widths": widths,
        "batch": batch,
        "size": size,
        "mode": mode,
        "policy": policy,
        "train_gflop_per_image": flops["train_gflop"],
        "adam_gflop": flops["adam_gflop"],
        "step_s": {"median": float(np.median(times)), "min": min(times), "max": max(times)},
        "images_per_s": rate_stats(times, batch),
        "steps_per_s": rate_stats(times, 1),
        "gflops": gflops,
        "ratio_to_conv_peak": gflops["median"] / peak,
    }


def predict_bench(
    variant: str,
    height: int,
    width: int,
    batch: int,
    warmup: int,
    repeats: int,
    peak: float,
    widths=None,
) -> dict:
    """Latency of `predict_logits` on one image and throughput of `predict_classes` on `batch`
    images; FLOPs are those of the padded image (the model runs on the padded grid)."""
    keras.utils.set_random_seed(0)
    model = build_fcn(variant, backbone_weights="none", widths=widths)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    padded_h, padded_w = -(-height // 32) * 32, -(-width // 32) * 32
    flops = count_flops(model, padded_h, padded_w)["forward_gflop"]
    latency = time_calls(lambda: predict_logits(model, image), warmup, repeats)
    images = [image] * batch
    batched = time_calls(lambda: predict_classes(model, images), warmup, repeats)
    keras.backend.clear_session()
    gflops = rate_stats(batched, flops * batch)
    return {
        "variant": variant,
        "image": [height, width],
        "padded": [padded_h, padded_w],
        "forward_gflop_per_image": flops,
        "latency_s": {
            "median": float(np.median(latency)),
            "min": min(latency),
            "max": max(latency),
        },
        "latency_gflops": rate_stats(latency, flops),
        "batch": batch,
        "images_per_s": rate_stats(batched, batch),
        "gflops": gflops,
        "ratio_to_conv_peak": gflops["median"] / peak,
        "latency_ratio_to_conv_peak": rate_stats(latency, flops)["median"] / peak,
    }


def main() -> None:
    from bench import peak_bench

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="fcn8")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--modes", default="default")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--widths", help="model.widths: small, or 7 comma-separated ints")
    args = parser.parse_args()
    widths = parse_widths(args.widths)
    print(f"machine: {describe_machine(machine_info())}")
    peak = peak_bench.run()["fp32_conv_gflops"]
    print(f"3x3 conv peak: {peak:.1f} GFLOP/s")
    for variant in args.variants.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for mode in args.modes.split(","):
                r = train_step_bench(
                    variant, batch, args.size, mode, args.warmup, args.repeats, peak, widths=widths
                )
                print(
                    f"train {variant} b{batch} {mode:8s} {fmt(r['images_per_s'], 2)} img/s "
                    f"{fmt(r['gflops'])} GFLOP/s = {r['ratio_to_conv_peak']:.2f} of peak"
                )


if __name__ == "__main__":
    main()
