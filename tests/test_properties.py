"""Property-based tests: whole families of inputs instead of one example each.

Examples are capped (`FAST`, `SLOW`) so the module stays within a few tens of seconds: each
property still meets sizes, values and settings that no hand-written example covers.
"""

from __future__ import annotations

import dataclasses
import string
import typing
from pathlib import Path
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from kfcn import inference, metrics
from kfcn.config import WIDTH_NAMES, Config, load_config, save_config
from kfcn.errors import ConfigError, DataError
from kfcn.evaluate import evaluate_model
from kfcn.inference import TTA, Predictor
from kfcn.models import make_info, save_model
from kfcn.padding import IMAGENET_MEAN_RGB, crop_to, pad_image, pad_label, padded_size
from kfcn.palette import IGNORE_LABEL

FAST = settings(max_examples=25, deadline=None)
SLOW = settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------------------ padding


def test_padded_size_for_every_size_up_to_700():
    for size in range(1, 701):
        padded = padded_size(size)
        assert padded % 32 == 0 and size <= padded < size + 32, size
        assert int(padded_size(tf.constant(size))) == padded
        # A round trip at every height and every width (thin images keep this fast).
        for shape in ((size, 2, 3), (2, size, 3)):
            image = np.full(shape, size % 251, np.uint8)
            out, hw = pad_image(image)
            assert out.shape[:2] == (padded_size(shape[0]), padded_size(shape[1]))
            np.testing.assert_array_equal(crop_to(out, hw).numpy(), image)


@FAST
@given(
    h=st.integers(1, 700),
    w=st.integers(1, 700),
    seed=st.integers(0, 2**16),
)
def test_pad_then_crop_gives_back_the_image_and_label(h, w, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, 4, (h, w), dtype=np.uint8)
    padded, hw = pad_image(image)
    ph, pw = padded.shape[:2]
    assert (ph, pw) == (padded_size(h), padded_size(w))
    assert tuple(hw.numpy()) == (h, w)
    np.testing.assert_array_equal(crop_to(padded, hw).numpy(), image.astype(np.float32))
    outside = np.ones((ph, pw), bool)
    outside[:h, :w] = False
    np.testing.assert_allclose(
        padded.numpy()[outside], np.broadcast_to(IMAGENET_MEAN_RGB, (outside.sum(), 3))
    )
    padded_label = pad_label(label).numpy()
    np.testing.assert_array_equal(padded_label[:h, :w], label)
    assert (padded_label[outside] == IGNORE_LABEL).all()


# ------------------------------------------------------------------------------ metrics


def _direct_metrics(labels: np.ndarray, preds: np.ndarray, n: int) -> dict:
    """The FCN paper's metrics (Long et al., section 5), pixel by pixel, without bincount."""
    cm = np.zeros((n, n), np.int64)
    for t, p in zip(labels.ravel(), preds.ravel(), strict=True):
        if t != IGNORE_LABEL:
            cm[t, p] += 1
    n_ii = np.diag(cm).astype(float)
    t_i = cm.sum(axis=1).astype(float)
    union = t_i + cm.sum(axis=0) - n_ii
    out = {"cm": cm}
    if t_i.sum() == 0:
        return out
    present, scored = t_i > 0, union > 0
    iou = n_ii[scored] / union[scored]
    out.update(
        pixel_accuracy=n_ii.sum() / t_i.sum(),
        mean_accuracy=np.mean(n_ii[present] / t_i[present]),
        mean_iou=np.mean(iou),
        fw_iou=np.sum(t_i[scored] * iou) / t_i.sum(),
    )
    return out


@FAST
@given(
    n=st.integers(2, 6),
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    data=st.data(),
)
def test_metrics_match_a_direct_computation(n, shape, data):
    labels = data.draw(arrays(np.uint8, shape, elements=st.sampled_from([*range(n), 255])))
    preds = data.draw(arrays(np.uint8, shape, elements=st.integers(0, n - 1)))
    want = _direct_metrics(labels, preds, n)
    cm = metrics.ConfusionMatrix(n)
    half = shape[0] // 2
    cm.update(labels[:half], preds[:half])  # accumulating two parts = one whole
    cm.update(labels[half:], preds[half:])
    np.testing.assert_array_equal(cm.matrix, want["cm"])
    tf_cm = metrics.tf_confusion_matrix(tf.constant(labels[None]), tf.constant(preds[None]), n)
    np.testing.assert_array_equal(np.asarray(tf_cm), want["cm"])
    got = cm.scores()
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
        if key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-12), key
        else:
            assert np.isnan(got[key]), key  # nothing scored: undefined, not 0 or 1


