"""`train.loss` choices, class weights and hard-pixel mining against formulas written in numpy."""

import numpy as np
import pytest
import tensorflow as tf

from kfcn.config import Config
from kfcn.losses import DICE_SMOOTH, MaskedSparseCrossEntropy, SegmentationLoss, make_loss
from kfcn.palette import IGNORE_LABEL
from tests.fresh_process import run_two_replicas

C = 4
WEIGHTS = [0.5, 2.0, 1.0, 3.0]


@pytest.fixture
def batch():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, C, (3, 5, 6)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = IGNORE_LABEL
    labels[2, :, :4] = IGNORE_LABEL  # one image mostly ignored
    labels[1][labels[1] == 3] = 0  # class 3 absent from image 1
    logits = (2 * rng.normal(size=(3, 5, 6, C))).astype(np.float32)
    return labels, logits


def softmax(logits):
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def true_probs(labels, logits):
    valid = labels != IGNORE_LABEL
    p = softmax(logits)
    return np.take_along_axis(p, np.where(valid, labels, 0)[..., None], -1)[..., 0], valid


def np_pixel_loss(labels, logits, weights, gamma=None, kept=None):
    pt, valid = true_probs(labels, logits)
    counted = valid if kept is None else kept
    w = np.asarray(weights)[np.where(valid, labels, 0)]
    loss = -np.log(pt) * w
    if gamma is not None:
        loss *= (1 - pt) ** gamma
    return loss[counted].sum() / counted.sum()


def np_dice(labels, logits, weights):
    p = softmax(logits)
    weights = np.asarray(weights)
    out = []
    for b in range(len(labels)):
        valid = labels[b] != IGNORE_LABEL
        dices = []
        for c in range(C):
            g = (labels[b] == c) & valid
            pc = p[b, ..., c][valid]
            inter = (pc * g[valid]).sum()
            dices.append((2 * inter + DICE_SMOOTH) / (pc.sum() + g.sum() + DICE_SMOOTH))
        out.append(1 - (weights * np.array(dices)).sum() / weights.sum())
    return float(np.mean(out))


def np_lovasz(labels, logits, weights):
    """Berman et al.'s reference algorithm on the valid pixels of each image."""
    p = softmax(logits)
    out = []
    for b in range(len(labels)):
        valid = labels[b] != IGNORE_LABEL
        y, probs = labels[b][valid], p[b][valid]  # (N,), (N, C)
        losses, ws = [], []
        for c in range(C):
            fg = (y == c).astype(np.float64)
            if fg.sum() == 0:
                continue
            errors = np.abs(fg - probs[:, c])
            order = np.argsort(-errors, kind="stable")
            fg_sorted = fg[order]
            gts = fg_sorted.sum()
            jaccard = 1 - (gts - np.cumsum(fg_sorted)) / (gts + np.cumsum(1 - fg_sorted))
            grad = np.concatenate([jaccard[:1], np.diff(jaccard)])
            losses.append(errors[order] @ grad)
            ws.append(weights[c])
        out.append(np.dot(losses, ws) / np.sum(ws) if losses else 0.0)
    return float(np.mean(out))


def np_ohem_kept(labels, logits, threshold, min_kept):
    pt, valid = true_probs(labels, logits)
    kept = np.zeros_like(valid)
    for b in range(len(labels)):
        v = pt[b][valid[b]]
        keep = pt[b] < threshold
        if min_kept and len(v):
            keep |= pt[b] <= np.sort(v)[min(min_kept, len(v)) - 1]
        kept[b] = keep & valid[b]
    return kept


def value(loss, labels, logits):
    return float(loss(labels, logits))


@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_pixel_losses_equal_numpy(batch, weights):
    labels, logits = batch
    w = weights or [1.0] * C
    ce = SegmentationLoss(C, "cross_entropy", weights)
    assert value(ce, labels, logits) == pytest.approx(np_pixel_loss(labels, logits, w), rel=1e-5)
    focal = SegmentationLoss(C, "focal", weights, focal_gamma=2.0)
    expected = np_pixel_loss(labels, logits, w, gamma=2.0)
    assert value(focal, labels, logits) == pytest.approx(expected, rel=1e-5)


def test_unweighted_cross_entropy_is_todays_loss(batch):
    labels, logits = batch
    today = value(MaskedSparseCrossEntropy(), labels, logits)
    assert value(SegmentationLoss(C), labels, logits) == pytest.approx(today, rel=1e-6)
    assert isinstance(make_loss(Config().train, C), MaskedSparseCrossEntropy)


@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_dice_and_lovasz_equal_numpy(batch, weights):
    labels, logits = batch
    w = weights or [1.0] * C
    dice = np_dice(labels, logits, w)
    lovasz = np_lovasz(labels, logits, w)
    assert value(SegmentationLoss(C, "dice", weights), labels, logits) == pytest.approx(dice, 1e-5)
    got = value(SegmentationLoss(C, "lovasz", weights), labels, logits)
    assert got == pytest.approx(lovasz, rel=1e-5)
    both = SegmentationLoss(C, "cross_entropy+dice", weights)
    expected = np_pixel_loss(labels, logits, w) + dice
    assert value(both, labels, logits) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("threshold, min_kept", [(0.3, 0), (0.3, 12), (0.05, 8)])
def test_ohem_keeps_hard_pixels_per_image(batch, threshold, min_kept):
    labels, logits = batch
    kept = np_ohem_kept(labels, logits, threshold, min_kept)
    assert 0 < kept.sum() < (labels != IGNORE_LABEL).sum()
    loss = SegmentationLoss(
        C, "cross_entropy", WEIGHTS, ohem_threshold=threshold, ohem_min_kept=min_kept
    )
    expected = np_pixel_loss(labels, logits, WEIGHTS, kept=kept)
    assert value(loss, labels, logits) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["cross_entropy", "focal", "dice", "lovasz", "cross_entropy+dice"])
def test_gradients_are_zero_at_ignored_pixels(batch, name):
    labels, logits = batch
    var = tf.Variable(logits)
    loss = SegmentationLoss(C, name, WEIGHTS, ohem_threshold=0.5 if name == "focal" else None)
    with tf.GradientTape() as tape:
        out = loss(labels, var)
    grad = tape.gradient(out, var).numpy()
    ignored = labels == IGNORE_LABEL
    assert np.isfinite(grad).all()
    assert not grad[ignored].any()
    assert np.abs(grad[~ignored]).max() > 1e-4


@pytest.mark.parametrize("name", ["focal", "lovasz", "cross_entropy+dice"])
def test_low_precision_logits_give_a_float32_loss(batch, name):
    labels, logits = batch
    low = tf.cast(logits, tf.bfloat16)
    loss = SegmentationLoss(C, name)
    out = loss(labels, low)
    assert out.dtype == tf.float32
    assert float(out) == pytest.approx(value(loss, labels, tf.cast(low, tf.float32)), rel=1e-6)


def test_all_ignored_gives_zero(batch):
    _, logits = batch
    labels = np.full(logits.shape[:-1], IGNORE_LABEL, np.int32)
    for name in ("cross_entropy", "lovasz"):
        assert value(SegmentationLoss(C, name, ohem_threshold=None), labels, logits) == 0.0


def test_two_replicas_give_one_replicas_value_for_every_loss():
    result = run_two_replicas("seg-losses")
    assert result.returncode == 0 and "seg-losses: ok" in result.stdout, result.stderr[-3000:]
