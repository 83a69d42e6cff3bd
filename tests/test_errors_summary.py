"""``tbviz/errors``: one text per run that lists every part off and every notice, rewritten
whenever the list changes, so its last event is the whole story of the fit."""

import itertools

import keras
import numpy as np
import pytest

import tbviz
from tbviz.callbacks import convergence, histograms
from tests import eventfiles

pytestmark = pytest.mark.backends


class Injected(RuntimeError):
    pass


def _fails(monkeypatch, module, name):
    def fn(*args, **kwargs):
        raise Injected(f"injected into {name}")
    monkeypatch.setattr(module, name, fn)


def _mlp():
    """No Conv2D and no tokens: the deconvnet has nothing to project (a notice)."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Dense(6, activation="relu", name="hidden")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x), name="mlp")
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_the_last_errors_event_lists_every_part_off_and_every_notice(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 8, 8, 3), dtype=np.float32), rng.integers(0, 3, 8)
    model = _mlp()
    viz = tbviz.TensorBoardViz(tmp_path, probe_images=x[:4], probe_labels=y[:4], graph=False)
    _fails(monkeypatch, histograms, "weights_by_layer")   # at train begin (setup)
    _fails(monkeypatch, convergence, "cka_from_grams")    # at the first trigger, step 2
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[viz])
    run = tmp_path / "train"
    texts = eventfiles.texts(run, "tbviz/errors")
    last = texts[-1][1]
    assert "histograms failed at setup" in last and "injected into weights_by_layer" in last
    assert "convergence failed at step 2" in last and "injected into cka_from_grams" in last
    assert "deconvnet images are off: model 'mlp' has no Conv2D layer" in last
    assert len(last.splitlines()) == 3, last
    # Written again at each change, never a shorter list within the fit.
    assert [s for s, _ in texts] == sorted(s for s, _ in texts)
    assert all(len(a.splitlines()) <= len(b.splitlines())
               for (_, a), (_, b) in itertools.pairwise(texts))

    # A second fit without the failures: the list is rewritten, and the notice still holds.
    monkeypatch.undo()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[viz])
    (step, last), = eventfiles.texts(run, "tbviz/errors")[-1:]
    assert step == 4 and last.splitlines() == [
        line for line in texts[-1][1].splitlines() if "deconvnet images are off" in line]
