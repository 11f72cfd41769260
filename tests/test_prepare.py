"""`kfcn prepare` on synthetic data: exact round trip, both schemes, bad input, interruption."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from kfcn.cli import main
from kfcn.data import prepare as prepare_module
from kfcn.data import records
from kfcn.data.prepare import prepare_dataset
from kfcn.data.synthetic import write_synthetic
from kfcn.errors import DataError


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic(
        tmp_path_factory.mktemp("synth"),
        sbd_train=12,
        sbd_val=6,
        voc_extra=5,
        size=((16, 24), (20, 28)),
        seed=1,
    )


@pytest.fixture(scope="module")
def reference(synth, tmp_path_factory):
    """An uninterrupted run (scheme seed, shards of 5) that other runs must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("reference")
    prepare_dataset(synth.sbd_dir, synth.voc_dir, out, workers=1, shard_size=5)
    return out


@pytest.fixture
def damaged(synth, tmp_path):
    """A private copy of the synthetic data, to break."""
    root = tmp_path / "data"
    shutil.copytree(synth.sbd_dir.parents[1], root)
    return root / "benchmark_RELEASE" / "dataset", root / "VOCdevkit" / "VOC2012"


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def _examples(out: Path, split: str) -> list[dict]:
    shards = [str(p) for p in records.list_shards(out, split)]
    result = []
    for serialized in tf.data.TFRecordDataset(shards):
        raw = records.parse_example(serialized)
        decoded = records.decode_example(serialized)
        result.append(
            {
                "id": raw["image/id"].numpy().decode(),
                "image_bytes": raw["image/encoded"].numpy(),
                "hw": (int(raw["image/height"]), int(raw["image/width"])),
                "image": decoded["image"].numpy(),
                "label": decoded["label"].numpy(),
            }
        )
    return result


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if records.SHARD_RE.match(p.name)}


def _finished_looking(out: Path) -> list[str]:
    return sorted(
        p.name for p in out.iterdir() if records.SHARD_RE.match(p.name) or p.name == "meta.json"
    )


def _check_round_trip(out: Path, sbd: Path, voc: Path, split: str, sources: dict[str, str]):
    examples = _examples(out, split)
    assert [e["id"] for e in examples] == _lines(out / f"{split}.txt")
    for e in examples:
        if sources[e["id"]] == "sbd":
            image_path = sbd / "img" / f"{e['id']}.jpg"
            mat = scipy.io.loadmat(sbd / "cls" / f"{e['id']}.mat")
            expected = mat["GTcls"]["Segmentation"][0, 0]
        else:
            image_path = voc / "JPEGImages" / f"{e['id']}.jpg"
            expected = np.array(Image.open(voc / "SegmentationClass" / f"{e['id']}.png"))
        assert e["image_bytes"] == image_path.read_bytes()
        assert e["label"].dtype == np.uint8 and np.array_equal(e["label"], expected)
        assert e["hw"] == expected.shape == e["image"].shape[:2]
        assert np.array_equal(e["image"], np.asarray(Image.open(image_path)))
    return examples


def test_seed_round_trip_is_exact(synth, reference):
    sbd, voc = synth
    sbd_train, sbd_val = _lines(sbd / "train.txt"), _lines(sbd / "val.txt")
    trainval = _lines(voc / "ImageSets/Segmentation/trainval.txt")
    sources = {i: "sbd" for i in sbd_train + sbd_val}
    sources.update({i: "voc" for i in trainval if i not in sources})
    val = _check_round_trip(reference, sbd, voc, "val", sources)
    train = _check_round_trip(reference, sbd, voc, "train", sources)
    assert [e["id"] for e in val] == sbd_val  # fewer than 1,200: all of SBD val, in file order
    expected_train = sorted(set(sbd_train) | (set(trainval) - set(sbd_train + sbd_val)))
    assert [e["id"] for e in train] == expected_train
    voc_only = [e for e in train if sources[e["id"]] == "voc"]
    assert len(voc_only) == 5 and all(255 in e["label"] for e in voc_only)
    shared = set(trainval) & set(sbd_train)
    assert shared and all(255 not in e["label"] for e in train if e["id"] in shared)


