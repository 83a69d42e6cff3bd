"""Attention maps and attention rollout (Abnar & Zuidema 2020) of vision transformers.

References are computed independently: the scores by calling the attention layer
itself eagerly (``return_attention_scores=True``) on a sub-model's output, rollout by
an explicit loop over layers in NumPy; they agree to float32 rounding.
"""

import keras
import numpy as np
import pytest

import tbviz
from tbviz.callbacks.attention import AttentionCallback
from tbviz.methods import attention
from tests import eventfiles, models
from tests import real_models as rm

pytestmark = pytest.mark.backends

SHAPE = (32, 48, 3)  # 8-pixel patches: a 4 x 6 grid and a class token


def _reference_scores(model, x, block):
    norm = keras.Model(model.input, model.get_layer(f"block{block}_norm1").output)
    t = norm(x, training=False)
    _, scores = model.get_layer(f"block{block}_attn")(t, t, return_attention_scores=True,
                                                      training=False)
    return keras.ops.convert_to_numpy(scores)


def _reference_rollout(layers, residual=0.5):
    """The product, last layer first, of each layer's head-mean mixed with the identity."""
    n, _, t, _ = layers[0].shape
    out = np.zeros((n, t, t))
    for i in range(n):
        total = np.eye(t)
        for a in layers:
            mixed = residual * np.eye(t) + (1 - residual) * a[i].astype(np.float64).mean(axis=0)
            mixed = mixed / mixed.sum(axis=1, keepdims=True)
            total = mixed @ total
        out[i] = total
    return out


def test_scores_are_what_each_attention_layer_computes_and_rollout_follows_the_paper():
    model = models.vit(SHAPE)
    x, _ = models.data(3, SHAPE)
    found = attention.scores(model, x, ["block0_attn", "block1_attn"])
    want = [_reference_scores(model, x, b) for b in (0, 1)]
    for got, ref in zip(found.values(), want):
        assert got.shape == (3, 2, 25, 25)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    grid, why = attention.mappable(want[0].shape, 3, SHAPE)
    assert grid == (4, 6, 1) and why is None
    # Each head's map is its class token's row over the 24 patch tokens, on the 4 x 6 grid.
    heads = attention.head_maps(found["block1_attn"], grid)
    np.testing.assert_allclose(heads, want[1][:, :, 0, 1:].reshape(3, 2, 4, 6), atol=1e-5)
    rolled = attention.rollout(list(found.values()), grid)
    ref = _reference_rollout(want)[:, 0, 1:].reshape(3, 4, 6)
    np.testing.assert_allclose(rolled, ref, rtol=0, atol=1e-5)


def test_without_a_class_token_the_maps_are_the_mean_attention_each_token_gets():
    model = models.vit(SHAPE, class_token=False)
    x, _ = models.data(2, SHAPE)
    found = attention.scores(model, x, ["block0_attn"])["block0_attn"]
    grid, _ = attention.mappable(found.shape, 2, SHAPE)
    assert grid == (4, 6, 0)
    want = _reference_scores(model, x, 0).mean(axis=2).reshape(2, 2, 4, 6)
    np.testing.assert_allclose(attention.head_maps(found, grid), want, atol=1e-5)


def test_the_tab_shows_each_heads_map_and_the_rollout_of_a_vit(tmp_path):
    model = models.compile(models.vit(SHAPE))
    x, y = models.data(8, SHAPE)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[tbviz.TensorBoardViz(
        tmp_path, probe_images=x[:4], probe_labels=y[:4], strict=True)])
    run = tmp_path / "train"
    for tag, heads in (("tbviz/attention/block0_attn", 2), ("tbviz/attention/block1_attn", 2),
                       ("tbviz/attention/rollout", 1)):
        content, steps = eventfiles.panels(run, tag)
        step, header, tiles = steps[-1]
        # One tile per feature-map probe image: the heads side by side, 2-pixel gaps.
        assert step == 2 and content["kind"] == "attribution"
        assert all(t.shape == (32, heads * 48 + (heads - 1) * 2, 3) for t in tiles)
        assert [t["heads"] for t in header["tiles"]] == [heads] * len(tiles)
    assert "tbviz/errors" not in eventfiles.tags(run)


def test_token_grid_says_the_grid_where_the_token_count_cannot(tmp_path):
    model = models.compile(models.vit((32, 32, 3), patch=(8, 4)))  # 4 x 8 patches + class
    x, y = models.data(8, (32, 32, 3))
    found = attention.scores(model, x[:2], ["block0_attn"])["block0_attn"]
    assert attention.mappable(found.shape, 2, (32, 32, 3))[0] is None  # 33: no square + 1
    cb = AttentionCallback(tmp_path, x[:2], token_grid=(4, 8), class_token=True, strict=True)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[cb])
    assert cb.mapped == ["block0_attn", "block1_attn"]
    step, _, tiles = eventfiles.panels(tmp_path / "train", "tbviz/attention/rollout")[1][-1]
    assert step == 2 and tiles[0].shape == (32, 32, 3)


def test_windowed_attention_is_left_out_and_says_why_when_asked_for(tmp_path):
    model = rm.swin_windows()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = rm.data(8)
    cb = AttentionCallback(tmp_path, x[:2])
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[cb])
    assert cb.mapped == []
    (_, text), = eventfiles.texts(tmp_path / "train", "tbviz/errors")[-1:]
    assert "it attends within windows (4 rows of scores per image)" in text
    assert "attention maps are off" in text
