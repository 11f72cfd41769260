import numpy as np
import pytest
import tensorflow as tf

from kfcn.models.vgg import VGGPreprocess
from kfcn.padding import (
    IMAGENET_MEAN_RGB,
    batches_by_padded_size,
    crop_to,
    pad_image,
    pad_label,
    padded_size,
)
from kfcn.palette import IGNORE_LABEL

SIZES = [(375, 500), (1, 1), (33, 97), (32, 64), (64, 31)]


def _next32(n: int) -> int:
    return ((n + 31) // 32) * 32


@pytest.mark.parametrize("h, w", SIZES)
def test_pad_image_keeps_pixels_and_fills_with_the_mean(h, w):
    rng = np.random.default_rng(h * 1000 + w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    padded, hw = pad_image(image)
    padded = padded.numpy()
    assert padded.shape == (_next32(h), _next32(w), 3)
    assert padded.dtype == np.float32
    assert tuple(hw.numpy()) == (h, w)
    np.testing.assert_array_equal(padded[:h, :w], image.astype(np.float32))
    fill = np.ones_like(padded, dtype=bool)
    fill[:h, :w] = False
    np.testing.assert_array_equal(
        padded[fill].reshape(-1, 3), np.tile(np.float32(IMAGENET_MEAN_RGB), (fill.sum() // 3, 1))
    )


def test_padding_becomes_exact_zeros_after_preprocessing():
    image = np.full((33, 97, 3), 200.0, np.float32)
    padded, _ = pad_image(image)
    x = VGGPreprocess()(padded[tf.newaxis]).numpy()[0]  # (64, 128, 3) BGR, mean removed
    assert np.all(x[33:] == 0) and np.all(x[:, 97:] == 0)
    np.testing.assert_allclose(x[0, 0], np.float32(200.0) - np.float32(IMAGENET_MEAN_RGB[::-1]))


@pytest.mark.parametrize("h, w", SIZES)
def test_pad_label_uses_ignore_label_and_crop_round_trips(h, w):
    rng = np.random.default_rng(7)
    label = rng.integers(0, 21, (h, w), dtype=np.uint8)
    padded = pad_label(label).numpy()
    assert padded.shape == (_next32(h), _next32(w)) and padded.dtype == np.uint8
    np.testing.assert_array_equal(padded[:h, :w], label)
    assert np.all(padded[h:] == IGNORE_LABEL) and np.all(padded[:, w:] == IGNORE_LABEL)

    logits = rng.normal(size=(_next32(h), _next32(w), 5)).astype(np.float32)
    _, hw = pad_image(np.zeros((h, w, 3), np.uint8))
    cropped = crop_to(logits, hw).numpy()
    np.testing.assert_array_equal(cropped, logits[:h, :w])


def test_batched_inputs_pad_the_spatial_axes():
    images = np.zeros((2, 33, 40, 3), np.uint8)
    padded, hw = pad_image(images)
    assert padded.shape == (2, 64, 64, 3) and tuple(hw.numpy()) == (33, 40)
    labels = np.zeros((2, 33, 40), np.int32)
    assert pad_label(labels).shape == (2, 64, 64)
    assert crop_to(tf.zeros((2, 64, 64, 4)), hw).shape == (2, 33, 40, 4)


def test_graph_mode_with_unknown_shapes():
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def padded_shape(image):
        padded, hw = pad_image(image)
        logits = tf.zeros(tf.concat([tf.shape(padded)[:2], [3]], 0))
        return tf.shape(padded), tf.shape(crop_to(logits, hw))

    shape, cropped = padded_shape(tf.zeros((375, 500, 3), tf.uint8))
    assert tuple(shape.numpy()) == (384, 512, 3)
    assert tuple(cropped.numpy()) == (375, 500, 3)

    ds = tf.data.Dataset.from_generator(
        lambda: (np.zeros((h, w), np.uint8) for h, w in SIZES),
        output_signature=tf.TensorSpec([None, None], tf.uint8),
    ).map(pad_label)
    assert [tuple(x.shape) for x in ds] == [(_next32(h), _next32(w)) for h, w in SIZES]


def test_padded_size():
    assert [padded_size(n) for n in (0, 1, 31, 32, 33, 500)] == [32, 32, 32, 32, 64, 512]
    assert padded_size(tf.constant(33)).numpy() == 64


def test_bad_rank_is_rejected():
    with pytest.raises(ValueError, match="pad_image expects"):
        pad_image(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="pad_label expects"):
        pad_label(np.zeros((4,)))


def test_batches_by_padded_size_groups_without_losing_items():
    sizes = [(375, 500), (33, 97), (380, 490), (64, 128), (1, 1), (370, 512), (20, 20), (40, 100)]
    items = [(i, np.zeros((h, w, 3), np.uint8)) for i, (h, w) in enumerate(sizes)]
    batches = list(batches_by_padded_size(items, 2, image_of=lambda item: item[1]))
    assert sorted(i for batch in batches for i, _ in batch) == list(range(len(sizes)))
    for batch in batches:
        assert 1 <= len(batch) <= 2
        assert len({(padded_size(im.shape[0]), padded_size(im.shape[1])) for _, im in batch}) == 1
    assert [0, 2] in [[i for i, _ in batch] for batch in batches]  # both pad to 384 x 512
    # Batch size 1 streams the items in order.
    images = [im for _, im in items]
    streamed = list(batches_by_padded_size(images, 1))
    assert len(streamed) == 8 and all(
        len(b) == 1 and b[0] is im for b, im in zip(streamed, images, strict=True)
    )
    with pytest.raises(ValueError, match="batch_size"):
        list(batches_by_padded_size(images, 0))