def test_voc12val_round_trip_takes_shared_labels_from_voc(synth, tmp_path):
    sbd, voc = synth
    meta = prepare_dataset(sbd, voc, tmp_path, scheme="voc12val", workers=1, shard_size=7)
    sbd_ids = _lines(sbd / "train.txt") + _lines(sbd / "val.txt")
    voc_train = _lines(voc / "ImageSets/Segmentation/train.txt")
    voc_val = _lines(voc / "ImageSets/Segmentation/val.txt")
    trainval = _lines(voc / "ImageSets/Segmentation/trainval.txt")
    sources = {i: "sbd" for i in sbd_ids}
    sources.update({i: "voc" for i in trainval})
    val = _check_round_trip(tmp_path, sbd, voc, "val", sources)
    train = _check_round_trip(tmp_path, sbd, voc, "train", sources)
    assert [e["id"] for e in val] == voc_val
    assert [e["id"] for e in train] == sorted((set(sbd_ids) | set(voc_train)) - set(voc_val))
    shared_train = [e for e in train if e["id"] in set(sbd_ids) & set(trainval)]
    assert shared_train and all(255 in e["label"] for e in shared_train)
    assert meta["scheme"] == "voc12val"
    assert meta["label_sources"]["val"] == {"sbd": 0, "voc": len(voc_val)}


def test_meta_json_and_shard_names(synth, reference):
    meta = records.read_meta(reference)
    assert meta == json.loads((reference / "meta.json").read_text())
    assert meta["scheme"] == "seed" and meta["skipped"] == []
    assert meta["class_names"][0] == "background" and meta["num_classes"] == 21
    assert meta["palette"][15] == [192, 128, 128] and len(meta["palette"]) == 21
    assert meta["sbd_dir"] == str(synth.sbd_dir.resolve())
    assert meta["voc_dir"] == str(synth.voc_dir.resolve())
    assert meta["kfcn_version"]
    for split in ("train", "val"):
        count = meta["counts"][split]
        assert count == len(_lines(reference / f"{split}.txt"))
        n = math.ceil(count / 5)
        assert meta["shards"][split] == [records.shard_name(split, i, n) for i in range(n)]
        assert [p.name for p in records.list_shards(reference, split)] == meta["shards"][split]
    assert meta["counts"] == {"train": 17, "val": 6}
    assert sum(meta["label_sources"]["train"].values()) == 17


def test_parallel_workers_write_the_same_bytes(synth, reference, tmp_path):
    prepare_dataset(synth.sbd_dir, synth.voc_dir, tmp_path, workers=2, shard_size=5)
    assert _shard_bytes(tmp_path) == _shard_bytes(reference)
    for name in ("train.txt", "val.txt", "meta.json"):
        assert (tmp_path / name).read_bytes() == (reference / name).read_bytes()


