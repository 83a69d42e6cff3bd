"""The tbviz tab draws what ``AttributionCallback(faithfulness=...)`` writes: each method's
metrics beside its heatmaps, and the deletion and insertion curves, in headless Chromium on a
real ``tensorboard --logdir`` of a real (tiny) training run."""

from pathlib import Path

import plugin_logs
import pytest
import tbserver
from test_plugin_browser import shoot, tab_on, texts

pytestmark = pytest.mark.browser
METHODS = ("saliency", "grad_cam")
CHEAP = {"deletion": {}, "insertion": {}, "mu_fidelity": {"samples": 8}, "sparseness": {}}


def fmt(v):
    """The tab's number format (lib/dom.js fmt): 4 significant digits, "–" for none."""
    return "–" if v is None else f"{float(f'{v:.4g}'):g}"


def write_run(logdir):
    import keras
    import numpy as np

    from tbviz.callbacks.attribution import AttributionCallback

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((12, 12, 3)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(6, 3, activation="relu", name="conv1"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 255, (6, 12, 12, 3)).astype("float32"), np.arange(6) % 3
    cb = AttributionCallback(logdir, x[:2], methods=METHODS, faithfulness=CHEAP, strict=True)
    model.fit(x, y, epochs=1, batch_size=6, verbose=0, callbacks=[cb])
    return str(Path(logdir) / "train")


@pytest.fixture(scope="module")
def tab(tmp_path_factory):
    with tbserver.browser() as browser:
        logdir = tmp_path_factory.mktemp("faith") / "logs"
        run = write_run(logdir / "faith")
        with tab_on(browser, logdir, "faith/train", "tbviz/faithfulness/curves") as (page, frame):
            yield page, frame, run


def test_each_methods_metrics_are_shown_beside_its_heatmaps(tab, tmp_path):
    page, frame, run = tab
    frame.get_by_role("tab", name="Attribution").click()
    frame.wait_for_function("n => document.querySelectorAll('table.faith').length === n",
                            arg=len(METHODS))  # one per method's panel
    for method in METHODS:
        tiles = plugin_logs.header(run, f"tbviz/attribution/{method}")["tiles"]
        section = frame.locator("section.panel", has_text=f"attribution/{method}")
        heads = texts(section, "table.faith thead th")[1:]
        assert heads == ["deletion ↓", "insertion ↑", "mu_fidelity ↑", "sparseness ↑"]
        rows = [r.split("\t") for r in texts(section, "table.faith tbody tr")]
        for tile, row in zip(tiles, rows[1:]):  # each image's values, as logged
            assert row[1:] == [fmt(tile["faithfulness"][m]) for m in CHEAP], (row, tile)
        assert rows[0][0] == "mean" and len(rows) == len(tiles) + 1
        # beside the heatmaps: the table starts right of the grid, not under it
        grid, table = (section.locator(s).bounding_box() for s in (".grid.wide", "table.faith"))
        assert table["x"] >= grid["x"] + grid["width"] and table["y"] < grid["y"] + grid["height"]
    shoot(page, tmp_path, "dashboard-faithfulness-table.png")


def test_the_deletion_and_insertion_curves_are_drawn_for_every_method(tab, tmp_path):
    page, frame, run = tab
    frame.get_by_role("tab", name="Faithfulness").click()
    frame.wait_for_function("() => document.querySelectorAll('figure.curve').length === 2")
    curves = plugin_logs.header(run, "tbviz/faithfulness/curves")["groups"]
    assert texts(frame, "figure.curve > figcaption") == [
        "deletion (lower area is more faithful)", "insertion (higher area is more faithful)"]
    for fig, metric in zip(frame.query_selector_all("figure.curve"), ("deletion", "insertion")):
        mine = [c for c in curves if c["metric"] == metric]
        lines = fig.query_selector_all("polyline")
        assert len(lines) == len(mine) == len(METHODS)
        for line, c in zip(lines, mine):  # a vertex per logged point
            assert len(line.get_attribute("points").split()) == len(c["fractions"])
        legend = [li.inner_text() for li in fig.query_selector_all(".legend li")]
        assert legend == [f"{c['method']} · area {fmt(c['auc'])}" for c in mine]
    path = shoot(page, tmp_path, "dashboard-faithfulness-curves.png")
    assert path.stat().st_size > 10_000
