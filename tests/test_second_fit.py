"""A second ``fit`` with the same callback reuses the first one's setup (issue 19): the
probes traced for a model are kept per model and found again while its layers and
weights are the same; freezing a layer sets up only what depends on it."""

import pytest

import tbviz
from tbviz import backend
from tbviz.core import probes
from tests import eventfiles, models

pytestmark = pytest.mark.backends


def _fit(model, x, y, viz):
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[viz])


def test_a_second_fit_traces_nothing_new_and_freezing_a_layer_only_the_gradients(tmp_path):
    model = models.compile(models.sequential())
    x, y = models.data(16)
    viz = tbviz.TensorBoardViz(tmp_path, probe_images=x[:4], probe_labels=y[:4])
    _fit(model, x, y, viz)
    first = probes.cached(model)
    deconvnet = next(cb for cb in viz.callbacks if cb.part == "deconvnet")
    traces = deconvnet._projector.trace_count
    assert {key[0] for key in first} >= {"histograms", "convergence", "op_graph"}

    _fit(model, x, y, viz)
    again = probes.cached(model)
    assert again.keys() == first.keys() and all(again[k] is first[k] for k in first)
    # The same projector again; eager PyTorch compiles nothing, and counts each run instead.
    assert deconvnet._projector.trace_count == traces or backend.name == "torch"
    # ... and the second fit logged as the first did.
    run = tmp_path / "train"
    assert eventfiles.histogram_steps(run, "gradients/conv1/kernel") == [2, 4]

    model.get_layer("conv1").trainable = False
    models.compile(model)  # (JAX's trainer needs it for the freeze; the steps start again)
    _fit(model, x, y, viz)
    new = {key[0] for key in probes.cached(model).keys() - first.keys()}
    assert new == {"histograms"}  # the gradients of other weights; nothing else changed
    assert deconvnet._projector.trace_count == traces or backend.name == "torch"
    # (TensorBoard's reader keeps or drops the steps before a restart by the file's kind)
    assert eventfiles.histogram_steps(run, "gradients/conv2/kernel")[-1] == 2
