"""Hardware yardstick: dense matmul and 3x3 convolution throughput with TensorFlow, in GFLOP/s.

    python -m bench.peak_bench [--matmul 2048] [--conv 64,256,8] [--repeats 5]

FLOPs: matmul n x n by n x n = 2 n^3; 3x3 "same" conv = 2 * 9 * Cin * Cout * H * W * B.
Both run as graph functions (the path Keras takes), fp32; on a GPU also bf16 and fp16.
"""

from __future__ import annotations

import argparse

import tensorflow as tf

from bench.common import describe_machine, fmt, machine_info, rate_stats, time_calls


def _dtypes() -> list[tf.DType]:
    if tf.config.list_physical_devices("GPU"):
        return [tf.float32, tf.bfloat16, tf.float16]
    return [tf.float32]


def matmul_peak(n: int, warmup: int, repeats: int, dtype=tf.float32) -> dict:
    """GFLOP/s of an n x n matmul (the result is reduced to a scalar so the call blocks)."""
    a = tf.random.normal((n, n), dtype=tf.float32)
    b = tf.random.normal((n, n), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    step = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b)[0, :8], tf.float32)))
    times = time_calls(lambda: step().numpy(), warmup, repeats)
    return {
        "op": f"matmul {n}x{n}x{n}",
        "dtype": dtype.name,
        "gflop": 2 * n**3 / 1e9,
        "gflops": rate_stats(times, 2 * n**3 / 1e9),
    }


def conv_peak(
    size: int, channels: int, batch: int, warmup: int, repeats: int, dtype=tf.float32
) -> dict:
    """GFLOP/s of a 3x3 'same' convolution, (batch, size, size, channels) -> same shape."""
    x = tf.cast(tf.random.normal((batch, size, size, channels)), dtype)  # (B, H, W, Cin)
    w = tf.cast(tf.random.normal((3, 3, channels, channels)) * 0.05, dtype)  # (3, 3, Cin, Cout)
    step = tf.function(
        lambda: tf.reduce_sum(tf.cast(tf.nn.conv2d(x, w, 1, "SAME")[:, 0, 0, :8], tf.float32))
    )
    gflop = 2 * 9 * channels * channels * size * size * batch / 1e9
    times = time_calls(lambda: step().numpy(), warmup, repeats)
    return {
        "op": f"conv3x3 {batch}x{size}x{size}x{channels}->{channels}",
        "dtype": dtype.name,
        "gflop": gflop,
        "gflops": rate_stats(times, gflop),
    }


def run(
    matmul_n: int = 2048,
    conv: tuple[int, int, int] = (128, 256, 4),
    warmup: int = 2,
    repeats: int = 5,
) -> dict:
    """Matmul and conv peaks for every dtype this device does well; `fp32_conv_gflops` is the
    yardstick the model benchmarks divide by."""
    rows = []
    for dtype in _dtypes():
        rows.append(matmul_peak(matmul_n, warmup, repeats, dtype))
        rows.append(conv_peak(*conv, warmup, repeats, dtype))
    conv32 = next(r for r in rows if r["op"].startswith("conv") and r["dtype"] == "float32")
    mm32 = next(r for r in rows if r["op"].startswith("matmul") and r["dtype"] == "float32")
    return {
        "rows": rows,
        "fp32_conv_gflops": conv32["gflops"]["median"],
        "fp32_matmul_gflops": mm32["gflops"]["median"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matmul", type=int, default=2048, help="matrix side")
    parser.add_argument("--conv", default="128,256,4", help="spatial size,channels,batch")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {describe_machine(machine_info())}")
    conv = tuple(int(v) for v in args.conv.split(","))
    result = run(args.matmul, conv, args.warmup, args.repeats)
    for row in result["rows"]:
        print(f"{row['op']:34s} {row['dtype']:9s} {fmt(row['gflops'])} GFLOP/s")


if __name__ == "__main__":
    main()
