"""tbviz is a guest in the training run: a failing part never ends ``fit``.

A failure injected into the pure function each part calls (at setup or at a
trigger) switches that part off, says so once (part, layer, cause, what to do) in
a warning and in the ``tbviz/errors`` text summary, and every other part goes on
logging. ``strict=True`` re-raises. Errors in the user's own arguments still end
``fit`` at train begin.
"""

import logging
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import tbviz
from tbviz.callbacks.feature_maps import FeatureMapsCallback
from tests import eventfiles, models

EPOCHS, BATCH, N = 2, 8, 16
LAST_STEP = EPOCHS * N // BATCH

#: One tag per part that shows it logged, and how to read it.
PROOF = {
    "graph": lambda acc: acc.Tags()["graph"],
    "losses": lambda acc: "epoch_loss" in eventfiles.tags(acc),
    "histograms": lambda acc: LAST_STEP in eventfiles.histogram_steps(acc, "conv1/kernel"),
    "attribution": lambda acc: _last("attribution/saliency", acc),
    "deconvnet": lambda acc: _last_panel("tbviz/deconvnet/conv1/topk", acc),
    "feature_maps": lambda acc: _last("feature_maps/conv1", acc),
    "synthesis": lambda acc: _last("synthesis/conv2/0", acc),
    "convergence": lambda acc: _last_scalar("convergence/conv1/vs_previous", acc),
}


#: Parts guarded per layer or method: a failure switches off that one only.
PER_ITEM = {"attribution", "feature_maps", "synthesis"}


def _last(tag, acc):
    return tag in eventfiles.tags(acc) and eventfiles.images(acc, tag)[-1][0] == LAST_STEP


def _last_scalar(tag, acc):
    return tag in eventfiles.tags(acc) and eventfiles.scalars(acc, tag)[-1][0] == LAST_STEP


def _last_panel(tag, acc):
    return tag in eventfiles.tags(acc) and eventfiles.panels(acc, tag)[1][-1][0] == LAST_STEP


class Injected(RuntimeError):
    pass


def _raiser(original, from_call: int, error):
    """``original``, except that calls number ``from_call`` and later raise ``error``."""
    calls = []

    def fn(*args, **kwargs):
        calls.append(1)
        if len(calls) >= from_call:
            raise error
        return original(*args, **kwargs)
    return fn


def _viz(log_dir, x, y, **kw):
    return tbviz.TensorBoardViz(
        log_dir, probe_images=x[:2], probe_labels=y[:2], top_k=2, attribution=["saliency"],
        synthesis={"maximize": {"conv2": 1}, "steps": 2}, losses={"every_n_steps": None},
        convergence={"probe_images": x[:4]}, **kw)  # debiased CKA needs 4 images


def _fit(model, x, y, callbacks, **kw):
    return models.compile(model).fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0,
                                     callbacks=callbacks, shuffle=False, **kw)


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "tbviz" and r.levelno == logging.WARNING]


