"""A model sweep: every architecture family fits with every dashboard logged.

Each model trains one short epoch with ``TensorBoardViz(strict=True,
attribution=["saliency", "grad_cam"])`` (strict: any part that fails ends the
test instead of switching itself off), and every dashboard is read back with
TensorBoard's readers: scalars, the op graph, weight/gradient/activation
histograms, attribution heatmaps, the deconvnet's panels, feature maps, the
convergence scalars, and the tbviz panels.

The keras.applications families are marked ``zoo`` (minutes on two cores; not
in the default run): ``./scripts/test.sh -m zoo``. The ViT, the subclassed, the
two-input and a small mixed-precision model are only ``slow``.
"""

import keras
import pytest

import tbviz
from tests import eventfiles, models
from tests.test_mixed_precision import mixed_float16

N, BATCH = 8, 4
STEP = N // BATCH  # one epoch: the log is at this global step (without loss scaling)

# (family, constructor, the smallest input it takes with weights=None)
APPLICATIONS = [
    ("ResNet50", 32), ("ResNet50V2", 32), ("MobileNet", 32), ("MobileNetV2", 32),
    ("MobileNetV3Small", 32), ("EfficientNetB0", 32), ("EfficientNetV2B0", 32),
    ("DenseNet121", 32), ("InceptionV3", 75), ("InceptionResNetV2", 75), ("Xception", 71),
    ("NASNetMobile", 32), ("VGG16", 32), ("ConvNeXtTiny", 32), ("RegNetX002", 32),
]


def _fits_with_every_dashboard(model, shape, log_dir, classes=3, pixels=1.0):
    """Fit ``model`` on random images of ``shape`` (values in [0, pixels]) and labels of
    ``classes`` classes, check every dashboard; returns the run's reader."""
    x, y = models.data(N, shape, classes=classes)
    viz, acc = _fit_and_read(model, x * pixels, y, log_dir)
    _check_dashboards(viz, acc, shape)
    return acc


def _fit_and_read(model, x, y, log_dir):
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=not _ends_in_softmax(model)))
    viz = tbviz.TensorBoardViz(log_dir, probe_images=x[:2], probe_labels=y[:2], top_k=2,
                               attribution=["saliency", "grad_cam"], strict=True,
                               convergence={"probe_images": x[:4]})  # debiased CKA needs 4
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[viz])
    return viz, eventfiles.load(log_dir / "train")


def _ends_in_softmax(model):
    act = getattr(model.layers[-1], "activation", None)
    return getattr(act, "__name__", "") == "softmax"


def _check_dashboards(viz, acc, image_shape):
    # The log's step is the optimizer's: a loss-scale optimizer (mixed precision) skips the
    # first steps whose float16 gradients overflow, so read it rather than assume it.
    step_now = int(viz.model.optimizer.iterations.numpy())
    tags = eventfiles.tags(acc)
    assert "tbviz/errors" not in tags
    assert acc.Tags()["graph"]  # Graphs dashboard
    assert [s for s, _ in eventfiles.scalars(acc, "epoch_loss")] == [0]
    weights = [t for t in tags if t.endswith("/kernel") and not t.startswith(
        ("gradients/", "activations/"))]
    assert weights and eventfiles.histogram_steps(acc, weights[0]) == [step_now]
    grads = [t for t in tags if t.startswith("gradients/")]
    acts = [t for t in tags if t.startswith("activations/")]
    assert grads and acts and eventfiles.histogram_steps(acc, grads[-1]) == [step_now]
    for method in ("saliency", "grad_cam"):
        (step, images), = eventfiles.images(acc, f"attribution/{method}")
        assert step == step_now and len(images) == 2 and images[0].shape == image_shape[:2] + (3,)
        content, steps = eventfiles.panels(acc, f"tbviz/attribution/{method}")
        assert content["method"] == method and steps[0][0] == step_now and len(steps[0][2]) == 2
    deconv = [cb for cb in viz.callbacks if type(cb).__name__ == "DeconvnetCallback"]
    assert deconv, [type(cb).__name__ for cb in viz.callbacks]
    for layer in deconv[0].layers:
        (step, header, tiles), = eventfiles.panels(acc, f"tbviz/deconvnet/{layer}/topk")[1]
        assert step == step_now and len(tiles) == 4, layer  # top 2 projections, 2 patches
        roles = [t["role"] for t in header["tiles"]]
        assert roles == ["projection"] * 2 + ["patch"] * 2, roles
        assert tiles[0].std() > 0, layer
    maps = [t for t in tags if t.startswith("feature_maps/")]
    assert maps and all(eventfiles.images(acc, t)[-1][0] == step_now for t in maps)
    cka = [t for t in tags if t.startswith("convergence/") and t.endswith("/vs_start")]
    assert cka and all(eventfiles.scalars(acc, t)[-1][0] == step_now for t in cka)