@FAST
@given(
    matrix=arrays(
        np.int64, st.tuples(st.integers(2, 8)).map(lambda t: t * 2), elements=st.integers(0, 1000)
    )
)
def test_scores_of_random_confusion_matrices(matrix):
    n = len(matrix)
    labels = np.repeat(np.repeat(np.arange(n), n), matrix.ravel())
    preds = np.repeat(np.tile(np.arange(n), n), matrix.ravel())
    assume(labels.size > 0)
    want = _direct_metrics(labels, preds, n)
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, preds, n), matrix)
    got = metrics.scores(matrix)
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key


# ------------------------------------------------------------------------------ config


def _fields() -> list[tuple[str, dataclasses.Field, type, bool]]:
    """(key, field, base type, optional) of every config key."""
    out = []
    for section in dataclasses.fields(Config):
        cls = section.default_factory
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            args = typing.get_args(kind)
            base = next((a for a in args if a is not type(None)), kind)
            out.append((f"{section.name}.{f.name}", f, base, type(None) in args))
    return out


FIELDS = _fields()
KEYS = [key for key, *_ in FIELDS]
WORDS = st.text(string.ascii_letters + string.digits + "_-./*", min_size=1, max_size=12)


# Keys whose other values need another key set: widths other than VGG16's need random init.
NEEDS = {"model.widths": ["model.backbone_weights=none"]}
WIDTHS = st.one_of(
    st.sampled_from(WIDTH_NAMES), st.lists(st.integers(1, 10**4), min_size=7, max_size=7)
)