# part, module and function it calls, the call that fails first (1: at setup), the error
INJECTIONS = [
    ("graph", "tbviz.core.graphs", "op_graph", 1, Injected("injected: trace failed")),
    ("losses", "tbviz.callbacks.losses", "numeric_logs", 1, Injected("injected")),
    ("histograms", "tbviz.summary.histograms", "write", 1, Injected("injected")),
    ("attribution", "tbviz.methods.attribution", "saliency", 2,
     tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor (injected)")),
    ("deconvnet", "tbviz.methods.deconvnet", "projector", 1, Injected("injected")),
    ("feature_maps", "tbviz.callbacks.feature_maps", "map_grids", 1, Injected("injected")),
    ("synthesis", "tbviz.methods.synthesis", "maximize_activation", 1, Injected("injected")),
    ("convergence", "tbviz.callbacks.convergence", "cka_from_grams", 1, Injected("injected")),
]


@pytest.mark.parametrize("part,module,name,from_call,error", INJECTIONS,
                         ids=[i[0] for i in INJECTIONS])
def test_a_failing_part_is_switched_off_and_every_other_part_goes_on(
        tmp_path, monkeypatch, caplog, part, module, name, from_call, error):
    import importlib

    mod = importlib.import_module(module)
    monkeypatch.setattr(mod, name, _raiser(getattr(mod, name), from_call, error))
    x, y = models.data(N)
    history = _fit(models.sequential(), x, y, [_viz(tmp_path, x, y)])

    assert len(history.history["loss"]) == EPOCHS  # fit ran to the end
    acc = eventfiles.load(tmp_path / "train")
    for other, logged in PROOF.items():
        assert bool(logged(acc)) == (other != part), other
    said = [w for w in _warnings(caplog) if w.startswith(f"tbviz: {part} failed")]
    # Feature maps are switched off layer by layer (conv1 and conv2: two warnings, and
    # the kernels go on); every other part here fails as a whole, once.
    assert len(said) == (2 if part == "feature_maps" else 1), _warnings(caplog)
    assert "injected" in said[0]
    assert "training goes on" in said[0] and "What to do:" in said[0]
    if part == "attribution":  # out of memory: the advice is about memory
        assert "max_batch" in said[0] and "'saliency' is off" in said[0]
    if part == "feature_maps":
        assert "layer 'conv1'" in said[0]
        assert _last("kernels/conv1", acc)
    errors = eventfiles.texts(acc, "tbviz/errors")
    assert all(line.removeprefix("* ") in errors[-1][1] for line in said)
    # What each part that logs at epoch ends cost is in the run, for every log it wrote.
    # (Parts switched off item by item still run, if only to skip their items.)
    for other in ("histograms", "attribution", "deconvnet", "feature_maps", "synthesis",
                  "convergence"):
        tag = f"tbviz/cost/{other}"
        if other == part and part not in PER_ITEM:
            assert tag not in eventfiles.tags(acc)
        else:
            costs = eventfiles.scalars(acc, tag)
            assert [s for s, _ in costs] == [LAST_STEP // 2, LAST_STEP], other
            assert all(np.isfinite(v) and v > 0 for _, v in costs)


def test_an_op_without_gradient_in_the_inference_pass_leaves_the_forward_parts_on(
        tmp_path, caplog):
    x, y = models.data(N)
    _fit(models.with_no_gradient_layer(), x, y, [])  # the model itself trains fine
    viz = tbviz.TensorBoardViz(tmp_path, probe_images=x[:2], probe_labels=y[:2], top_k=2,
                               layers=["conv1"], attribution=["saliency", "grad_cam"],
                               losses={"every_n_steps": None})
    history = _fit(models.with_no_gradient_layer(), x, y, [viz])

    assert len(history.history["loss"]) == EPOCHS
    acc = eventfiles.load(tmp_path / "train")
    errors = eventfiles.texts(acc, "tbviz/errors")[-1][1]
    # Saliency and the gradient histograms differentiate through the smoothing: each is
    # switched off by itself, saying which layer and op.
    for what in ("'saliency' is off", "'gradient and activation histograms' is off"):
        assert what in errors, errors
    assert "layer 'smooth'" in errors and "ResizeArea" in errors
    assert "no gradient" in errors
    # Grad-CAM (on conv2, after the smoothing), the deconvnet of conv1 (before it),
    # feature maps, weight histograms and losses do not need that gradient: they
    # logged at the last step.
    assert _last("attribution/grad_cam", acc)
    assert "attribution/saliency" not in eventfiles.tags(acc)
    assert _last_panel("tbviz/deconvnet/conv1/topk", acc)
    assert _last("feature_maps/conv2", acc)
    assert LAST_STEP in eventfiles.histogram_steps(acc, "conv2/kernel")
    assert eventfiles.histogram_steps(acc, "gradients/conv2/kernel") == []
    assert [s for s, _ in eventfiles.scalars(acc, "epoch_loss")] == [0, 1]


def test_strict_re_raises_the_failure(tmp_path):
    x, y = models.data(N)
    viz = tbviz.TensorBoardViz(tmp_path, probe_images=x[:2], probe_labels=y[:2],
                               layers=["conv1"], attribution=["saliency"], strict=True)
    with pytest.raises(LookupError, match="ResizeArea"):
        _fit(models.with_no_gradient_layer(), x, y, [viz])


def test_the_users_own_argument_errors_still_end_fit_at_train_begin(tmp_path):
    x, y = models.data(N)
    cb = FeatureMapsCallback(tmp_path, probe_images=x[:2], layers=["no_such_layer"])
    with pytest.raises(ValueError, match="unknown layer.*no_such_layer.*conv1"):
        _fit(models.sequential(), x, y, [cb])


def test_a_log_dir_that_disappears_after_start_does_not_end_fit(tmp_path, caplog):
    x, y = models.data(N)
    log_dir = tmp_path / "run"

    class ReplaceLogDirByAFile(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                shutil.rmtree(log_dir)
                log_dir.write_text("not a folder any more")

    history = _fit(models.sequential(), x, y,
                   [ReplaceLogDirByAFile(), tbviz.LossCallback(log_dir)],
                   validation_data=(x[:8], y[:8]))
    assert len(history.history["loss"]) == EPOCHS
    said = [w for w in _warnings(caplog) if w.startswith("tbviz: losses failed")]
    assert len(said) == 1 and "log directory cannot be written" in said[0], _warnings(caplog)
    assert os.path.isfile(log_dir)  # tbviz did not fight the user's files
