"""`make demo` end to end, with the same commands and fewer training steps."""

import json
import re
import subprocess

import numpy as np
import pytest
from PIL import Image

from .conftest import REPO


@pytest.mark.slow
def test_make_demo_runs_the_whole_pipeline(tmp_path):
    demo = tmp_path / "demo"
    shorter = "--set train.steps_per_epoch=2 --set train.val_images=4"
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "demo",
            f"DEMO={demo}",
            f"DEMO_SET={shorter}",
            "DEMO_EPOCHS=fcn32:1 fcn16:1 fcn8:1",
            "DEMO_DATA=--size 64-96x80-128 --sbd-train 240",  # the small default images
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "demo finished" in out
    report = json.loads((demo / "evaluation" / "val.json").read_text())
    assert f"fcn8 mean IoU on the 60 val images: {100 * report['mean_iou']:.2f} %" in out
    for stage in ("fcn32", "fcn16", "fcn8"):
        assert (demo / "run" / stage / "final.keras").is_file(), stage
    assert report["num_images"] == 60
    assert 0.0 <= report["mean_iou"] <= 1.0
    assert "all_background" in report and "all-background" in out
    assert (demo / "evaluation" / "val.png").is_file()
    page = (demo / "report" / "index.html").read_text()
    pictures = re.findall(r'<img src="([^"]+)"', page)
    assert len(pictures) == 2 + 2 * 8  # charts, 8 worst and 8 best images
    assert all((demo / "report" / p).is_file() for p in pictures)
    masks = sorted((demo / "predictions").glob("*.png"))
    masks = [m for m in masks if "_overlay" not in m.name]
    assert len(masks) == 4
    ids = (demo / "records" / "val.txt").read_text().split()[:4]
    for image_id in ids:
        mask = Image.open(demo / "predictions" / f"{image_id}.png")
        source = Image.open(
            demo / "raw" / "benchmark_RELEASE" / "dataset" / "img" / f"{image_id}.jpg"
        )
        assert mask.mode == "P" and mask.size == source.size
        assert np.array(mask).max() < 21
    assert len(list((demo / "predictions").glob("*_overlay.*"))) == 4