@pytest.mark.slow
@pytest.mark.zoo
@pytest.mark.timeout(1800)  # the largest take minutes on a loaded 2-core machine
@pytest.mark.parametrize("name,size", APPLICATIONS, ids=[n for n, _ in APPLICATIONS])
def test_every_keras_applications_family_fits_with_every_dashboard(tmp_path, name, size):
    shape = (size, size, 3)
    model = getattr(keras.applications, name)(weights=None, input_shape=shape, classes=4)
    _fits_with_every_dashboard(model, shape, tmp_path, classes=4, pixels=255.0)


@pytest.mark.slow
def test_a_vision_transformer_fits_with_every_dashboard(tmp_path):
    acc = _fits_with_every_dashboard(models.vit((32, 32, 3)), (32, 32, 3), tmp_path)
    # The tokens on their grid: the last block's output, the deconvnet's default token layer.
    assert eventfiles.images(acc, "feature_maps/block1_out")


@pytest.mark.slow
def test_a_subclassed_model_fits_with_every_dashboard(tmp_path):
    model = models.Subclassed()
    model(models.data(1)[0])  # a subclassed model knows its input once called, as tbviz says
    _fits_with_every_dashboard(model, (12, 12, 3), tmp_path)


@pytest.mark.slow
def test_a_mixed_precision_model_fits_with_every_dashboard(tmp_path):
    with mixed_float16():
        _fits_with_every_dashboard(models.functional_bn_nested(), (12, 12, 3), tmp_path)


@pytest.mark.slow
@pytest.mark.zoo
@pytest.mark.timeout(1800)
def test_a_mixed_precision_keras_application_fits_with_every_dashboard(tmp_path):
    with mixed_float16():
        _fits_with_every_dashboard(models.with_application((32, 32, 3)), (32, 32, 3), tmp_path)


def _two_image_model(shape=(12, 12, 3), classes=3):
    """Two photos (say, two views of one object), one conv tower each, one head."""
    left, right = keras.Input(shape, name="left"), keras.Input(shape, name="right")
    towers = []
    for inp in (left, right):
        t = keras.layers.Conv2D(4, 3, activation="relu", name=f"{inp.name}_conv")(inp)
        towers.append(keras.layers.GlobalAveragePooling2D(name=f"{inp.name}_gap")(t))
    out = keras.layers.Dense(classes, name="head")(keras.layers.Concatenate(name="both")(towers))
    return keras.Model([left, right], out, name="two_views")


@pytest.mark.slow
def test_a_two_image_input_model_logs_what_does_not_need_one_image_input(tmp_path):
    x1, y = models.data(N)
    x2, _ = models.data(N, seed=1)
    model = models.compile(_two_image_model())
    # Histograms take the model's own inputs; graph and losses need none.
    parts = [tbviz.GraphCallback(tmp_path, strict=True), tbviz.LossCallback(tmp_path, strict=True),
             tbviz.HistogramCallback(tmp_path, probe_data=([x1[:2], x2[:2]], y[:2]),
                                     strict=True)]
    model.fit([x1, x2], y, batch_size=BATCH, epochs=1, verbose=0, callbacks=parts)
    acc = eventfiles.load(tmp_path / "train")
    assert acc.Tags()["graph"] and "tbviz/errors" not in eventfiles.tags(acc)
    for tag in ("left_conv/kernel", "gradients/right_conv/kernel", "activations/right_conv"):
        assert eventfiles.histogram_steps(acc, tag) == [STEP], tag
    # Image probes need one image input; asking for them says so at train begin.
    viz = tbviz.TensorBoardViz(tmp_path / "attr", probe_images=x1[:2], histograms=False,
                               attribution=["saliency"], strict=True)
    with pytest.raises(ValueError, match="2 inputs; tbviz probes need one image input"):
        model.fit([x1, x2], y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[viz])
