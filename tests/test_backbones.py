"""ResNet-50 and MobileNetV2 under the same FCN decoders, weights, freezing, training, inference
and export as VGG16 (whose own tests are in test_models.py and the command tests)."""

import gc

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kfcn import train
from kfcn.config import BACKBONE_NAMES, Config, load_config
from kfcn.errors import ConfigError, ModelError
from kfcn.evaluate import evaluate_model
from kfcn.export import export_model
from kfcn.inference import TTA
from kfcn.models import (
    BACKBONES,
    VARIANTS,
    apply_freeze,
    backbone_layers,
    backbone_of,
    build_fcn,
    load_model,
    transfer_weights,
)
from kfcn.padding import predict_logits
from kfcn.predict import predict_images
from kfcn.train import TrainOptions, train_stage

from .shards import write_shards

OTHERS = ("resnet50", "mobilenetv2")
SCORES = ("score_fr", "score_pool4", "score_pool3")
FACTORIES = {"resnet50": keras.applications.ResNet50, "mobilenetv2": keras.applications.MobileNetV2}

# tf.lite.Interpreter is deprecated in favour of ai_edge_litert, which kfcn does not depend on.
# Keras warns about its own `_operations_by_depth` bookkeeping when it loads application weights.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore:Skipping nested container"),
]


@pytest.fixture(autouse=True)
def _free_models():
    yield
    gc.collect()


def _images(n, h, w, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, h, w, 3)).astype(np.float32)


def _randomise_scores(model, seed=0):
    """Random zero-sum score kernels (they start at zero), so predictions vary over classes."""
    rng = np.random.default_rng(seed)
    for name in SCORES:
        if name in {layer.name for layer in model.layers}:
            kernel, bias = model.get_layer(name).get_weights()
            kernel = rng.normal(size=kernel.shape)
            kernel -= kernel.mean(axis=-2, keepdims=True)
            model.get_layer(name).set_weights([kernel, np.zeros_like(bias)])


# --- architecture


def test_registry_matches_the_config_choices():
    assert tuple(BACKBONES) == BACKBONE_NAMES
    with pytest.raises(ConfigError, match="model.backbone = 'resnet18'.*vgg16, resnet50"):
        build_fcn("fcn8", backbone="resnet18", backbone_weights="none")
    with pytest.raises(ConfigError, match="model.backbone = 'resnet18'"):
        load_config(None, ["model.backbone=resnet18"])


