"""The tbviz tab of a vision transformer's run, as a user opens it: a real (tiny) ViT trained
with ``TensorBoardViz`` at its defaults (tests/models.py: patch embedding, class token,
position embedding, MultiHeadAttention blocks), a real ``tensorboard --logdir``, headless
Chromium. The token layers' Top-k says it is the plain gradient, the attention panels say
which head is where, and every tile decodes."""

from pathlib import Path

import plugin_logs
import pytest
import tbserver
from test_plugin_browser import all_decoded, shoot, tab_on, texts

pytestmark = pytest.mark.browser
SHAPE = (32, 48, 3)  # 8-pixel patches: a 4 x 6 grid and a class token
HEADS = 2


def write_run(logdir):
    import keras
    import models
    import numpy as np

    import tbviz

    keras.utils.set_random_seed(0)
    model = models.compile(models.vit(SHAPE, heads=HEADS))
    x, y = models.data(16, SHAPE)
    viz = tbviz.TensorBoardViz(logdir, probe_images=x[:3], probe_labels=y[:3], strict=True)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[viz])
    assert np.isfinite(model.evaluate(x, y, verbose=0)[0])
    return str(Path(logdir) / "train")


@pytest.fixture(scope="module")
def tab(tmp_path_factory):
    with tbserver.browser() as browser:
        logdir = tmp_path_factory.mktemp("vit") / "logs"
        run = write_run(logdir / "vit")
        with tab_on(browser, logdir, "vit/train", "tbviz/attention/rollout") as (page, frame):
            yield page, frame, run


def test_the_token_layers_top_k_is_labelled_gradient_with_the_tokens_patches(tab, tmp_path):
    page, frame, run = tab
    frame.get_by_role("tab", name="Top-k").click()
    option = frame.get_by_role("option", name="block1_out")
    option.click()
    frame.wait_for_function("() => document.querySelector('.panel h3')?.textContent"
                            ".startsWith('deconvnet/block1_out/topk')")
    heading = frame.locator(".panel h3").first.inner_text()
    assert "gradient" in heading
    note = frame.locator(".panel p.note").first.inner_text()
    assert "token layer" in note and "plain gradient" in note
    tiles = plugin_logs.header(run, "tbviz/deconvnet/block1_out/topk")["tiles"]
    assert all_decoded(frame, len(tiles)) >= len(tiles)
    shoot(page, tmp_path, "dashboard-vit-topk.png")


def test_the_attention_panels_say_which_head_is_where(tab, tmp_path):
    page, frame, _ = tab
    frame.get_by_role("tab", name="Attribution").click()
    section = frame.locator("section.panel", has_text="attention/block1_attn")
    section.locator("figcaption").first.wait_for()
    captions = texts(section, "figcaption")
    assert len(captions) == 3  # one tile per probe image, its heads side by side
    assert all(f"heads 0–{HEADS - 1}, left to right" in c for c in captions), captions
    rollout = frame.locator("section.panel", has_text="attention/rollout")
    assert not any("heads" in c for c in texts(rollout, "figcaption"))  # one map per image
    assert all_decoded(frame, 3 * 3) >= 3 * 3  # both layers' and the rollout's tiles, at least
    shoot(page, tmp_path, "dashboard-vit-attention.png")
