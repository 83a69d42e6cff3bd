"""Vision transformers: patch tokens shown and weighed on their grid.

The ViT here is built from Keras layers (tests/models.py: Conv2D patch embedding,
class token, position embedding, MultiHeadAttention, LayerNorm, GELU MLP).
References are computed independently, eagerly with ``tf.GradientTape`` on a
Keras sub-model that outputs the token layer: the same float32 math along another
code path, so they agree to float32 rounding (relative 1e-4 of the largest value
leaves room for the reduction orders of two traces), not exactly.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tbviz
from tbviz import attribution, feature_maps, tokens
from tbviz.callbacks.deconvnet import DeconvnetCallback
from tests import eventfiles, models

SHAPE = (32, 48, 3)  # 8-pixel patches: a 4 x 6 grid, 24 patch tokens + the class token


def _close(got, want):
    scale = float(np.abs(want).max()) or 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)


def _reference_tokens_and_grads(model, x, layer, target):
    """Token layer output and the gradient of the target logit w.r.t. it, eagerly."""
    sub = keras.Model(model.input, [model.get_layer(layer).output, model.output])
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        t, logits = sub(x, training=False)
        score = tf.reduce_sum(logits[:, target])
    return t.numpy(), tape.gradient(score, t).numpy()


@pytest.mark.parametrize("shape,image,grid", [
    ((1, 25, 16), (32, 48, 3), (4, 6, 1)),   # 25 is no grid at 2:3; 24 + 1 is 4x6 + class
    ((1, 24, 16), (32, 48, 3), (4, 6, 0)),   # 24: 4x6, no class token
    ((1, 197, 768), (224, 224, 3), (14, 14, 1)),   # ViT-B/16
    ((1, 196, 768), (224, 224, 3), (14, 14, 0)),   # a mean-pooled ViT / DeiT without class
    ((1, 8, 8, 4), (32, 32, 3), (8, 8, 0)),  # a conv feature map is a grid as it is
    ((1, 10, 4), (32, 32, 3), (3, 3, 1)),    # 10 is no square; 9 + 1 is 3x3 + class
    ((1, 7, 4), (32, 32, 3), None),          # 7 or 6 tokens: no square grid
    ((1, 64), (32, 32, 3), None),            # flat
])
def test_the_token_grid_is_found_from_the_token_count_and_the_image_shape(shape, image, grid):
    assert tokens.token_grid(shape, image) == grid


def test_an_explicit_grid_is_used_and_a_wrong_one_is_refused():
    assert tokens.token_grid((1, 33, 8), (32, 32, 3), grid=(4, 8), class_token=True) == (4, 8, 1)
    with pytest.raises(ValueError, match=r"token_grid=\(4, 4\).*33 tokens"):
        tokens.token_grid((1, 33, 8), (32, 32, 3), grid=(4, 4))


@pytest.mark.numerics
def test_grad_cam_weighs_the_patch_tokens_of_a_vit_on_their_grid():
    model = models.vit(SHAPE)
    x, _ = models.data(3, SHAPE)
    assert attribution.grad_cam_layer(model, SHAPE) == ("final_norm", (4, 6, 1))
    got = attribution.grad_cam(model, x, target=1, upsample=False)
    t, g = _reference_tokens_and_grads(model, x, "final_norm", 1)
    a, g = t[:, 1:].reshape(3, 4, 6, -1), g[:, 1:].reshape(3, 4, 6, -1)
    want = np.maximum(0, (a * g.mean(axis=(1, 2), keepdims=True)).sum(-1))
    assert got.shape == (3, 4, 6)
    _close(got, want)
    assert attribution.grad_cam(model, x, target=1).shape == (3, 32, 48)


@pytest.mark.numerics
def test_a_grid_that_cannot_be_found_is_said_and_can_be_given():
    model = models.vit((32, 32, 3), patch=(8, 4))  # 4 x 8 patches on a square image
    x, _ = models.data(2, (32, 32, 3))
    with pytest.raises(ValueError, match=r"'block1_out' has output shape.*token_grid=\(h, w\)"):
        attribution.grad_cam(model, x, target=0, layer="block1_out")
    got = attribution.grad_cam(model, x, target=0, layer="block1_out", upsample=False,
                               token_grid=(4, 8), class_token=True)
    t, g = _reference_tokens_and_grads(model, x, "block1_out", 0)
    a, g = t[:, 1:].reshape(2, 4, 8, -1), g[:, 1:].reshape(2, 4, 8, -1)
    _close(got, np.maximum(0, (a * g.mean(axis=(1, 2), keepdims=True)).sum(-1)))


@pytest.mark.numerics
def test_saliency_smoothgrad_and_occlusion_run_through_attention():
    model = models.vit(SHAPE)
    x, _ = models.data(2, SHAPE)
    got = attribution.saliency(model, x, target=2)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = tf.reduce_sum(model(xt, training=False)[:, 2])
    _close(got, tape.gradient(score, xt).numpy())
    smooth = attribution.smoothgrad(model, x, target=2, samples=4)
    assert smooth.shape == x.shape and np.all(np.isfinite(smooth)) and np.any(smooth != got)
    occ = attribution.occlusion(model, x, target=2, patch=8)
    assert occ.shape == (2, 32, 48) and np.all(np.isfinite(occ)) and np.any(occ != 0)


@pytest.mark.numerics
def test_feature_maps_of_a_token_layer_are_drawn_on_the_patch_grid():
    model = models.vit(SHAPE)
    x, _ = models.data(2, SHAPE)
    maps = feature_maps.grid_outputs(model, x, "block0_out", (4, 6, 1))
    t, _ = _reference_tokens_and_grads(model, x, "block0_out", 0)
    _close(maps, t[:, 1:].reshape(2, 4, 6, -1))
    grids = feature_maps.feature_maps(model, x, "block0_out", pad=1)
    assert grids.shape == (2, 4 * (4 + 1) - 1, 4 * (6 + 1) - 1, 3)  # 16 channels: 4 x 4 tiles


def test_tensorboard_viz_logs_every_part_of_a_vit(tmp_path):
    model = models.compile(models.vit(SHAPE))
    x, y = models.data(16, SHAPE)
    methods = ["saliency", "smoothgrad", "occlusion", "grad_cam"]
    viz = tbviz.TensorBoardViz(tmp_path, probe_images=x[:2], probe_labels=y[:2], top_k=4,
                               attribution=methods, strict=True)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[viz])
    run = tmp_path / "train"
    for method in methods:
        (step, images), = eventfiles.images(run, f"attribution/{method}")[-1:]
        assert step == 4 and len(images) == 2 and images[0].shape == (32, 48, 3)
    # Feature maps: the patch embedding (a conv) and the last block's output on its 4 x 6 grid.
    maps = eventfiles.images(run, "feature_maps/block1_out")[-1][1]
    assert len(maps) == 2 and maps[0].shape[:2] == (4 * (4 * 6 + 1) - 1, 4 * (6 * 6 + 1) - 1)
    assert eventfiles.images(run, "feature_maps/patch_embed")
    assert 4 in eventfiles.histogram_steps(run, "activations/block1_mlp1")  # GELU
    attention = [t for t in eventfiles.tags(run) if t.startswith("gradients/block1_attn/")]
    assert len(attention) == 8  # query, key, value, output projection: kernel and bias
    assert all(4 in eventfiles.histogram_steps(run, t) for t in attention)
    # The deconvnet projects the token layers that end each half-block (the Add layers),
    # with the plain gradient: 4 units, a projection and an input patch each.
    for layer in ("block0_add", "block0_out", "block1_add", "block1_out"):
        content, steps = eventfiles.panels(run, f"tbviz/deconvnet/{layer}/topk")
        step, _, tiles = steps[-1]
        assert step == 4 and len(tiles) == 2 * 4 and content["rule"] == "gradient"
    assert eventfiles.panels(run, "tbviz/attention/rollout")[1][-1][0] == 4


def test_the_deconvnet_says_what_it_needs_when_given_tokens_that_form_no_grid(tmp_path):
    model = models.compile(models.vit((32, 32, 3), patch=(8, 4)))  # 4 x 8 patches, square image
    x, y = models.data(8, (32, 32, 3))
    cb = DeconvnetCallback(tmp_path, x[:2], layers=["block0_out"])
    with pytest.raises(ValueError, match=r"'block0_out' outputs 33 tokens of 16 channels, which "
                                         r"form no grid.*token_grid=\(h, w\).*patch_embed"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
    cb = DeconvnetCallback(tmp_path, x[:2], layers=["block0_out"], top_k=2, token_grid=(4, 8),
                           class_token=True, strict=True)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
    step, header, tiles = eventfiles.panels(tmp_path / "train",
                                            "tbviz/deconvnet/block0_out/topk")[1][-1]
    patches = [t for t in header["tiles"] if t["role"] == "patch"]
    # Each patch is its token's 8 x 4 cell of the image.
    assert [p["crop"] for p in patches] == [
        [8 * p["row"], 8 * p["row"] + 8, 4 * p["col"], 4 * p["col"] + 4] for p in patches]