@pytest.mark.parametrize("backbone", OTHERS)
def test_variants_strides_and_stage_transfer(backbone):
    keras.utils.set_random_seed(0)
    models = {
        v: build_fcn(v, num_classes=5, backbone=backbone, backbone_weights="none") for v in VARIANTS
    }
    x = _images(2, 64, 96)
    net = BACKBONES[backbone]
    for variant, model in models.items():
        assert backbone_of(model) == backbone
        assert model(x, training=False).shape == (2, 64, 96, 5)
        assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
        for name in SCORES[: VARIANTS.index(variant) + 1]:
            assert not model.get_layer(name).get_weights()[0].any(), name  # zero-initialised
    # The decoders read the backbone's features at strides 8, 16 and 32.
    probe = keras.Model(
        models["fcn8"].input, [models["fcn8"].get_layer(n).output for n in net.FEATURES.values()]
    )
    for stride, feature in zip(net.FEATURES, probe(x[:1]), strict=True):
        assert feature.shape[1:3] == (64 // stride, 96 // stride), stride
    # Stage transfer: every layer of the earlier stage, the new skip stays zero.
    _randomise_scores(models["fcn32"], seed=1)
    copied = transfer_weights(models["fcn32"], models["fcn16"])
    assert "score_fr" in copied and "head_conv" in copied and "score_pool4" not in copied
    first, last = backbone_layers(models["fcn32"])[0], backbone_layers(models["fcn32"])[-1]
    for name in ("score_fr", "head_conv", "head_bn", first, last):
        for a, b in zip(
            models["fcn16"].get_layer(name).get_weights(),
            models["fcn32"].get_layer(name).get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
    assert "score_pool4" in transfer_weights(models["fcn16"], models["fcn8"])
    # The new skip starts out contributing nothing: fusing it changes no value.
    fcn8 = models["fcn8"]
    probe = keras.Model(
        fcn8.input, [fcn8.get_layer(n).output for n in ("upscore_pool4", "fuse_pool3")]
    )
    before, fused = probe(x)
    np.testing.assert_array_equal(fused.numpy(), before.numpy())
    assert np.abs(before.numpy()).max() > 0
    other = next(name for name in OTHERS if name != backbone)
    with pytest.raises(ModelError, match=f"on {other} but the new model is on {backbone}"):
        transfer_weights(
            build_fcn("fcn32", backbone=other, backbone_weights="none"), models["fcn16"]
        )


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_default_freeze_fits_every_backbone(backbone):
    model = build_fcn("fcn8", num_classes=3, backbone=backbone, backbone_weights="none")
    names = [layer.name for layer in model.layers]
    parts = {s: backbone_layers(model, s) for s in (4, 8, 16, 32)}
    for small, large in ((4, 8), (8, 16), (16, 32)):
        assert set(parts[small]) < set(parts[large])
    assert parts[32] == backbone_layers(model)
    assert not set(parts[32]) & {"score_fr", "score_pool4", "score_pool3", "fc6", "head_conv"}
    recipe = Config().model.freeze
    frozen32 = apply_freeze(model, recipe["fcn32"])
    assert frozen32 == parts[16] and all(not model.get_layer(n).trainable for n in frozen32)
    assert all(
        model.get_layer(n).trainable
        for n in names
        if n not in frozen32 and model.get_layer(n).weights and not n.startswith("upscore")
    )
    with pytest.raises(ConfigError, match="no stride-2 features"):
        apply_freeze(model, ["backbone:stride2"])
    with pytest.raises(ConfigError, match="backbone:strideN"):
        apply_freeze(model, ["backbone:top"])


@pytest.mark.parametrize("backbone", OTHERS)
def test_weight_decay_reaches_every_kernel(backbone):
    model = build_fcn(
        "fcn32", num_classes=3, backbone=backbone, backbone_weights="none", weight_decay=1e-3
    )
    kernels = [
        layer
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
        and layer.trainable
    ]
    assert len(model.losses) == len(kernels) > 50
    bare = build_fcn(
        "fcn32", num_classes=3, backbone=backbone, backbone_weights="none", weight_decay=0
    )
    assert not bare.losses


@pytest.mark.parametrize("backbone", ["mobilenetv2"])  # ResNet-50 shares VGG16's layer
def test_preprocessing_is_stored_in_the_model_file(backbone, tmp_path):
    from kfcn.models import make_info, save_model

    keras.utils.set_random_seed(0)
    model = build_fcn("fcn16", num_classes=3, backbone=backbone, backbone_weights="none")
    _randomise_scores(model)
    cfg = Config()
    cfg.model.num_classes, cfg.model.backbone = 3, backbone
    path = save_model(model, tmp_path / "m.keras", make_info("fcn16", cfg))
    loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    x = _images(1, 64, 64)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    pre = loaded.get_layer("preprocess")
    expected = (
        x / 127.5 - 1 if backbone == "mobilenetv2" else x[..., ::-1] - [103.939, 116.779, 123.68]
    )
    np.testing.assert_allclose(pre(x).numpy(), expected, atol=1e-3)
    assert loaded.get_layer("preprocess").compute_dtype == "float32"


def test_bench_table_gives_speed_ups_over_vgg16():
    from bench.backbone_bench import table

    def row(backbone, params, median):
        t = {"median": median, "min": median, "max": median}
        return {
            "backbone": backbone,
            "variant": "fcn8",
            "params": params,
            "file_mb": 1.0,
            "forward_s": t,
        }

    text = table({"size": 512, "rows": [row("vgg16", 10, 4.0), row("mobilenetv2", 2, 0.5)]})
    assert "| vgg16 | fcn8 | 10 | 1.0 MB | 4.000 (4.000–4.000) | 1.0× |" in text
    assert "| mobilenetv2 | fcn8 | 2 | 1.0 MB | 0.500 (0.500–0.500) | 8.0× |" in text


# --- weights


@pytest.mark.parametrize("backbone", OTHERS)
def test_offline_weights_file(backbone, tmp_path):
    """A Keras weights file without the classifier top (as an offline machine would have)."""
    keras.utils.set_random_seed(7)
    app = FACTORIES[backbone](include_top=False, weights=None, input_shape=(None, None, 3))
    bn = next(layer for layer in app.layers if isinstance(layer, keras.layers.BatchNormalization))
    bn.moving_mean.assign(np.linspace(-1, 1, bn.moving_mean.shape[0]))  # not Keras's init
    path = tmp_path / f"{backbone}_notop.weights.h5"
    app.save_weights(path)
    model = build_fcn("fcn8", num_classes=3, backbone=backbone, backbone_weights=str(path))
    checked = 0
    for layer in app.layers:
        if layer.weights:
            for got, want in zip(
                model.get_layer(layer.name).get_weights(), layer.get_weights(), strict=True
            ):
                np.testing.assert_array_equal(got, want)
            checked += 1
    assert checked > 50
    assert not model.get_layer("score_fr").get_weights()[0].any()
    # 'imagenet' goes through the same loader; a failed download is one line naming the fix.
    with pytest.raises(ModelError, match="not found.*without the classifier top"):
        build_fcn("fcn8", backbone=backbone, backbone_weights=str(tmp_path / "missing.h5"))
    vgg_file = tmp_path / "vgg_like.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(vgg_file)
    with pytest.raises(
        ModelError, match=f"vgg_like.weights.h5: cannot load as {BACKBONES[backbone].LABEL}"
    ):
        build_fcn("fcn8", backbone=backbone, backbone_weights=str(vgg_file))


def test_imagenet_download_failure_is_one_line(monkeypatch):
    def no_network(include_top, weights, input_shape):
        assert not include_top and weights == "imagenet"
        raise Exception("URL fetch failure on https://example: Name or service not known")

    monkeypatch.setattr(keras.applications, "MobileNetV2", no_network)
    with pytest.raises(ModelError, match="cannot get the ImageNet MobileNetV2 weights.*URL fetch"):
        build_fcn("fcn8", backbone="mobilenetv2")


# --- everything downstream, per backbone


TINY = [
    "model.backbone_weights=none",
    "data.crop_size=64",
    "train.batch_size=2",
    "train.epochs=1",
    "train.steps_per_epoch=1",
    "train.validate=false",
    "model.dropout=0.1",
    # The random backbones stay fixed: checkpoints and Adam state stay small, and the freeze
    # names work on every backbone.
    "model.freeze.fcn32=[backbone]",
    "model.freeze.fcn16=[backbone:stride32]",
    "model.freeze.fcn8=[backbone]",
]


class _Interrupt(Exception):
    pass


def _train(cfg, options, callback=None, monkeypatch=None):
    if callback is not None:
        real = train._callbacks
        monkeypatch.setattr(train, "_callbacks", lambda *a, **k: real(*a, **k) + [callback])
    try:
        train_stage(cfg, options, echo=lambda *_: None)
    finally:
        if callback is not None:
            monkeypatch.undo()


def _fcn32_then_fcn8(backbone, tmp_path, monkeypatch, resume):
    """FCN-32s (optionally killed at the start of its second epoch and resumed), then FCN-8s
    straight from it (`--init`); returns (data, run)."""
    data = tmp_path / "data"
    write_shards(data, "train", 4, size=(64, 64), seed=1, per_shard=4)
    write_shards(data, "val", 2, size=(40, 72), seed=2, per_shard=2)
    run = tmp_path / "run"
    cfg = load_config(None, TINY + [f"model.backbone={backbone}"])
    if resume:
        started = []

        class Interrupt(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                started.append(epoch)
                if epoch == 1 and len(started) == 2:
                    raise _Interrupt

        two = load_config(None, TINY + [f"model.backbone={backbone}", "train.epochs=2"])
        with pytest.raises(_Interrupt):
            _train(two, TrainOptions("fcn32", data, run), Interrupt(), monkeypatch)
        assert not (run / "fcn32" / "final.keras").exists()
        _train(two, TrainOptions("fcn32", data, run), Interrupt(), monkeypatch)
        assert started == [0, 1, 1]  # the resumed run trained the second epoch only
    else:
        _train(cfg, TrainOptions("fcn32", data, run))
    # The stage chain itself is backbone-independent (tests/test_train.py trains all three
    # stages); here the stride-8 skip on this backbone's features is what is new.
    _train(cfg, TrainOptions("fcn8", data, run, init=run / "fcn32" / "final.keras"))
    fcn8, info = load_model(run / "fcn8" / "final.keras")
    assert backbone_of(fcn8) == backbone and info["config"]["model"]["backbone"] == backbone
    fcn32, _ = load_model(run / "fcn32" / "final.keras")
    np.testing.assert_array_equal(  # the backbone stays frozen in FCN-8s
        fcn8.get_layer(backbone_layers(fcn8, 8)[-1]).get_weights()[0],
        fcn32.get_layer(backbone_layers(fcn32, 8)[-1]).get_weights()[0],
    )
    assert fcn8.get_layer("score_pool3").kernel.numpy().any()  # its stride-8 skip learned
    return data, run


@pytest.mark.slow
def test_resnet50_trains_resumes_and_evaluates(tmp_path, monkeypatch):
    """ResNet-50 (batch normalization, zero padding): killed and resumed, FCN-8s from FCN-32s,
    scored. Ensembles, TTA, predict and export of a BatchNorm backbone: the MobileNetV2 test."""
    data, run = _fcn32_then_fcn8("resnet50", tmp_path, monkeypatch, resume=True)
    report = evaluate_model(run, data, "val")
    assert report["num_images"] == 2 and 0 <= report["pixel_accuracy"] <= 1


@pytest.mark.slow
def test_mobilenetv2_trains_evaluates_predicts_and_exports(tmp_path, monkeypatch):
    """MobileNetV2 (the edge backbone) from training to an ensemble with TTA, predict, and
    SavedModel and TFLite files that give kfcn predict's masks. Resume: the ResNet-50 test."""
    data, run = _fcn32_then_fcn8("mobilenetv2", tmp_path, monkeypatch, resume=False)
    both = evaluate_model(
        [run / "fcn32" / "final.keras", run / "fcn8" / "final.keras"],
        data,
        "val",
        tta=TTA(flip=True, scales=(1.0,)),  # other scales: test_inference.py (each is a retrace)
    )
    assert both["num_images"] == 2 and both["models"][1].endswith("fcn8/final.keras")
    assert both["tta"]["flip"] and 0 <= both["mean_iou"] <= 1

    photo = tmp_path / "photo.png"
    Image.fromarray(_images(1, 45, 70, seed=3)[0].astype(np.uint8)).save(photo)
    result = predict_images(run, [photo], tmp_path / "masks", tta=TTA(flip=True, scales=(1.0,)))
    assert not result.failures and result.num_inputs == 1
    mask = np.array(Image.open(tmp_path / "masks" / "photo.png"))
    assert mask.shape == (45, 70) and mask.max() < 21

    # Export: the SavedModel gives kfcn predict's mask and probabilities; TFLite for one size.
    from kfcn.models import save_model

    fcn8, info = load_model(run / "fcn8" / "final.keras")
    _randomise_scores(fcn8, seed=4)
    random8 = save_model(fcn8, tmp_path / "random8.keras", info)
    image = _images(1, 45, 70, seed=5)[0].astype(np.uint8)
    logits = predict_logits(fcn8, image.astype(np.float32))  # (45, 70, C)
    want, probs = logits.argmax(-1), tf.nn.softmax(logits).numpy()
    export_model(random8, "saved_model", tmp_path / "sm")
    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    out = serve(image=tf.constant(image))
    np.testing.assert_array_equal(out["mask"].numpy(), want)
    np.testing.assert_allclose(out["probabilities"].numpy(), probs, atol=1e-4)
    export_model(random8, "tflite", tmp_path / "m.tflite", (45, 70))
    lite = tf.lite.Interpreter(model_path=str(tmp_path / "m.tflite"))
    out = lite.get_signature_runner("serving_default")(image=image[None])
    np.testing.assert_allclose(out["probabilities"][0], probs, atol=1e-3)
    assert (out["mask"][0] == want).mean() > 0.99
