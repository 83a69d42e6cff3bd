"""Model code as Keras users write it, fitted with ``TensorBoardViz(strict=True)`` at its
defaults, and every run read back (issue 19): a gradient histogram for every trainable
weight, at least one panel in the tbviz tab, no ``tbviz/errors``, and no warning raised
inside tbviz's own calls (turned into errors there, so ``strict`` ends ``fit`` on one).

The models are in ``tests/real_models.py``: a ViT with a position ``Embedding`` (whose
gradient is sparse on TensorFlow), Swin-style shifted windows and a patch merging, a
custom layer returning a tuple, a subclassed model with its own ``train_step`` that
nothing calls before ``fit``, ``inputs=[inputs]``, and a MobileViT-like mix.
"""

import functools
import warnings

import keras
import numpy as np
import pytest

import tbviz
from tbviz.summary import metadata
from tests import eventfiles
from tests import real_models as rm

pytestmark = pytest.mark.backends

HOOKS = ("set_model", "set_params", "on_train_begin", "on_train_end", "on_epoch_begin",
         "on_epoch_end", "on_train_batch_begin", "on_train_batch_end")


def warnings_are_errors_inside(callback):
    """Every hook Keras calls on ``callback`` runs with warnings turned into errors (only
    there: what Keras warns about in the user's own calls stays a warning)."""
    for name in HOOKS:
        hook = getattr(callback, name)

        @functools.wraps(hook)
        def strict_hook(*args, _hook=hook, **kwargs):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                if keras.backend.backend() == "torch":
                    # Keras' own keras.ops.convert_to_numpy calls np.array(tensor), and
                    # torch's Tensor.__array__ takes no copy= (NumPy 2 warns): not tbviz's.
                    warnings.filterwarnings("default", category=DeprecationWarning,
                                            message="__array__ implementation doesn't accept")
                return _hook(*args, **kwargs)

        setattr(callback, name, strict_hook)
    return callback


def tbviz_panels(run):
    acc = eventfiles.load(run)
    return [t for t in acc.Tags()["tensors"]
            if acc.SummaryMetadata(t).plugin_data.plugin_name == metadata.PLUGIN_NAME]


def fit_with_tbviz(model, log_dir, n=16, **options):
    x, y = rm.data(n)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = warnings_are_errors_inside(tbviz.TensorBoardViz(
        log_dir, probe_images=x[:4], probe_labels=y[:4], strict=True, **options))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    return cb


@pytest.mark.parametrize("name", sorted(rm.SWEEP))
def test_each_real_model_gets_every_gradient_histogram_a_tab_panel_and_no_errors(name, tmp_path):
    if name == "own_train_step" and keras.backend.backend() == "jax":
        pytest.skip("its train_step is written for TensorFlow and PyTorch")
    model = rm.SWEEP[name]()
    fit_with_tbviz(model, tmp_path)
    run = tmp_path / "train"
    tags = eventfiles.tags(run)
    acc = eventfiles.load(run)
    histograms = [t for t in tags
                  if acc.SummaryMetadata(t).plugin_data.plugin_name == "histograms"]
    grads = [t for t in histograms if t.startswith("gradients/")]
    # One gradient histogram per trainable weight, each written at the epoch's end (step 2).
    assert len(grads) == len(model.trainable_weights), (len(model.trainable_weights), grads)
    assert all(eventfiles.histogram_steps(run, t) == [2] for t in grads)
    weights = [t for t in histograms if not t.startswith(("gradients/", "activations/"))]
    assert len(weights) >= len(model.trainable_weights)
    assert tbviz_panels(run), tags
    assert "tbviz/errors" not in tags, eventfiles.texts(run, "tbviz/errors")


def test_a_vit_with_a_position_embedding_gets_its_embedding_gradient_dense(tmp_path):
    model = rm.vit_position_embedding()
    fit_with_tbviz(model, tmp_path)
    run = tmp_path / "train"
    tag = "gradients/encoder/position_embedding/embeddings"
    assert eventfiles.histogram_steps(run, tag) == [2], eventfiles.tags(run)
    acc = eventfiles.load(run)
    from tensorboard.util.tensor_util import make_ndarray
    buckets = make_ndarray(acc.Tensors(tag)[-1].tensor_proto)  # (left, right, count) rows
    # Every one of the 16 x 16 entries of the table is counted (dense, not 16 slices).
    assert buckets[:, 2].sum() == 16 * 16