def _valid(key: str, f: dataclasses.Field, base: type, optional: bool) -> st.SearchStrategy:
    meta = f.metadata
    if meta.get("widths"):
        values = WIDTHS
    elif meta.get("class_weights"):
        values = st.one_of(
            st.sampled_from(["none", "median_frequency"]),
            st.lists(st.floats(0.0, 1e3), min_size=2, max_size=30).filter(lambda w: max(w) > 0),
        )
    elif "above" in meta:
        values = st.floats(meta["above"], meta["below"], exclude_min=True, exclude_max=True)
    elif "choices" in meta:
        values = st.sampled_from(meta["choices"])
    elif base is bool:
        values = st.booleans()
    elif base is int:
        low, high = meta.get("min", -(10**6)), meta.get("max", 10**6)
        step = meta.get("multiple", 1)
        values = st.integers(-(-low // step), high // step).map(lambda k: k * step)
    elif base is float:
        low, high = meta.get("min", -1e6), meta.get("max", 1e6)
        if key == "data.scale_min":
            high = 2.0  # not above the default scale_max
        if key == "data.scale_max":
            low = 0.5  # not below the default scale_min
        values = st.floats(low, high, allow_nan=False, allow_infinity=False)
    elif base is dict:
        values = st.fixed_dictionaries(
            {}, optional={s: st.lists(WORDS, max_size=3) for s in meta["keys"]}
        )
    else:
        values = WORDS
    return st.one_of(st.none(), values) if optional else values


def _invalid(key: str, f: dataclasses.Field, base: type, optional: bool) -> st.SearchStrategy:
    meta = f.metadata
    if meta.get("widths"):
        return st.one_of(
            WORDS.filter(lambda s: s not in WIDTH_NAMES and not _yaml_number_or_bool(s)),
            st.lists(st.integers(1, 99), min_size=0, max_size=6),  # too few
            st.lists(st.integers(1, 99), min_size=8, max_size=9),  # too many
            st.lists(st.integers(-99, 0), min_size=7, max_size=7),  # not positive
            st.integers(1, 99),
            st.just([True] * 7),
        )
    if meta.get("class_weights"):
        return st.one_of(
            WORDS.filter(lambda s: s not in ("none", "median_frequency")),
            st.lists(st.floats(-1e3, -0.01), min_size=1, max_size=3),  # negative
            st.just([0.0, 0.0]),  # none > 0
        )
    if "above" in meta:
        return st.one_of(
            st.floats(-1e3, meta["above"]),
            st.floats(meta["below"], 1e3),
            st.sampled_from([float("nan"), float("inf")]),
        )
    wrong = [st.lists(st.integers(), min_size=1, max_size=2)]
    if base is not str:
        wrong.append(WORDS.filter(lambda s: not _yaml_number_or_bool(s)))
    if not optional:
        wrong.append(st.none())
    if base is int:
        if "min" in meta:
            wrong.append(st.integers(-(10**6), meta["min"] - 1))
        if "max" in meta:
            wrong.append(st.integers(meta["max"] + 1, 10**6))
    if base is float:
        if "min" in meta:
            wrong.append(st.floats(-1e6, meta["min"], exclude_max=True))
        if "max" in meta:
            wrong.append(st.floats(meta["max"], 1e6, exclude_min=True))
        if "multiple" in meta:
            wrong.append(st.integers(2, 50).map(lambda k: k * meta["multiple"] + 1))
    if base is float:
        wrong.append(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    if base is int:
        wrong.append(st.floats(0.5, 1e3).filter(lambda v: v != int(v)))
    if base is bool:
        wrong.append(st.integers(2, 9))
    if "choices" in meta:
        wrong.append(WORDS.filter(lambda s: s not in meta["choices"]))
    if base is dict:
        wrong.append(st.just({"fcn64": ["block1_*"]}))
    return st.one_of(wrong)


def _yaml_number_or_bool(text: str) -> bool:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return False  # quoted when written, so read back as this string
    return value is None or isinstance(value, (int, float, bool))


def _set_text(key: str, value) -> str:
    """`--set key=value` with the value written as YAML, as a user types it."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True)
    return f"{key}={text.removesuffix(chr(10)).removesuffix('...').strip()}"


PER_KEY = settings(max_examples=12, deadline=None)


@pytest.mark.parametrize("field", FIELDS, ids=KEYS)
@PER_KEY
@given(data=st.data())
def test_every_valid_set_value_is_accepted_and_saved(tmp_path_factory, field, data):
    key, f, base, optional = field
    value = data.draw(_valid(key, f, base, optional))
    cfg = load_config(None, [*NEEDS.get(key, []), _set_text(key, value)])
    section, name = key.split(".")
    stored = getattr(getattr(cfg, section), name)
    if base is dict:
        assert stored == {s: value.get(s, []) for s in f.metadata["keys"]}
    elif base is float and value is not None:
        assert stored == pytest.approx(value)
    else:
        assert stored == value
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg  # the saved file reloads as the same config


@pytest.mark.parametrize("field", FIELDS, ids=KEYS)
@PER_KEY
@given(data=st.data())
def test_every_invalid_set_value_is_one_clean_error(field, data):
    key, f, base, optional = field
    value = data.draw(_invalid(key, f, base, optional))
    text = _set_text(key, value)
    with pytest.raises(ConfigError) as caught:
        load_config(None, [*NEEDS.get(key, []), text])
    message = str(caught.value)
    assert "\n" not in message and key in message, message


# ------------------------------------------------------------------------------ TTA


def _pointwise_model(num_classes: int):
    """Stands in for a network whose logits depend on each pixel alone: a flip or a resize of the
    input then commutes with the network, so TTA must undo it exactly."""
    weights = np.random.default_rng(num_classes).normal(size=(3, num_classes)).astype(np.float32)

    def logits(model, view):
        return np.asarray(tf.convert_to_tensor(view, tf.float32)) @ weights / 64.0

    stand_in = mock.Mock()
    stand_in.output.shape = (None, None, None, num_classes)
    return stand_in, logits


@FAST
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    c=st.integers(2, 5),
    seed=st.integers(0, 2**16),
)
def test_tta_unflips_random_logits_exactly(h, w, c, seed):
    model, logits = _pointwise_model(c)
    image = np.random.default_rng(seed).uniform(0, 255, (h, w, 3)).astype(np.float32)
    with mock.patch.object(inference, "predict_logits_batch", logits):
        plain = tf.nn.softmax(logits(model, image)).numpy()
        flipped = Predictor([model], TTA(flip=True, scales=(1.0,))).probabilities(image)
    np.testing.assert_allclose(flipped, plain, atol=1e-6)


@FAST
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    scales=st.lists(st.floats(0.25, 2.0), min_size=1, max_size=3),
    colour=st.tuples(*[st.floats(0, 255)] * 3),
    max_side=st.one_of(st.none(), st.integers(8, 64)),
)
def test_tta_scales_come_back_to_the_image_size(h, w, scales, colour, max_side):
    """Every view is brought back to (H, W) and within max_side; on a flat image, where
    resampling changes nothing, the average is the plain prediction."""
    model, logits = _pointwise_model(3)
    image = np.broadcast_to(np.float32(colour), (h, w, 3))
    tta = TTA(flip=True, scales=tuple(scales), max_side=max_side)
    if max_side is not None:
        assume(max(h, w) <= max_side)  # predict shrinks the image to max_side first
        assert max(max(size) for size in tta.view_sizes(h, w)) <= max_side
    with mock.patch.object(inference, "predict_logits_batch", logits):
        plain = tf.nn.softmax(logits(model, image)).numpy()
        averaged = Predictor([model], tta).probabilities(image)
    assert averaged.shape == (h, w, 3)
    np.testing.assert_allclose(averaged, plain, atol=1e-5)


# ------------------------------------------------------------------------------ class lists


NAMES = st.lists(
    st.text(
        st.characters(categories=("L", "N"), max_codepoint=0x2FFF) | st.sampled_from(" -_"),
        min_size=1,
        max_size=10,
    ).filter(lambda s: s == s.strip()),
    min_size=2,
    max_size=4,
    unique=True,
)


def _nearest_colour_model(colours: np.ndarray) -> keras.Model:
    """A 1x1 convolution whose argmax is the nearest class colour: argmin |x - c|^2 is argmax
    2 x.c - |c|^2, which is linear in x."""
    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(len(colours), 1, name="nearest")
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([2.0 * colours.T[None, None], -(colours**2).sum(axis=1)])
    return model


def _write_folder(root: Path, names: list[str], colour_list: list, seed: int) -> Path:
    """Three 8x8 PNG images painted in their class colours, RGB colour masks, a class list."""
    rng = np.random.default_rng(seed)
    colours = np.array(colour_list, np.uint8)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(3):
        label = rng.integers(0, len(names), (8, 8))
        label[0, : len(names)] = np.arange(len(names))  # every class appears
        painted = colours[label].astype(np.uint8)
        Image.fromarray(painted).save(root / "images" / f"p{i}.png")
        Image.fromarray(painted).save(root / "masks" / f"p{i}.png")
    (root / "val.txt").write_text("p0\np1\n")
    classes = {"names": names, "colors": [list(c) for c in colour_list]}
    (root / "classes.yaml").write_text(yaml.safe_dump(classes, allow_unicode=True))
    return root / "classes.yaml"


@SLOW
@given(names=NAMES, data=st.data(), seed=st.integers(0, 2**16))
def test_class_lists_go_through_prepare_and_evaluate(tmp_path_factory, names, data, seed):
    """Random names and colours -> `prepare` -> `evaluate`: the report lists the classes in
    order and a model that knows them scores 100 %; the same names in another order are
    refused, naming both lists."""
    from kfcn.data.prepare import prepare_folder_dataset

    colours = data.draw(
        st.lists(
            st.tuples(*[st.integers(0, 255)] * 3),
            min_size=len(names),
            max_size=len(names),
            unique=True,
        )
    )
    root = tmp_path_factory.mktemp("classes")
    classes = _write_folder(root, names, colours, seed)
    colours = np.array(colours, np.float32)
    out = root / "records"
    meta = prepare_folder_dataset(
        root / "images", root / "masks", out, classes, val_list=root / "val.txt", workers=1
    )
    assert meta["class_names"] == names
    cfg = Config()
    cfg.model.num_classes = len(names)
    model = _nearest_colour_model(colours)
    info = make_info("fcn8", cfg, class_names=names, palette=colours.astype(int).tolist())
    path = save_model(model, root / "right.keras", info)
    report = evaluate_model(path, out, "val")
    assert report["class_names"] == names
    assert report["mean_iou"] == 1.0 and report["pixel_accuracy"] == 1.0
    other = names[1:] + names[:1]
    info = make_info("fcn8", cfg, class_names=other, palette=colours.astype(int).tolist())
    wrong = save_model(model, root / "other.keras", info)
    with pytest.raises(DataError) as caught:
        evaluate_model(wrong, out, "val")
    assert str(names) in str(caught.value) and str(other) in str(caught.value)