def test_seed_validates_on_the_first_1200_sbd_val_ids(tmp_path):
    ds = write_synthetic(tmp_path / "d", sbd_train=3, sbd_val=1203, voc_extra=2, size=(8, 8))
    meta = prepare_dataset(*ds, tmp_path / "out", workers=1)
    sbd_val = _lines(ds.sbd_dir / "val.txt")
    assert _lines(tmp_path / "out" / "val.txt") == sbd_val[:1200]
    train = _lines(tmp_path / "out" / "train.txt")
    assert set(sbd_val[1200:]) <= set(train) and len(train) == 3 + 3 + 2
    assert meta["counts"] == {"train": 8, "val": 1200}
    assert meta["shards"]["val"] == ["val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
    assert [e["id"] for e in _examples(tmp_path / "out", "val")] == sbd_val[:1200]


# --- bad input ----------------------------------------------------------------------------------


def _first(sbd: Path, voc: Path, kind: str) -> str:
    """An id of the seed train split whose label comes from `kind`."""
    sbd_ids = set(_lines(sbd / "train.txt"))
    if kind == "sbd":
        return sorted(sbd_ids)[0]
    trainval = _lines(voc / "ImageSets/Segmentation/trainval.txt")
    return sorted(set(trainval) - sbd_ids - set(_lines(sbd / "val.txt")))[0]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _break(kind: str, sbd: Path, voc: Path) -> tuple[Path, str]:
    """Damage one sample; return the file the error must name and the problem it must state."""
    s, v = _first(sbd, voc, "sbd"), _first(sbd, voc, "voc")
    if kind == "missing image":
        path = sbd / "img" / f"{s}.jpg"
        path.unlink()
        return path, "image file missing"
    if kind == "missing label":
        path = voc / "SegmentationClass" / f"{v}.png"
        path.unlink()
        return path, "label file missing"
    if kind == "truncated jpeg":
        path = voc / "JPEGImages" / f"{v}.jpg"
        _truncate(path)
        return path, "unreadable or truncated JPEG"
    if kind == "size mismatch":
        path = voc / "SegmentationClass" / f"{v}.png"
        label = np.array(Image.open(path))
        Image.fromarray(label[:-1], mode="L").save(path)
        return path, "label is"
    if kind == "value out of range":
        path = sbd / "cls" / f"{s}.mat"
        seg = scipy.io.loadmat(path)["GTcls"]["Segmentation"][0, 0].copy()
        seg[0, 0] = 42
        scipy.io.savemat(path, {"GTcls": {"Segmentation": seg}})
        return path, "label values 42 out of range"
    if kind == "no GTcls.Segmentation":
        path = sbd / "cls" / f"{s}.mat"
        scipy.io.savemat(path, {"GTinst": {"Segmentation": np.zeros((3, 3), np.uint8)}})
        return path, "no GTcls.Segmentation"
    raise AssertionError(kind)


BAD = [
    "missing image",
    "missing label",
    "truncated jpeg",
    "size mismatch",
    "value out of range",
    "no GTcls.Segmentation",
]


@pytest.mark.parametrize("kind", BAD)
def test_bad_sample_stops_the_run_and_names_the_file(damaged, tmp_path, kind):
    sbd, voc = damaged
    path, problem = _break(kind, sbd, voc)
    out = tmp_path / "out"
    out.mkdir()
    (out / "meta.json").write_text('{"scheme": "seed"}')  # stale, from some earlier run
    with pytest.raises(DataError) as info:
        prepare_dataset(sbd, voc, out, workers=1)
    message = str(info.value)
    assert message.startswith(f"{path}: {problem}") and "\n" not in message
    assert _finished_looking(out) == []
    assert not list(out.glob(".*.tmp"))


def test_skip_bad_skips_and_lists_them(damaged, tmp_path, reference):
    sbd, voc = damaged
    broken = [_break(kind, sbd, voc)[0] for kind in ("truncated jpeg", "value out of range")]
    meta = prepare_dataset(sbd, voc, tmp_path, workers=1, shard_size=5, skip_bad=True)
    skipped = {entry["id"]: entry for entry in meta["skipped"]}
    assert set(skipped) == {p.stem for p in broken}
    for path in broken:
        assert skipped[path.stem]["problem"].startswith(str(path))
        assert skipped[path.stem]["split"] == "train"
    train = _lines(tmp_path / "train.txt")
    assert meta["counts"]["train"] == len(train) == 17 - 2
    assert not set(skipped) & set(train)
    assert [e["id"] for e in _examples(tmp_path, "train")] == train
    # the same ids went to the same shards as without skipping, so the count of shards is kept
    assert meta["shards"] == records.read_meta(reference)["shards"]
    # A re-run without --skip-bad must not reuse the shards that skipped samples: it stops.
    with pytest.raises(DataError, match="unreadable or truncated JPEG"):
        prepare_dataset(sbd, voc, tmp_path, workers=1, shard_size=5)
    assert not (tmp_path / "meta.json").exists()


# --- interruption and re-runs -------------------------------------------------------------------


def test_interrupted_run_resumes_to_identical_records(synth, reference, tmp_path, monkeypatch):
    real = prepare_module.encode_label_png
    calls = []

    def flaky(label):
        calls.append(1)
        if len(calls) == 8:  # in the second shard of train
            raise KeyboardInterrupt
        return real(label)

    monkeypatch.setattr(prepare_module, "encode_label_png", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(synth.sbd_dir, synth.voc_dir, tmp_path, workers=1, shard_size=5)
    assert _finished_looking(tmp_path) == ["train-00000-of-00004.tfrecord"]
    assert not list(tmp_path.glob(".*.tmp"))
    first = tmp_path / "train-00000-of-00004.tfrecord"
    stamp = first.stat().st_mtime_ns, first.stat().st_ino
    monkeypatch.setattr(prepare_module, "encode_label_png", real)
    prepare_dataset(synth.sbd_dir, synth.voc_dir, tmp_path, workers=1, shard_size=5)
    assert _shard_bytes(tmp_path) == _shard_bytes(reference)
    assert (first.stat().st_mtime_ns, first.stat().st_ino) == stamp, "finished shard was kept"


def test_rerun_rewrites_damaged_shards_and_drops_other_shard_counts(synth, reference, tmp_path):
    sbd, voc = synth
    prepare_dataset(sbd, voc, tmp_path, workers=1, shard_size=4)
    assert len(records.list_shards(tmp_path, "train")) == 5
    prepare_dataset(sbd, voc, tmp_path, workers=1, shard_size=5)
    assert _shard_bytes(tmp_path) == _shard_bytes(reference)  # no 5-shard leftovers
    shard = tmp_path / "train-00001-of-00004.tfrecord"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    tmp = tmp_path / ".train-00002-of-00004.tfrecord.tmp"
    tmp.write_bytes(b"half a shard")
    prepare_dataset(sbd, voc, tmp_path, workers=1, shard_size=5)
    assert _shard_bytes(tmp_path) == _shard_bytes(reference)
    assert not tmp.exists()


def test_changed_source_file_rewrites_its_shard(damaged, tmp_path):
    sbd, voc = damaged
    prepare_dataset(sbd, voc, tmp_path, workers=1, shard_size=5)
    image_id = _first(sbd, voc, "voc")
    path = voc / "SegmentationClass" / f"{image_id}.png"
    label = np.array(Image.open(path))
    label[label == 255] = 0
    Image.fromarray(label, mode="L").save(path)
    prepare_dataset(sbd, voc, tmp_path, workers=1, shard_size=5)
    example = next(e for e in _examples(tmp_path, "train") if e["id"] == image_id)
    assert np.array_equal(example["label"], label)


def test_sigkill_mid_run_then_rerun_gives_identical_shards(tmp_path):
    ds = write_synthetic(tmp_path / "d", sbd_train=300, sbd_val=10, voc_extra=10, size=(48, 64))
    expected = tmp_path / "expected"
    prepare_dataset(*ds, expected, workers=1, shard_size=10)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "kfcn.cli", "prepare", "--sbd-dir", str(ds.sbd_dir)]
    command += ["--voc-dir", str(ds.voc_dir), "--out", str(out), "--workers", "1"]
    command += ["--shard-size", "10"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    try:
        while not (out.is_dir() and any(records.SHARD_RE.match(p.name) for p in out.iterdir())):
            assert process.poll() is None, "prepare ended before writing its first shard"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert not (out / "meta.json").exists(), "the kill came after the run had finished"
    written = _shard_bytes(out)
    reference = _shard_bytes(expected)
    assert 0 < len(written) < len(reference)
    for name, data in written.items():
        assert data == reference[name], f"{name} looks finished but is not"
    prepare_dataset(*ds, out, workers=1, shard_size=10)
    assert _shard_bytes(out) == reference
    assert not list(out.glob(".*.tmp"))


# --- command line -------------------------------------------------------------------------------


def _cli(*args: str):
    return CliRunner().invoke(main, ["prepare", *args])


def test_cli_prepare_writes_and_reports(synth, reference, tmp_path):
    result = _cli(
        "--sbd-dir", str(synth.sbd_dir), "--voc-dir", str(synth.voc_dir), "--out", str(tmp_path),
        "--workers", "1", "--shard-size", "5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "train: 17 records in 4 shard(s)" in result.stdout
    assert _shard_bytes(tmp_path) == _shard_bytes(reference)


def test_cli_prepare_bad_sample_is_one_line_and_exit_1(damaged, tmp_path):
    sbd, voc = damaged
    path, problem = _break("truncated jpeg", sbd, voc)
    args = ["--sbd-dir", str(sbd), "--voc-dir", str(voc), "--out", str(tmp_path), "--workers", "1"]
    result = _cli(*args)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("kfcn: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"kfcn: error: {path}: {problem}")
    result = _cli(*args, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad sample(s)" in result.stdout


def test_cli_prepare_missing_dataset_explains_where_to_get_it(tmp_path):
    result = _cli("--sbd-dir", str(tmp_path / "nope"), "--voc-dir", str(tmp_path), "--out", "x")
    assert result.exit_code == 1
    assert "home.bharathh.info/pubs/codes/SBD/download.html" in result.stderr
    assert not Path("x").exists()


def test_cli_prepare_help_explains_the_schemes():
    result = _cli("--help")
    assert result.exit_code == 0
    for text in ("first 1,200 ids of SBD val.txt", "train_aug", "label from SBD", "label from VOC"):
        assert text in result.output


def test_a_reader_process_crash_names_the_sample_that_caused_it():
    """A sample that kills its worker is reported by its own files (not the oldest pending
    batch) and as an ordinary bad sample, so --skip-bad can skip it; the others load."""
    from kfcn.data.prepare import _Loader
    from kfcn.data.sources import Sample

    from .crashing_reader import CRASH_ID, load_or_die

    samples = [Sample(f"s{i}", "sbd", f"img/s{i}.jpg", f"cls/s{i}.mat") for i in range(20)]
    with _Loader(2, load_or_die) as loader:
        results = dict((sample.id, loaded) for sample, loaded in loader.load(samples))
    assert list(results) == [s.id for s in samples]
    bad = results.pop(CRASH_ID)
    assert isinstance(bad, DataError)
    assert f"img/{CRASH_ID}.jpg" in str(bad) and f"cls/{CRASH_ID}.mat" in str(bad)
    assert results == {name: name.upper() for name in results}