def test_the_windowed_and_shifted_token_layers_are_projected_on_their_grids(tmp_path):
    model = rm.swin_windows()
    fit_with_tbviz(model, tmp_path, layers=["block0_out", "block1_out", "merge"])
    run = tmp_path / "train"
    panels = tbviz_panels(run)
    # The windowed and the shifted block outputs on the 8 x 8 grid, and the merged tokens
    # on the 4 x 4 grid.
    for layer, cell in (("block0_out", 4), ("block1_out", 4), ("merge", 8)):
        tag = f"tbviz/deconvnet/{layer}/topk"
        assert tag in panels, panels
        content, steps = eventfiles.panels(run, tag)
        assert content["rule"] == "gradient"
        patches = [t for t in steps[-1][1]["tiles"] if t["role"] == "patch"]
        assert patches and all(p["crop"] == [cell * p["row"], cell * (p["row"] + 1),
                                             cell * p["col"], cell * (p["col"] + 1)]
                               for p in patches)


def test_a_custom_layer_returning_a_tuple_has_a_histogram_per_output(tmp_path):
    fit_with_tbviz(rm.tuple_layer(), tmp_path)
    tags = eventfiles.tags(tmp_path / "train")
    assert {"activations/split/0", "activations/split/1"} <= set(tags)


def test_an_unbuilt_subclassed_model_is_set_up_after_its_first_step_and_logged_whole(tmp_path):
    if keras.backend.backend() == "jax":
        pytest.skip("its train_step is written for TensorFlow and PyTorch")
    model = rm.OwnTrainStep()
    assert not model.built  # nothing calls it before fit: Keras builds it in training mode
    cb = fit_with_tbviz(model, tmp_path)
    run = tmp_path / "train"
    tags = eventfiles.tags(run)
    # Every weight (BatchNorm's moving statistics too, and the model's own temperature):
    # its histogram, and for the trainable ones a gradient; every layer with trainable
    # weights its gradient norm and update ratio.
    for v in model.weights:
        assert any(t.endswith("/" + v.name) and not t.startswith(("gradients/", "activations/"))
                   for t in tags), v.path
    layers = [layer for layer in model.layers if layer.trainable_weights]
    for layer in layers:
        for kind in ("gradient_norm", "update_ratio"):
            assert [s for s, _ in eventfiles.scalars(run, f"{kind}/{layer.name}")] == [2], kind
    assert "gradient_norm/own_step" in tags  # the temperature, the model's own weight
    deconvnet = [cb for cb in cb.callbacks if cb.part == "deconvnet"]
    # Both conv layers (names as Keras gave them in this process) are projected.
    assert deconvnet and set(deconvnet[0].layers) == {model.conv1.name, model.conv2.name}


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="JAX and PyTorch build the model symbolically before fit, Keras "
                           "itself in inference mode")
def test_a_model_that_builds_differently_in_inference_trains_as_it_does_without_tbviz(tmp_path):
    x, y = rm.data(16)

    def trained(callbacks):
        keras.utils.set_random_seed(7)
        model = rm.CropsThenDense()
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
        return model

    alone = trained([])
    viz = tbviz.TensorBoardViz(tmp_path, probe_images=x[:4], probe_labels=y[:4])
    guest = trained([viz])
    # Built by training (24 x 24 crops: an 11 x 11 x 4 map into the head), never by tbviz's
    # inference calls (32 x 32: 15 x 15 x 4), and trained to the same weights.
    assert guest.head.kernel.shape == alone.head.kernel.shape == (11 * 11 * 4, rm.CLASSES)
    for a, b in zip(alone.weights, guest.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Its inference pass fails by itself (predict does too): the parts that need it are
    # off, and the advice says whose error it is.
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 484"):
        alone.predict(x[:2], verbose=0)
    (_, text), = eventfiles.texts(tmp_path / "train", "tbviz/errors")[-1:]
    assert "the model raises this by itself" in text
