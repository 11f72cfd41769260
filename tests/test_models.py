import contextlib
import gc
import zipfile

import h5py
import keras
import numpy as np
import pytest

from kfcn.config import Config, ModelConfig, load_config
from kfcn.errors import ConfigError, ModelError
from kfcn.models import (
    VARIANTS,
    apply_freeze,
    bilinear_kernel,
    build_fcn,
    build_fcn_from_config,
    load_model,
    make_info,
    model_info,
    save_model,
    transfer_weights,
)
from kfcn.models.vgg import imagenet_backbone_weights
from kfcn.padding import pad_image, predict_classes, predict_logits

PARAMS = {"fcn32": 136_152_917, "fcn16": 134_815_994, "fcn8": 134_489_759}
UPSAMPLING = {
    "fcn32": {"upscore32": 64},
    "fcn16": {"upscore2": 4, "upscore16": 32},
    "fcn8": {"upscore2": 4, "upscore_pool4": 4, "upscore8": 16},
}
SCORES = {"fcn32": ["score_fr"], "fcn16": ["score_fr", "score_pool4"]}
SCORES["fcn8"] = SCORES["fcn16"] + ["score_pool3"]
_BLOCKS = [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)]
_VGG16_FILTERS = (64, 128, 256, 512, 512)  # of blocks 1-5


def _randomise(model, names, seed=0, scale=0.01):
    """Give layers `names` (zero-initialised score layers) small random weights."""
    rng = np.random.default_rng(seed)
    for name in names:
        layer = model.get_layer(name)
        layer.set_weights([scale * rng.normal(size=w.shape) for w in layer.get_weights()])


def _images(n, h, w, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, h, w, 3)).astype(np.float32)


