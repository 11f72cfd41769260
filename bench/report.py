"""Markdown tables from a results file: python -m bench.report bench/results/cpu.json"""

from __future__ import annotations

import json
import sys


def _s(stats: dict, digits: int = 1) -> str:
    return f"{stats['median']:.{digits}f} ({stats['min']:.{digits}f}–{stats['max']:.{digits}f})"


def render(result: dict) -> str:
    peak = result["peak"]["fp32_conv_gflops"]
    lines = ["| Measurement | Median (min–max) | Ratio to 3×3 conv peak |", "|---|---|---|"]
    for row in result["peak"]["rows"]:
        lines.append(
            f"| peak {row['op']} {row['dtype']} | {_s(row['gflops'])} GFLOP/s "
            f"| {row['gflops']['median'] / peak:.2f} |"
        )
    for r in result.get("train", []):
        lines.append(
            f"| train {r['variant']} {r['size']}² batch {r['batch']} {r['mode']} ({r['policy']}) "
            f"| {_s(r['images_per_s'], 3)} img/s; {_s(r['gflops'])} GFLOP/s "
            f"({r['train_gflop_per_image']:.0f} GFLOP/img) | {r['ratio_to_conv_peak']:.2f} |"
        )
    p = result.get("predict")
    if p:
        h, w = p["image"]
        lat = p["latency_s"]
        lines.append(
            f"| predict {p['variant']} {w}×{h} (padded {p['padded'][1]}×{p['padded'][0]}), "
            f"latency batch 1 | {lat['median']:.2f} ({lat['min']:.2f}–{lat['max']:.2f}) s "
            f"| {p['latency_ratio_to_conv_peak']:.2f} |"
        )
        lines.append(
            f"| predict {p['variant']} throughput batch {p['batch']} | {_s(p['images_per_s'], 2)}"
            f" img/s; {_s(p['gflops'])} GFLOP/s | {p['ratio_to_conv_peak']:.2f} |"
        )
    q = result.get("pipeline")
    if q:
        for row in q["rows"]:
            feeds = row.get("feeds_train_steps_x")
            lines.append(
                f"| pipeline {row['pipeline']}, threads {row['threads']} "
                f"| {_s(row['images_per_s'])} img/s"
                + (f"; {feeds:.0f}× the train rate" if feeds else "")
                + " | – |"
            )
        lines.append(
            f"| dataset bytes ({q['records']} images, {q['source']}) | kfcn "
            f"{q['kfcn_bytes'] / 1e6:.1f} MB, raw arrays {q['raw_bytes'] / 1e6:.1f} MB "
            f"({q['size_ratio_raw_over_kfcn']:.1f}×) | – |"
        )
    r = result.get("prepare")
    if r:
        t = r["throughput"]
        lines.append(
            f"| prepare {t['source']}, {t['images']} images, {t['workers']} workers "
            f"| {_s(t['images_per_s'])} img/s; {t['output_bytes'] / 1e6:.1f} MB written from "
            f"{t['input_bytes'] / 1e6:.1f} MB | – |"
        )
        for row in r["rss"]:
            lines.append(
                f"| prepare peak RSS, {row['images']} synthetic images "
                f"| {row['main_peak_rss_mib']:.0f} MiB | – |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(json.load(open(sys.argv[1]))))
