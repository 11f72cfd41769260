"""Paired image/label ops: geometry shared by image and label, NEAREST labels, 255 padding."""

import numpy as np
import pytest
import tensorflow as tf

from kfcn.data import augment
from kfcn.padding import IMAGENET_MEAN_RGB
from kfcn.palette import IGNORE_LABEL
from tests.shards import make_sample


@pytest.fixture(scope="module")
def sample():
    image, label = make_sample(np.random.default_rng(3), (32, 48), 21)
    return image, label


def seed(i: int) -> tf.Tensor:
    return tf.constant([i, 7], tf.int64)


def test_random_scale_fixed_factor_resizes_label_nearest(sample):
    image, label = sample
    out_image, out_label = augment.random_scale(image, label, 2.0, 2.0, seed(0))
    assert out_image.dtype == tf.float32 and out_image.shape == (64, 96, 3)
    assert out_label.dtype == tf.uint8 and out_label.shape == (64, 96)
    # An exact 2x NEAREST upscale repeats every label pixel in a 2x2 block.
    for dy in (0, 1):
        for dx in (0, 1):
            np.testing.assert_array_equal(out_label.numpy()[dy::2, dx::2], label)


def test_random_scale_draws_factors_in_range(sample):
    image, label = sample
    heights = set()
    for i in range(8):
        out_image, out_label = augment.random_scale(image, label, 0.5, 1.5, seed(i))
        h, w = out_label.shape
        assert out_image.shape[:2] == (h, w)
        assert 16 <= h <= 48 and 24 <= w <= 72
        assert abs(w / h - 1.5) < 0.1  # one factor for both axes
        assert set(np.unique(out_label)) <= set(np.unique(label))  # no blended classes
        heights.add(h)
    assert len(heights) > 2


def test_random_scale_identity_at_one(sample):
    image, label = sample
    out_image, out_label = augment.random_scale(image, label, 1.0, 1.0, seed(0))
    np.testing.assert_array_equal(out_image.numpy(), image.astype(np.float32))
    np.testing.assert_array_equal(out_label.numpy(), label)


def test_random_crop_is_a_window_of_the_source(sample):
    image, label = sample
    offsets = set()
    for i in range(10):
        out_image, out_label = augment.random_crop_or_pad(image, label, 32, seed(i))
        assert out_image.shape == (32, 32, 3) and out_label.shape == (32, 32)
        # The 32x48 source only leaves the column offset free.
        matches = [
            x
            for x in range(17)
            if np.array_equal(out_image.numpy(), image[:, x : x + 32])
            and np.array_equal(out_label.numpy(), label[:, x : x + 32])
        ]
        assert matches, f"seed {i}: crop is not a window of the source"
        offsets.add(matches[0])
    assert len(offsets) > 3


def test_random_crop_pads_image_with_mean_and_label_with_ignore(sample):
    image, label = sample
    out_image, out_label = augment.random_crop_or_pad(image, label, 64, seed(1))
    out_image, out_label = out_image.numpy(), out_label.numpy()
    np.testing.assert_array_equal(out_image[:32, :48], image.astype(np.float32))
    np.testing.assert_array_equal(out_label[:32, :48], label)
    mean = np.array(IMAGENET_MEAN_RGB, np.float32)
    for region in (np.s_[32:, :], np.s_[:, 48:]):
        np.testing.assert_array_equal(
            out_image[region], np.broadcast_to(mean, out_image[region].shape)
        )
        assert (out_label[region] == IGNORE_LABEL).all()


def test_random_flip_moves_image_and_label_together(sample):
    image, label = sample
    seen = set()
    for i in range(10):
        out_image, out_label = augment.random_flip(image, label, seed(i))
        flipped = np.array_equal(out_label.numpy(), label[:, ::-1])
        if flipped:
            np.testing.assert_array_equal(out_image.numpy(), image[:, ::-1].astype(np.float32))
        else:
            np.testing.assert_array_equal(out_label.numpy(), label)
            np.testing.assert_array_equal(out_image.numpy(), image.astype(np.float32))
        seen.add(flipped)
    assert seen == {True, False}


def test_resize_pad_matches_tf_and_pads_label_with_ignore(sample):
    image, label = sample
    out_image, out_label = augment.resize_pad(image, label, 64)
    assert out_image.shape == (64, 64, 3) and out_label.shape == (64, 64)
    assert out_label.dtype == tf.uint8
    # The scale of tf.image.resize_with_pad (32x48 -> 42x64), placed at the top left and padded
    # below with the mean colour, as inference pads.
    expected = tf.image.resize(image.astype(np.float32), (42, 64)).numpy()
    np.testing.assert_allclose(out_image.numpy()[:42], expected, atol=1e-3)
    mean = np.broadcast_to(np.float32(IMAGENET_MEAN_RGB), (22, 64, 3))
    np.testing.assert_array_equal(out_image.numpy()[42:], mean)
    out_label = out_label.numpy()
    assert (out_label[42:] == IGNORE_LABEL).all()
    inner = tf.image.resize(label[..., None], (42, 64), method="nearest")[..., 0].numpy()
    np.testing.assert_array_equal(out_label[:42], inner)