@pytest.fixture(autouse=True)
def _free_models():
    """Keras models hold reference cycles; collect them so a full-size model's ~0.6 GB is reused."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def models():
    """One randomly initialised model per variant, of the small network (`widths="small"`: the
    same layers, names, skips and upsampling at a fraction of VGG16's widths). The tests of
    VGG16's own sizes build the full-size models themselves (`test_full_size_vgg16`)."""
    keras.utils.set_random_seed(0)
    built = {v: build_fcn(v, backbone_weights="none", widths="small") for v in VARIANTS}
    yield built
    built.clear()
    gc.collect()


# --- ImageNet weights (first: they need memory while the fixture models do not exist yet)


# Keras VGG16's layers in order, with the shapes of their weights (kernel, bias).
def _vgg16_layers() -> list[tuple[str, list[tuple[int, ...]]]]:
    layers, channels = [("input_layer", [])], 3
    for (b, n), filters in zip(_BLOCKS, _VGG16_FILTERS, strict=True):
        for i in range(1, n + 1):
            layers.append((f"block{b}_conv{i}", [(3, 3, channels, filters), (filters,)]))
            channels = filters
        layers.append((f"block{b}_pool", []))
    return layers + [
        ("flatten", []),
        ("fc1", [(25088, 4096), (4096,)]),
        ("fc2", [(4096, 4096), (4096,)]),
        ("predictions", [(4096, 1000), (1000,)]),
    ]


_VGG16_LAYERS = _vgg16_layers()


@pytest.fixture(scope="module")
def vgg16_weights_file(tmp_path_factory):
    """A VGG16-with-top weights file in the legacy .h5 layout of the official ImageNet file
    (vgg16_weights_tf_dim_ordering_tf_kernels.h5: `layer_names` on the root, a group per layer
    whose `weight_names` lists its arrays), with random weights, biases included. Written array
    by array with h5py (a Keras VGG16 built to save it would hold 2 GB for the rest of the
    process); Keras's own loader reading it back is what checks the layout."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("vgg") / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode() for name, _ in _VGG16_LAYERS]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = keras.__version__.encode()
        for name, shapes in sorted(_VGG16_LAYERS):
            group = f.create_group(name)
            names = [f"{name}/{w}" for w in ("kernel", "bias")[: len(shapes)]]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for weight, shape in zip(names, shapes, strict=True):
                scale = np.float32(1.0 if len(shape) == 1 else np.sqrt(2 / np.prod(shape[:-1])))
                group[weight] = scale * rng.standard_normal(shape, dtype=np.float32)
    yield path
    path.unlink()  # 0.55 GB; pytest keeps the last runs' temp folders


def _stored(path, layer):
    """[kernel, bias] of `layer` as stored in a legacy Keras weights file."""
    with h5py.File(path, "r") as f:
        group = f[layer]
        return [np.asarray(group[name]) for name in group.attrs["weight_names"]]


def test_imagenet_weights_convert_exactly(vgg16_weights_file):
    path = vgg16_weights_file
    model = build_fcn("fcn32", backbone_weights=str(path))
    vgg = {name: _stored(path, name) for name in ("fc1", "fc2")}
    for b, n in _BLOCKS:
        for i in range(1, n + 1):
            name = f"block{b}_conv{i}"
            kernel, bias = _stored(path, name)
            got = model.get_layer(name).get_weights()
            np.testing.assert_array_equal(got[0], kernel)
            np.testing.assert_array_equal(got[1], bias)
            assert bias.any()
    # fc6 row by row of its 7x7 kernel: no second 0.4 GB copy of it at once.
    fc6 = model.get_layer("fc6")
    for i in range(7):
        want = vgg["fc1"][0][i * 7 * 512 : (i + 1) * 7 * 512].reshape(7, 512, 4096)
        np.testing.assert_array_equal(fc6.kernel[i].numpy(), want)
    np.testing.assert_array_equal(fc6.bias.numpy(), vgg["fc1"][1])
    np.testing.assert_array_equal(model.get_layer("fc7").kernel.numpy()[0, 0], vgg["fc2"][0])
    np.testing.assert_array_equal(model.get_layer("fc7").bias.numpy(), vgg["fc2"][1])
    # fc6 at the centre of a 7x7 pool5 map is fc1 on the flattened map (channels-last order).
    pool5 = np.random.default_rng(2).normal(size=(1, 7, 7, 512)).astype(np.float32)
    conv = model.get_layer("fc6")(pool5).numpy()[0, 3, 3]
    dense = np.maximum(pool5.reshape(1, -1) @ vgg["fc1"][0] + vgg["fc1"][1], 0)[0]
    np.testing.assert_allclose(conv, dense, rtol=1e-4, atol=1e-3)
    # The score layers stay zero: nothing beyond the backbone comes from ImageNet.
    assert not model.get_layer("score_fr").kernel.numpy().any()


def test_imagenet_goes_through_the_same_conversion(vgg16_weights_file, monkeypatch):
    path = vgg16_weights_file
    real = keras.applications.VGG16

    def offline(include_top, weights):  # stands in for the download, same loader otherwise
        assert include_top and weights == "imagenet"
        return real(include_top=True, weights=str(path))

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    converted = imagenet_backbone_weights("imagenet")
    vgg = {name: _stored(path, name) for name in ("fc1", "fc2")}  # after the load's peak
    assert list(converted) == [f"block{b}_conv{i}" for b, n in _BLOCKS for i in range(1, n + 1)] + [
        "fc6",
        "fc7",
    ]
    np.testing.assert_array_equal(converted["fc6"][0], vgg["fc1"][0].reshape(7, 7, 512, 4096))
    np.testing.assert_array_equal(converted["fc7"][0][0, 0], vgg["fc2"][0])

    def no_network(include_top, weights):
        raise Exception("URL fetch failure on https://example: Name or service not known")

    monkeypatch.setattr(keras.applications, "VGG16", no_network)
    with pytest.raises(ModelError, match="cannot get the ImageNet VGG16 weights.*URL fetch"):
        build_fcn("fcn8")


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_bad_weights_files_name_the_file(tmp_path):
    with pytest.raises(ModelError, match="nope.h5: backbone weights file not found"):
        build_fcn("fcn32", backbone_weights=str(tmp_path / "nope.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file" * 10)
    with pytest.raises(ModelError, match="junk.h5: cannot load as VGG16 weights"):
        build_fcn("fcn32", backbone_weights=str(junk))
    notop = tmp_path / "notop.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None).save_weights(notop)
    with pytest.raises(ModelError, match="notop.weights.h5: cannot load .*with the classifier top"):
        build_fcn("fcn32", backbone_weights=str(notop))
    with pytest.raises(ConfigError, match="backbone_weights"):
        build_fcn("fcn32", backbone_weights="")


# --- architecture


@pytest.mark.parametrize("variant", VARIANTS)
def test_full_size_vgg16(variant):
    """At VGG16's own widths: the paper's parameter counts and fc6/fc7 shapes, the layers of the
    small network, and one forward at a size that is no square."""
    keras.utils.set_random_seed(0)
    model = build_fcn(variant, backbone_weights="none")
    assert model.count_params() == PARAMS[variant]
    assert model.get_layer("fc6").kernel.shape == (7, 7, 512, 4096)
    assert model.get_layer("fc7").kernel.shape == (1, 1, 4096, 4096)
    names = [f"block{b}_conv{i}" for b, n in _BLOCKS for i in range(1, n + 1)]
    assert [model.get_layer(name).filters for name in names] == [
        width for (_, n), width in zip(_BLOCKS, _VGG16_FILTERS, strict=True) for _ in range(n)
    ]
    small = build_fcn(variant, backbone_weights="none", widths="small")
    assert [layer.name for layer in model.layers] == [layer.name for layer in small.layers]
    logits = model(_images(1, 32, 96), training=False)
    assert tuple(logits.shape) == (1, 32, 96, 21) and logits.dtype == "float32"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("hw", [(32, 32), (64, 96), (96, 128)])
def test_output_shape_is_input_size(models, variant, hw):
    logits = models[variant](_images(2, *hw), training=False)
    assert tuple(logits.shape) == (2, *hw, 21)
    assert logits.dtype == "float32"


@pytest.mark.parametrize("variant", VARIANTS)
def test_layers_follow_the_paper(models, variant):
    model = models[variant]
    names = [layer.name for layer in model.layers]
    for name in ["block1_conv1", "block5_conv3", "block5_pool", "fc6", "drop6", "fc7", "drop7"]:
        assert name in names
    assert "predictions" not in names and "fc1" not in names
    assert model.get_layer("fc6").kernel.shape == (7, 7, 128, 256)  # (7, 7, 512, 4096) full-size
    assert model.get_layer("fc7").kernel.shape == (1, 1, 256, 256)
    assert model.get_layer("drop6").rate == 0.5
    for name in SCORES[variant]:
        weights = model.get_layer(name).get_weights()
        assert all(not w.any() for w in weights), f"{name} is not zero-initialised"
    for name, size in UPSAMPLING[variant].items():
        layer = model.get_layer(name)
        assert not layer.trainable and not layer.use_bias
        np.testing.assert_array_equal(layer.kernel.numpy(), bilinear_kernel(size, 21))
    assert model.input.shape[1:] == (None, None, 3)


def test_weight_decay_on_kernels_only(models):
    model = models["fcn8"]
    decayed = [v.path for v in model.trainable_weights if v.regularizer is not None]
    kernels = [v.path for v in model.trainable_weights if v.path.endswith("kernel")]
    assert decayed == kernels and len(kernels) == 13 + 2 + 3
    assert len(model.losses) == len(kernels)
    np.testing.assert_allclose(
        model.get_layer("fc7").kernel_regularizer.l2, 1e-5, rtol=1e-6
    )  # default weight decay


def test_build_options_and_bad_values():
    model = build_fcn(
        "fcn16",
        num_classes=5,
        backbone_weights="none",
        widths="small",
        weight_decay=0.0,
        dropout=0.1,
        train_upsampling=True,
    )
    assert model.output.shape[-1] == 5 and not model.losses
    assert model.get_layer("upscore16").trainable and model.get_layer("drop7").rate == 0.1
    del model
    with pytest.raises(ModelError, match="'fcn4'.*fcn32, fcn16, fcn8"):
        build_fcn("fcn4", backbone_weights="none")
    with pytest.raises(ConfigError, match="num_classes = 1"):
        build_fcn("fcn8", num_classes=1, backbone_weights="none")
    with pytest.raises(ConfigError, match="dropout"):
        build_fcn("fcn8", dropout=1.0, backbone_weights="none")


def test_build_from_config():
    cfg = ModelConfig(num_classes=3, backbone_weights="none", widths="small", dropout=0.25)
    model = build_fcn_from_config("fcn32", cfg, weight_decay=2e-4)
    assert model.output.shape[-1] == 3 and model.get_layer("drop7").rate == 0.25
    np.testing.assert_allclose(model.get_layer("fc6").kernel_regularizer.l2, 2e-4, rtol=1e-6)


def _bilinear_direct(k):
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    filt = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            filt[i, j] = (1 - abs(i - center) / factor) * (1 - abs(j - center) / factor)
    return filt


@pytest.mark.parametrize("k", [3, 4, 5, 16, 32, 64])
def test_bilinear_kernel_matches_caffe_formula(k):
    kernel = bilinear_kernel(k, 3)
    assert kernel.shape == (k, k, 3, 3)
    for i in range(3):
        for j in range(3):
            expected = _bilinear_direct(k) if i == j else np.zeros((k, k))
            np.testing.assert_allclose(kernel[:, :, i, j], expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("variant", VARIANTS)
def test_upsampling_is_aligned(models, variant):
    """A constant map upsamples to a constant interior and a ramp to the ramp at pixel centres."""
    for name, size in UPSAMPLING[variant].items():
        layer = models[variant].get_layer(name)
        s, n = size // 2, 5
        const = np.ones((1, n, n, 21), np.float32)
        out = layer(const).numpy()[0]  # (n*s, n*s, 21)
        b = s // 2  # the border sees only one input pixel
        assert out.shape == (n * s, n * s, 21)
        np.testing.assert_allclose(out[b:-b, b:-b], 1.0, atol=1e-6)
        ramp = np.broadcast_to(np.arange(n, dtype=np.float32)[None, :, None], (n, n, 21))
        out = layer(ramp[None]).numpy()[0, n * s // 2, :, 0]
        centres = (np.arange(n * s) - (s - 1) / 2) / s  # input coordinate of each output pixel
        np.testing.assert_allclose(out[b:-b], centres[b:-b], atol=1e-5)


def test_mixed_precision_output_is_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_fcn("fcn8", backbone_weights="none", widths="small")
        assert model.get_layer("fc7").compute_dtype == "float16"
        assert model.get_layer("preprocess").compute_dtype == "float32"
        logits = model(_images(1, 32, 32), training=False)
        assert logits.dtype == "float32"
    finally:
        keras.config.set_dtype_policy(previous)


# --- padding helper with a model


def test_predict_logits_returns_the_original_size(models):
    model = models["fcn8"]
    _randomise(model, SCORES["fcn8"])
    for h, w in [(33, 97), (1, 1), (70, 40)]:
        image = _images(1, h, w, seed=h)[0]
        logits = predict_logits(model, image)
        assert logits.shape == (h, w, 21) and logits.dtype == np.float32
        padded, _ = pad_image(image)
        full = model(padded[None], training=False).numpy()[0]
        np.testing.assert_array_equal(logits, full[:h, :w])
    # predict_classes: one call for images of one padded size, each cropped to its own size.
    images = [_images(1, 40, 60, seed=1)[0], _images(1, 64, 50, seed=2)[0]]
    classes = predict_classes(model, images)
    for image, got in zip(images, classes, strict=True):
        assert got.dtype == np.uint8 and got.shape == image.shape[:2]
        agree = (got == predict_logits(model, image).argmax(-1)).mean()
        assert agree > 0.999  # batched vs single calls may differ in the last bit on ties
    with pytest.raises(ValueError, match="one padded size"):
        predict_classes(model, [images[0], _images(1, 65, 50)[0]])
    # Batched with another image of the same padded size, an image gets the same logits.
    a, b = _images(1, 40, 60, seed=1)[0], _images(1, 64, 50, seed=2)[0]
    batch = np.stack([pad_image(a)[0], pad_image(b)[0]])  # both (64, 64, 3)
    together = model(batch, training=False).numpy()[:, :40, :60]
    alone = predict_logits(model, a)
    scale = np.abs(alone).max()  # float32 sums: differences scale with the logits
    np.testing.assert_allclose(together[0], alone, rtol=1e-4, atol=2e-5 * scale)


# --- saving


@pytest.fixture(scope="module")
def saved_fcn16(models, tmp_path_factory):
    """fcn16 (random score layers) saved once: its path, an input, the expected output and the
    saved score_pool4 weights."""
    model = models["fcn16"]
    _randomise(model, SCORES["fcn16"], seed=3)
    folder = tmp_path_factory.mktemp("run")
    cfg = Config()
    cfg.model.backbone_weights, cfg.model.widths = "none", "small"
    path = save_model(model, folder / "fcn16.keras", make_info("fcn16", cfg))
    x = _images(2, 64, 96)
    pool4 = model.get_layer("score_pool4").get_weights()
    yield path, x, model(x, training=False).numpy(), pool4
    path.unlink()


def test_save_load_round_trip(saved_fcn16):
    path, x, expected, _ = saved_fcn16
    assert sorted(p.name for p in path.parent.iterdir()) == ["fcn16.keras"]  # no temp left
    # Exactly Keras' three members: an extra one would make Keras extract the archive on load.
    assert len(zipfile.ZipFile(path).namelist()) == 3

    plain = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(plain(x, training=False).numpy(), expected)
    assert not plain.get_layer("upscore2").trainable
    del plain

    loaded, got = load_model(path)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), expected)
    assert got == model_info(path)
    assert got["variant"] == "fcn16" and got["class_names"][15] == "person"
    assert got["palette"][1] == [128, 0, 0] and len(got["palette"]) == 21
    assert got["config"]["model"]["freeze"] == Config().model.freeze
    assert got["config"]["model"]["widths"] == "small"
    assert got["kfcn_version"]


def _tiny(classes=2):
    """A small stand-in model: saving and file checks do not depend on the network's size."""
    x = inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(classes, 3, padding="same", name="score_fr")(x)
    return keras.Model(inputs, x)


def test_save_leaves_out_the_optimizer(tmp_path):
    model = _tiny()
    model.compile(optimizer="adam", loss="mse")
    model.fit(_images(1, 8, 8), np.zeros((1, 8, 8, 2)), epochs=1, verbose=0)
    info = make_info("fcn32", Config(), ["a", "b"])
    assert info["palette"] == [[0, 0, 0], [128, 0, 0]]
    small = save_model(model, tmp_path / "a.keras", info)
    assert model.optimizer is not None  # restored after saving
    big = save_model(model, tmp_path / "b.keras", info, include_optimizer=True)
    with zipfile.ZipFile(small) as a, zipfile.ZipFile(big) as b:
        size = {z.filename: z.file_size for z in a.infolist()}["model.weights.h5"]
        assert {z.filename: z.file_size for z in b.infolist()}["model.weights.h5"] > size
    loaded, _ = load_model(small)
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])


def test_model_file_errors_are_one_line(tmp_path):
    with pytest.raises(ModelError, match="missing.keras: model file not found"):
        load_model(tmp_path / "missing.keras")
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"junk" * 100)
    with pytest.raises(ModelError, match="junk.keras: not a readable .keras model file"):
        load_model(junk)
    plain = tmp_path / "plain.keras"
    _tiny().save(plain)
    with pytest.raises(ModelError, match="plain.keras: a Keras model file without kfcn"):
        model_info(plain)
    info = make_info("fcn32", Config(), ["a", "b"])
    with pytest.raises(ModelError, match="bad.h5: model files must end in .keras"):
        save_model(_tiny(), tmp_path / "bad.h5", info)
    # A file cut short (an interrupted copy) is caught before Keras sees it.
    good = save_model(_tiny(), tmp_path / "good.keras", info)
    cut = tmp_path / "cut.keras"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ModelError, match="cut.keras: not a readable") as excinfo:
        load_model(cut)
    assert "\n" not in str(excinfo.value)
    # Corrupt weights inside an intact archive are reported by Keras, still as one line.
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(broken, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            zout.writestr(item, data[:64] if item.filename == "model.weights.h5" else data)
    with pytest.raises(ModelError, match="broken.keras: cannot load the model") as excinfo:
        load_model(broken)
    assert "\n" not in str(excinfo.value)


# --- stage transfer and freezing


def test_fcn32_to_fcn16_transfer(models):
    fcn32, fcn16 = models["fcn32"], models["fcn16"]
    _randomise(fcn32, ["score_fr"], seed=5)
    _randomise(fcn16, ["score_pool4"], scale=0)  # as built: zero
    copied = transfer_weights(fcn32, fcn16)
    backbone = [layer.name for layer in fcn32.layers if layer.weights and layer.name != "upscore32"]
    assert copied == backbone  # block*_conv*, fc6, fc7, score_fr
    for name in backbone:
        for a, b in zip(fcn32.get_layer(name).weights, fcn16.get_layer(name).weights, strict=True):
            assert bool(keras.ops.all(a.value == b.value)), a.path  # no 0.4 GB NumPy copies
    assert not fcn16.get_layer("score_pool4").kernel.numpy().any()

    # score_pool4 starts at zero, so FCN-16s starts as score_fr upsampled x2 then x16 ...
    x = _images(1, 128, 128, seed=6)
    score_fr = keras.Model(fcn16.input, fcn16.get_layer("score_fr").output)(x, training=False)
    b = fcn16(x, training=False).numpy()[0]
    via = fcn16.get_layer("upscore16")(fcn16.get_layer("upscore2")(score_fr)).numpy()[0]
    np.testing.assert_allclose(b, via, rtol=1e-5, atol=1e-7)
    # ... which equals FCN-32s' single x32 on linear ramps (away from the border) ...
    ramp = (0.3 * np.arange(6)[:, None] + 0.7 * np.arange(6)[None, :]).astype(np.float32)
    ramp = np.repeat(ramp[None, :, :, None], 21, axis=-1)  # (1, 6, 6, 21)
    u32 = fcn32.get_layer("upscore32")(ramp).numpy()[0, 32:-32, 32:-32]
    u16 = fcn16.get_layer("upscore16")(fcn16.get_layer("upscore2")(ramp)).numpy()[0, 32:-32, 32:-32]
    np.testing.assert_allclose(u16, u32, atol=1e-5)
    # ... and is close elsewhere: x2-then-x16 cuts the corners at each score_fr pixel centre.
    a = fcn32(x, training=False).numpy()[0, 32:-32, 32:-32]
    b = b[32:-32, 32:-32]
    assert np.abs(a - b).mean() < 0.1 * np.abs(a).mean()
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.9


def test_fcn16_file_to_fcn8_transfer_and_mismatches(models, saved_fcn16):
    fcn8 = models["fcn8"]
    copied = transfer_weights(saved_fcn16[0], fcn8)  # from the saved file
    assert {"score_fr", "score_pool4", "upscore2", "fc6"} <= set(copied)
    assert "score_pool3" not in copied and "upscore16" not in copied
    for got, saved in zip(fcn8.get_layer("score_pool4").get_weights(), saved_fcn16[3], strict=True):
        np.testing.assert_array_equal(got, saved)
        assert saved.any()

    def small(filters, classes):
        x = inputs = keras.Input((None, None, 3))
        x = keras.layers.Conv2D(filters, 3, padding="same", name="block1_conv1")(x)
        return keras.Model(inputs, keras.layers.Conv2D(classes, 1, name="score_fr")(x))

    with pytest.raises(ModelError, match="predicts 5 classes but the new model has 21"):
        transfer_weights(small(64, 5), fcn8)
    with pytest.raises(ModelError, match="layer 'block1_conv1' has weight shapes"):
        transfer_weights(small(32, 21), fcn8)


@contextlib.contextmanager
def _restoring_trainable(model):
    """Undo freezing afterwards, so the shared fixture models stay as built."""
    before = {layer.name: layer.trainable for layer in model.layers}
    try:
        yield model
    finally:
        for layer in model.layers:
            layer.trainable = before[layer.name]


def test_apply_freeze(models):
    with _restoring_trainable(models["fcn8"]) as model:
        trainable = len(model.trainable_weights)
        frozen = apply_freeze(model, ["block1_*", "fc?"])
        assert frozen == ["block1_conv1", "block1_conv2", "block1_pool", "fc6", "fc7"]
        assert len(model.trainable_weights) == trainable - 8
        assert not model.get_layer("fc7").trainable and model.get_layer("block2_conv1").trainable
        with pytest.raises(ConfigError, match=r"'block9_\*' matches no layer.*block1_conv1, "):
            apply_freeze(model, ["block9_*"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_default_recipe_freezes_the_lower_blocks(models, variant):
    with _restoring_trainable(models[variant]) as model:
        frozen = apply_freeze(model, Config().model.freeze[variant])
    blocks = {"fcn32": (1, 2, 3, 4), "fcn16": (1, 2, 3), "fcn8": ()}[variant]
    assert frozen == [f"block{b}_conv{i}" for b in blocks for i in range(1, 4 if b > 2 else 3)]


# --- other widths (model.widths)

SMALL = (16, 32, 64, 128, 128, 256, 256)


@pytest.mark.parametrize("widths", ["small", [4, 8, 8, 16, 16, 24, 24]])
def test_widths_give_the_same_layers_at_other_sizes(models, widths, tmp_path):
    model = build_fcn("fcn8", backbone_weights="none", widths=widths)
    wanted = SMALL if widths == "small" else tuple(widths)
    full = models["fcn8"]
    assert [layer.name for layer in model.layers] == [layer.name for layer in full.layers]
    names = [f"block{b}_conv{n}" for b, n in _BLOCKS] + ["fc6", "fc7"]
    assert [model.get_layer(name).filters for name in names] == list(wanted)
    assert model.get_layer("fc6").kernel.shape == (7, 7, wanted[4], wanted[5])
    assert model.get_layer("score_pool3").kernel.shape == (1, 1, wanted[2], 21)
    if widths == "small":
        assert model.count_params() == 2_728_943  # 134,489,759 at VGG16's widths
    logits = model(_images(1, 64, 96), training=False)
    assert tuple(logits.shape) == (1, 64, 96, 21)
    # Saved and loaded by the same code; the config the model carries names its widths.
    cfg = load_config(None, ["model.backbone_weights=none", f"model.widths={widths}"])
    path = save_model(model, tmp_path / "small.keras", make_info("fcn8", cfg))
    loaded, info = load_model(path)
    assert info["config"]["model"]["widths"] == widths
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert build_fcn_from_config("fcn16", cfg.model, 0.0).get_layer("fc7").filters == wanted[6]


def test_widths_errors_are_one_line():
    with pytest.raises(
        ConfigError,
        match="model.widths = 'small' is not allowed with model.backbone_weights = 'imagenet'",
    ):
        build_fcn("fcn8", widths="small")
    with pytest.raises(ConfigError, match="with model.backbone = 'mobilenetv2'"):
        build_fcn("fcn8", backbone="mobilenetv2", backbone_weights="none", widths="small")
    with pytest.raises(ConfigError, match=r"model.widths = 'tiny' is not allowed; expected null"):
        build_fcn("fcn8", backbone_weights="none", widths="tiny")
    with pytest.raises(ConfigError, match=r"model.widths = \[8, 0, 8, 8, 8, 8, 8\]"):
        build_fcn("fcn8", backbone_weights="none", widths=[8, 0, 8, 8, 8, 8, 8])
